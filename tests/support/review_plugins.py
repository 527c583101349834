"""Plugins for the review-3 tests (tests/unit/test_review3_exchange.py, tests/e2e/test_review3_phases.py),
importable as `support.review_plugins` (tests/ on PYTHONPATH).

In-process ones (sans-socket tests) record into class-level lists; the e2e ones append JSON lines to
a file named in their config, as support.phase_plugins does."""

from __future__ import annotations

import asyncio
import json

from fastgw.plugin import Response

ENTRIES: list = []          # LogEntry objects MemLog saw (sans-socket tests clear it)
SEEN: list = []             # what the view-probing plugins read


def _append(path: str, record) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class MemLog:
    """on_log: keeps every LogEntry in ENTRIES."""

    def __init__(self, config):
        pass

    def on_log(self, entry) -> None:
        ENTRIES.append(entry)


class AsyncGo:
    """async on_request: the sans-socket tests finish its task by hand (FakeTask.finish)."""

    def __init__(self, config):
        pass

    async def on_request(self, req):
        return None


class AsyncHoldResponse:
    """async on_response: the sans-socket tests finish its task by hand."""

    def __init__(self, config):
        pass

    async def on_response(self, resp):
        return None


class ResponseHeaderProbe:
    """sync on_response: records what the response view reads while the phase runs."""

    def __init__(self, config):
        pass

    def on_response(self, resp):
        SEEN.append(("status", resp.status))
        SEEN.append(("x-up", resp.headers.get("X-Up")))
        return None


class SetRequestHeader:
    """sync on_request: sets X-Plugin and removes X-Remove-Me."""

    def __init__(self, config):
        pass

    def on_request(self, req):
        req.headers.set("X-Plugin", "p1")
        req.headers.remove("X-Remove-Me")
        SEEN.append(("get-after-set", req.headers.get("x-plugin")))
        return None


class AnswerHead:
    """sync on_request: answers 200 with a body (e.g. to a HEAD request)."""

    def __init__(self, config):
        pass

    def on_request(self, req):
        return Response(200, {"Content-Type": "text/plain"}, "answered by a plugin")


class FileLog:
    """on_log as JSON lines in config['path'] (e2e)."""

    def __init__(self, config):
        self.path = config["path"]

    def on_log(self, e) -> None:
        _append(self.path, {"request_id": e.request_id, "status": e.status, "outcome": e.outcome,
                            "flags": e.flags, "bytes_sent": e.bytes_sent, "host": e.host,
                            "path": e.path, "method": e.method})


class SlowAsyncResponse:
    """async on_response that sleeps config['delay'] seconds (e2e)."""

    def __init__(self, config):
        self.delay = float(config.get("delay", 0.3))

    async def on_response(self, resp):
        await asyncio.sleep(self.delay)
        return None
