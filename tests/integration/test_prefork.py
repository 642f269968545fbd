"""The warm launcher's contract that needs no vLLM: where its socket may live, and what a
caller is told when it cannot start. Servers forked through it are tested in tests/vllm."""

import os
import stat
from pathlib import Path

import pytest

from serving.config import ServerConfig
from serving.errors import LaunchError
from serving.launcher import LocalLauncher
from serving.prefork import PreforkError, socket_path


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    yield tmp_path
    tempfile.tempdir = None


def test_the_socket_sits_in_a_directory_only_this_user_can_enter(own_tmpdir):
    path = socket_path("/some/venv/bin/python")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == os.getuid()
    assert len(str(path).encode()) < 108  # AF_UNIX's limit
    assert socket_path("/other/venv/bin/python") != path  # one launcher per interpreter


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand the directory to another user")
def test_a_socket_directory_of_another_user_is_refused(own_tmpdir):
    directory = own_tmpdir / f"fledge-prefork-{os.getuid()}"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(PreforkError, match="belongs to another user"):
        socket_path("/some/venv/bin/python")


def test_a_warm_launcher_that_cannot_start_is_a_launch_error_with_the_way_out(tmp_path, own_tmpdir):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    launcher = LocalLauncher(tmp_path / "logs", python="/bin/false", prefork=True)
    with pytest.raises(LaunchError) as error:
        launcher.start(ServerConfig(model_dir=model_dir, served_model_name="x/1", startup_timeout_s=20))
    message = str(error.value)
    assert "warm launcher exited" in message and "FLEDGE_PREFORK=0" in message
    assert Path(message.split("see ")[1].split(".log")[0] + ".log").is_file()
