"""Plugins the phase tests load (on PYTHONPATH as `support.phase_plugins`).

In a real gateway (tests/e2e/test_phases.py) they report what they see by appending JSON lines to
files named in their config, so a test reads what happened inside the worker without any hook into
it; sans-socket (tests/unit/test_phase_machine.py) the in-process ones record into ENTRIES and SEEN."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec

from fastgw.plugin import Response


def _append(path: str, record) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class Recorder:
    """on_log: every finished exchange as a JSON line."""

    class Config(msgspec.Struct):
        path: str

    def __init__(self, config: Config):
        self.path = config.path

    def on_log(self, e) -> None:
        _append(self.path, {
            "request_id": e.request_id, "method": e.method, "path": e.path, "route": e.route,
            "status": e.status, "outcome": e.outcome, "flags": e.flags, "bytes_received": e.bytes_received,
            "bytes_sent": e.bytes_sent, "timings": e.timings, "upstream": e.upstream, "target": e.target,
        })


class Gatekeeper:
    """Sync on_request: answers for some paths, raises for one, tags the rest."""

    def __init__(self, config):
        self.config = config

    def on_request(self, req):
        if req.path.startswith("/gk/deny"):
            return Response(403, {"X-Denied-By": "gatekeeper"}, "denied")
        if req.path.startswith("/gk/raise"):
            raise RuntimeError("gatekeeper exploded")
        if req.path.startswith("/gk/slow"):
            time.sleep(0.03)
        req.headers.set("X-Gatekeeper", req.method + " " + req.path)
        return None


class AsyncAuth:
    """Async on_request: asks a real decision server over TCP (an HTTP GET carrying the client's
    Authorization) and continues on 200, answers 401 otherwise."""

    class Config(msgspec.Struct):
        host: str
        port: int
        cancelled_log: str = ""

    def __init__(self, config: Config):
        self.config = config

    async def on_request(self, req):
        token = req.headers.get("authorization", "")
        rid = req.request_id     # the view is gone once the exchange is: read what cleanup needs now
        try:
            reader, writer = await asyncio.open_connection(self.config.host, self.config.port)
            writer.write(f"GET /decide HTTP/1.1\r\nHost: auth\r\nAuthorization: {token}\r\n"
                         f"X-Echo-Delay: {req.headers.get('x-auth-delay', '0')}\r\n"
                         f"X-Echo-Status: {'200' if token == 'Bearer good' else '403'}\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
        except asyncio.CancelledError:
            if self.config.cancelled_log:
                _append(self.config.cancelled_log, {"cancelled": rid})
            raise
        if b" 200 " not in status_line:
            return Response.json(401, '{"error":"unauthorized"}')
        req.headers.set("X-Auth", "ok")
        return None


class Forever:
    """An async hook that never finishes on its own: the policy timeout must end it."""

    async def on_request(self, req):
        await asyncio.Event().wait()

    def __init__(self, config):
        pass


class ResponseEditor:
    """Sync on_response: adds a field, removes one, or replaces a 5xx."""

    def __init__(self, config):
        pass

    def on_response(self, resp):
        if resp.status >= 500:
            return Response(200, {"X-Replaced": str(resp.status)}, "replaced by a plugin")
        resp.headers.set("X-Seen-Status", str(resp.status))
        resp.headers.remove("X-Drop-Me")
        return None


class AsyncResponseEditor(ResponseEditor):
    """The same after an await: the response is held while the hook runs."""

    async def on_response(self, resp):
        await asyncio.sleep(0.05)
        return ResponseEditor.on_response(self, resp)


class Counter:
    """State that must survive a reload: a count per instance, carried over when the config
    changes."""

    class Config(msgspec.Struct):
        label: str = "a"

    def __init__(self, config: Config):
        self.label = config.label
        self.count = 0
        self.instance = id(self)

    def carry_over(self, old: Counter) -> None:
        self.count = old.count

    def on_request(self, req):
        self.count += 1
        req.headers.set("X-Count", f"{self.label}:{self.count}")


# ---- in-process recorders and probes (tests/unit/test_phase_machine.py) ----------------------------

ENTRIES: list = []          # LogEntry objects MemLog saw (sans-socket tests clear it)
SEEN: list = []             # what the view-probing plugins read


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
