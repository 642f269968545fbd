"""Runs last of the stack tests (modules run in name order): `down` on the session's stack."""

from __future__ import annotations

import pytest
from test_stack import COMPONENTS

pytestmark = pytest.mark.stack


def test_down_stops_everything_it_started_and_nothing_is_left(stack):
    from fledge.stack import down, leftover_pids, stack_processes, status

    pids = list(stack.pids().values())
    assert len(stack_processes(stack.home)) > len(pids)  # backends, uvicorn workers: found as well
    stopped = down(stack.home, log=lambda _: None)
    # The plane too when the release tests had the stack start one (`up --serve`), and its vLLMs.
    served = stack.layout.plane_config.is_file()
    assert set(stopped) == COMPONENTS | ({"plane"} if served else set())
    assert leftover_pids(stack.home, pids=pids) == []
    assert not any(row.running for row in status(stack.home, log=None))
    assert not stack.layout.env_file.exists()  # a shell can no longer point at a stack that is gone
