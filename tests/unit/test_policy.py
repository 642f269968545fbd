import pytest

from fledge.core.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy


def write(tmp_path, text):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def default_text():
    return DEFAULT_POLICY_PATH.read_text()


def test_the_shipped_default_policy_loads():
    policy = load_policy()
    assert policy.canary.steps[-1] == 100
    assert policy.quality.tasks


def test_the_hash_ignores_comments_and_key_order_but_not_values(tmp_path):
    base = load_policy().content_hash
    commented = write(tmp_path, "# a note\n" + default_text())
    assert load_policy(commented).content_hash == base
    changed = write(tmp_path, default_text().replace("margin: 0.05 ", "margin: 0.06 "))
    assert load_policy(changed).content_hash != base


def test_an_unknown_scheme_names_the_field_and_the_allowed_values(tmp_path):
    path = write(tmp_path, default_text().replace("scheme: none", "scheme: int3"))
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    message = str(error.value)
    assert "quantization.scheme" in message
    assert "'w8a8-int8'" in message and "'none'" in message and "int3" in message


def test_a_misspelt_key_is_an_error_not_a_silent_default(tmp_path):
    path = write(tmp_path, default_text().replace("tolerated_slowdown:", "tolerated_slowdwn:"))
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    assert "performance.tolerated_slowdwn: unknown field" in str(error.value)
    assert "performance.tolerated_slowdown: required field is missing" in str(error.value)


def test_canary_steps_must_rise_to_100(tmp_path):
    path = write(tmp_path, default_text().replace("steps: [25, 50, 100]", "steps: [50, 25]"))
    with pytest.raises(PolicyError, match="canary.steps"):
        load_policy(path)


def test_the_canary_early_looks_must_be_stricter_than_the_last(tmp_path):
    path = write(tmp_path, default_text().replace("interim_p_value: 0.001", "interim_p_value: 0.1"))
    with pytest.raises(PolicyError, match="canary.interim_p_value.*must not exceed"):
        load_policy(path)


def test_missing_and_malformed_files_are_explained(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(write(tmp_path, "quality: [unclosed"))
    with pytest.raises(PolicyError, match="must be a YAML mapping"):
        load_policy(write(tmp_path, "- a list"))


def test_the_demo_policy_is_the_default_but_for_the_performance_tolerances_a_shorter_canary_and_a_smaller_shadow_step():
    from fledge.core.policy import DEFAULT_POLICY_PATH

    default = load_policy().model_dump()
    demo = load_policy(DEFAULT_POLICY_PATH.with_name("demo.yaml")).model_dump()
    assert demo["performance"].pop("tolerated_slowdown") > default["performance"].pop("tolerated_slowdown")
    assert demo["serving"]["lora"].pop("max_latency_ratio") > default["serving"]["lora"].pop("max_latency_ratio")
    assert (demo["canary"].pop("steps"), demo["canary"].pop("bake_seconds")) == ([50, 100], 15)
    default["canary"].pop("steps"), default["canary"].pop("bake_seconds")
    assert demo["canary"].pop("progress_deadline_seconds") < default["canary"].pop("progress_deadline_seconds")
    assert demo["canary"].pop("max_inconclusive_windows") < default["canary"].pop("max_inconclusive_windows")
    # The shadow step sized for the synthetic users' ~4 requests a second: all mirrored, fewer pairs, sooner over.
    for key in ("mirror_share", "sampled_share", "probe_share"):
        assert demo["shadow"].pop(key) > default["shadow"].pop(key)
    for key in ("min_pairs", "min_harmful_pairs", "deadline_seconds", "review_timeout_seconds", "trace_pairs"):
        assert demo["shadow"].pop(key) < default["shadow"].pop(key)
    assert demo["shadow"].pop("store_raw_text") and not default["shadow"].pop("store_raw_text")  # the zoo's text is synthetic
    assert demo["watch"].pop("window_seconds") == 15 < default["watch"].pop("window_seconds")
    # Still enough requests per window at the synthetic users' ~4 a second for the analysis.
    assert demo["canary"]["min_samples"] == default["canary"]["min_samples"] == 20
    assert demo == default


def test_an_adapter_release_is_judged_by_the_loras_one_latency_limit():
    policy = load_policy()
    judged = policy.for_adapter()
    ratio = policy.serving.lora.max_latency_ratio
    assert judged.performance.tolerated_slowdown == pytest.approx(ratio - 1)
    assert judged.canary.max_latency_ratio == judged.watch.max_ratio_vs_previous == ratio
    unchanged = {"performance": {"tolerated_slowdown"}, "canary": {"max_latency_ratio"}, "watch": {"max_ratio_vs_previous"}}
    assert judged.model_dump(exclude=unchanged) == policy.model_dump(exclude=unchanged)


def test_blue_green_needs_the_shadow_step(tmp_path):
    text = default_text().replace("  strategy: canary ", "  strategy: blue-green ")
    load_policy(write(tmp_path, text))  # the shipped default runs the shadow step
    no_shadow = text.replace("shadow:                        # live", "shadow:  # live").replace(
        "  enabled: true                # a shadow step", "  enabled: false               # a shadow step")
    with pytest.raises(PolicyError, match="blue-green switches all traffic at once: it needs the shadow step"):
        load_policy(write(tmp_path, no_shadow))
