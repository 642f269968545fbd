"""The gateway's audit log: one JSON line per admin change, appended and fsynced before the
change is acknowledged: when, what, the route table before and after, and which token made it
(an id derived from the token, never the token). Created 0600 from the start."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def token_id(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class AuditLog:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._seq = max((entry["seq"] for entry in self.entries()), default=0)

    def append(self, action: str, before: Any, after: Any, token: str, **extra: Any) -> dict:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "at": time.time(), "action": action, "token_id": token_id(token),
                     "before": before, "after": after, **extra}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self, after: int = 0) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write: the entries before it stand
                continue
            if entry.get("seq", 0) > after:
                out.append(entry)
        return out
