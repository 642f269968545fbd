"""FLEDGE_HOME's state files: written whole or not at all, secrets created private."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from fledge.core.state import StatePaths, create_once, read_json, write_atomic, write_json


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state" / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert os.listdir(path.parent) == ["x.json"]
    assert read_json(tmp_path / "missing.json") is None


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json(path, {"kept": True})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "{}")
    monkeypatch.undo()
    assert read_json(path) == {"kept": True} and os.listdir(tmp_path) == ["x.json"]


def test_a_secret_is_private_from_its_first_byte_and_two_creators_agree(tmp_path):
    path = StatePaths.under(tmp_path).admin_token
    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(create_once(path, f"token-{n}"))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and path.read_text() == results[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [path.name]
