"""Reading a running gateway's logs: JSON access lines on its stdout (or in a file) and JSON event lines
on its stderr. Lines of one worker come out in order, so once a later marker line is out, every line
before it is too: `marker` makes the "and no other line" half of "exactly one line" checkable."""

from __future__ import annotations

import itertools
import json
import os

from .client import RawConn, wait_until

# Short batches, so that a test waits for a line about as long as the gateway takes to write it.
FAST_ACCESS_LOG = {"flush_interval": "50ms"}

_markers = itertools.count(1)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def access_lines(gw) -> list[dict]:
    return [r for r in json_lines(gw.stdout) if "status" in r and "request_id" in r]


def lines_for(gw, request_id: str) -> list[dict]:
    return [r for r in access_lines(gw) if r["request_id"] == request_id]


def marker(gw, path: str = "/") -> None:
    """A request whose line, once out, shows every earlier line of the worker is out too."""
    rid = f"marker-{os.getpid()}-{next(_markers)}"
    with RawConn(gw.port) as c:
        c.request("GET", path, [("X-Request-Id", rid), ("Connection", "close")])
    wait_until(lambda: lines_for(gw, rid), what=f"the marker line {rid}")


def only_line(gw, request_id: str, marker_path: str = "/") -> dict:
    """The one access line of `request_id` (and a check that there is no second)."""
    wait_until(lambda: lines_for(gw, request_id), what=f"the access line of {request_id}")
    marker(gw, marker_path)
    found = lines_for(gw, request_id)
    assert len(found) == 1, found
    return found[0]


def events(gw, since: int = 0) -> list[dict]:
    return [r for r in json_lines(gw.stderr_since(since)) if "event" in r and "level" in r]


def wait_event(gw, event: str, since: int = 0, **fields) -> dict:
    def found():
        for r in events(gw, since):
            if r["event"] == event and all(r.get(k) == v for k, v in fields.items()):
                return r
        return None
    return wait_until(found, what=f"event {event} {fields}")
