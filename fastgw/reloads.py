"""The record of recent config loads and reloads that the Admin API shows at /reloads."""

from __future__ import annotations

import datetime
import time
from collections import deque

from .config import ConfigIssue

__all__ = ["ReloadLog"]

KEPT = 50


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReloadLog:
    """The last KEPT attempts, newest last, and counts over the process's life."""

    def __init__(self) -> None:
        self._entries: deque[dict] = deque(maxlen=KEPT)
        self.ok = 0
        self.failed = 0
        self.last_time: float | None = None
        self.last_ok: bool | None = None
        self.last_ok_time: float | None = None   # of the last load that succeeded

    def record(self, *, source: str, ok: bool, file: str | None, generation: int | None = None,
               errors: list[ConfigIssue] = (), notes: list[str] = (), summary: dict | None = None) -> dict:
        """source: `file` (the first load), `SIGHUP`, `watch` (the files changed) or `admin`."""
        now = time.time()
        entry = {
            "time": _rfc3339(now),
            "ok": ok,
            "source": source,
            "file": file,
            "generation": generation,
            "errors": [{"path": e.path, "line": e.line, "message": e.message} for e in errors],
            "notes": list(notes),
            "summary": summary or {},
        }
        self._entries.append(entry)
        if ok:
            self.ok += 1
            self.last_ok_time = now
        else:
            self.failed += 1
        self.last_time, self.last_ok = now, ok
        return entry

    def entries(self) -> list[dict]:
        return list(self._entries)
