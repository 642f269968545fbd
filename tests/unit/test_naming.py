"""Instance names shared by the fleet and the gateway."""

from serving.naming import baseline_key, instance_key, stale_staging_copies


def test_the_champions_second_instance_is_named_after_it():
    assert instance_key("m/3") == "m/3" and instance_key("m/3", baseline=True) == baseline_key("m/3") == "m/3+baseline"


def test_staging_copies_of_former_champions_are_stale_and_nothing_else_is():
    running = ["m/1", "m/1+baseline", "m/2+baseline", "m/3", "other/1+baseline", "m/10+baseline"]
    assert stale_staging_copies(running, "m", "m/1") == ["m/10+baseline", "m/2+baseline"]
    assert stale_staging_copies(running, "m", "m/2") == ["m/1+baseline", "m/10+baseline"]
    assert stale_staging_copies(["m/1", "m/2"], "m", "m/1") == []  # main instances are retired by the flows
