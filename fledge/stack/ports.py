"""Ports on 127.0.0.1: chosen free at the first `up`, then kept in the stack's record so the
URLs in the env file (and in every worker's environment) stay the same from one `up` to the
next. A kept port taken by some other program meanwhile is replaced by a fresh one."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port whose last connections are in TIME_WAIT (the stack was
        # just stopped) is free for them, and must be for this probe, or every restart moves.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(avoid: set[int] = frozenset()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


def choose(names: list[str], kept: dict[str, int], in_use_by_us: set[str]) -> dict[str, int]:
    """A port per name: the kept one when ours holds it (`in_use_by_us`) or it is free, else a new one."""
    chosen: dict[str, int] = {}
    for name in names:
        port = kept.get(name)
        if port is None or (name not in in_use_by_us and not is_free(port)) or port in chosen.values():
            port = free_port(set(chosen.values()) | set(kept.values()))
        chosen[name] = port
    return chosen
