"""Loaded into the serving plane's process by benchmarks/fault_matrix.py (through PYTHONPATH)
to step its wall clock: `time.time()` and `time.time_ns()` return the system's wall clock plus
the offset in seconds written in $FLEDGE_FAULT_WALL_OFFSET_FILE (re-read at most twice a
second), while `time.monotonic()` goes on untouched, as under an NTP step. libfaketime would
do this in C, but with its monotonic clock left alone (FAKETIME_DONT_FAKE_MONOTONIC) Python's
time.sleep fails with EINVAL (libfaketime 0.9.10, measured here). Not part of Fledge."""

import os
import time

_PATH = os.environ.get("FLEDGE_FAULT_WALL_OFFSET_FILE")

if _PATH:
    _real_time, _real_time_ns, _cache = time.time, time.time_ns, {"read": -1.0, "offset": 0.0}

    def _offset() -> float:
        now = time.monotonic()
        if now - _cache["read"] > 0.5:
            try:
                _cache["offset"] = float(open(_PATH).read().strip() or 0)
            except (OSError, ValueError):
                pass
            _cache["read"] = now
        return _cache["offset"]

    time.time = lambda: _real_time() + _offset()
    time.time_ns = lambda: _real_time_ns() + int(_offset() * 1e9)
