"""The stack's small files: the env file reads back as a shell would source it, quoting
included; the plane's remembered models (`up --serve`)."""

from fledge.stack import envfile


def test_the_env_file_reads_back_what_was_written(tmp_path):
    variables = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "FLEDGE_HOME": "/tmp/a home/with 'quotes'",
                 "EMPTY": ""}
    path = tmp_path / "env"
    envfile.write(path, variables)
    assert envfile.read(path) == variables


def test_the_plane_remembers_its_models_and_refuses_a_missing_policy(tmp_path):
    import pytest

    from fledge.stack.components.plane import PlaneConfig, configure
    from fledge.stack.errors import StackError

    path = tmp_path / "plane.json"
    assert PlaneConfig.load(path) is None  # never configured: no plane is wanted
    with pytest.raises(StackError, match="does not exist"):
        configure(path, ["tiny-llama"], tmp_path / "missing.yaml")
    assert not path.exists()
    configure(path, ["tiny-llama", "support-bot"], None)
    assert PlaneConfig.load(path) == PlaneConfig(("tiny-llama", "support-bot"))
