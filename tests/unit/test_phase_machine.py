"""The phase machine (issue 8), sans-socket: a real ClientConn, Exchange and UpstreamConn from the core
with fake transports, a fake loop and plugin tasks the test finishes by hand (tests/support/fakeloop.py),
so each callback arrives exactly where the scenario needs it: the log phase once, request and response
pauses and their races, held responses, answers and keep-alive. Most tests come from a review of the
refactor (review 3); each was a finding, and its docstring says what went wrong before the fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import fakeloop, phase_plugins
from support.fakeloop import HIGH_WATER, ok_head

from fastgw.config import loads_config

TESTS_DIR = str(Path(__file__).resolve().parents[1])


def plugin(cls: str, **extra) -> str:
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"{{type: plugin, module: 'support.phase_plugins:{cls}'{more}}}"


def config(route_policies: str = "", top_policies: str = "", extra_routes: str = "",
           limits: str = "{}", response_header: str = "5s") -> str:
    return f"""
listeners: [{{address: 127.0.0.1:8080}}]
limits: {limits}
upstreams:
  a:
    targets: [{{address: 127.0.0.1:9001}}]
    timeouts: {{connect: 1s, response_header: {response_header}, body_idle: 5s}}
policies: [{top_policies}]
routes:
{extra_routes}
  - {{name: all, match: {{path: {{prefix: /}}}}, upstream: a, policies: [{route_policies}]}}
"""


class Harness(fakeloop.Harness):
    """fakeloop's Harness with this file's config and a clean plugin record."""

    def __init__(self, cfg: str | None = None):
        phase_plugins.ENTRIES.clear()
        phase_plugins.SEEN.clear()
        super().__init__(cfg or config())


def logged() -> list:
    return list(phase_plugins.ENTRIES)


def run_isolated(body: str) -> subprocess.CompletedProcess:
    """Runs `body` (with this module's names) in a child process: for findings that crash."""
    code = f"import sys; sys.path.insert(0, {TESTS_DIR!r})\nfrom unit.test_phase_machine import *\n"
    code += textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


# ---- controls: the harness drives the real paths ---------------------------------------------------

def test_control_log_once_for_a_proxied_exchange():
    h = Harness(config(top_policies=plugin("MemLog")))
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    assert h.out.startswith(b"HTTP/1.1 200 OK")
    assert [e.outcome for e in logged()] == ["proxied"]


def test_control_request_pause_keeps_the_body_and_resumes():
    h = Harness(config(route_policies=plugin("AsyncGo") + ", " + plugin("MemLog")))
    h.client.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    assert len(h.loop.tasks) == 1 and not h.loop.connects
    h.client.data_received(b"56789")
    h.loop.tasks[0].finish(None)
    up, ut = h.upstream(0)
    assert bytes(ut.written).endswith(b"\r\n\r\n0123456789")
    up.data_received(ok_head(2) + b"ok")
    assert [e.outcome for e in logged()] == ["proxied"]


def test_control_response_pause_then_continue():
    h = Harness(config(route_policies=plugin("AsyncHoldResponse") + ", " + plugin("MemLog")))
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(5, b"X-Up: yes\r\n") + b"hello")
    assert h.out == b"" and len(h.loop.tasks) == 1
    h.loop.tasks[0].finish(None)
    assert h.out.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Up: yes\r\n" in h.out and h.out.endswith(b"hello")
    assert [e.outcome for e in logged()] == ["proxied"]


# ---- findings -----------------------------------------------------------------------------------

def _hold_with_client_write_pressure():
    """A keep-alive connection whose client has not read the previous response (its transport is
    just under the write high-water mark); the next response starts with a 103 (which crosses it,
    so the upstream is paused for the client) and its final head, in one read; an async response
    plugin holds that response. Returns (harness, upstream, upstream transport)."""
    h = Harness(config(route_policies=plugin("AsyncHoldResponse") + ", " + plugin("MemLog")))
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(5) + b"first")
    h.loop.tasks[0].finish(None)                      # the first response goes through
    assert h.out.endswith(b"first") and not h.ct.protocol_paused
    h.ct.buffered = HIGH_WATER - 20                   # the client reads slowly
    h.client.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(h.loop.connects) == 1, "precondition: the pooled connection serves /two"
    up.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                     + ok_head(10, b"X-Up: marker-value-0123456789\r\n") + b"hello")
    assert h.ct.protocol_paused and not ut.reading, "precondition: the 103 paused the upstream for the client"
    assert len(h.loop.tasks) == 2, "precondition: the response of /two is held"
    return h, up, ut



def test_held_upstream_is_not_resumed_by_the_client_draining():
    """upstream.pyx:324-329 resume_reading_for_client resumes reading whatever the state, so a
    response held by a response policy (UP_HELD, which paused reading on purpose, upstream.pyx:195)
    is read on as soon as the client drains: the whole upstream body piles up in `held` (unbounded:
    data_received appends every read, upstream.pyx:120-122) while the policy works."""
    h, up, ut = _hold_with_client_write_pressure()
    h.ct.drain()                                      # the client catches up during the hold
    assert not ut.reading, "the held upstream response is being read into memory while the policy works"



def test_bytes_read_while_held_keep_the_held_head_valid():
    """While a response is held, Exchange.resp_p points into the bytes the head was parsed from
    (upstream.pyx:192 `held = data`). A read during the hold (above: after the client drained)
    does `self.held = self.held + data` (upstream.pyx:121): a new object, and the old one, the only
    owner of what resp_p points at, is freed. When the policy lets the response through,
    send_response_head serializes the client's head from freed memory (use after free): here the
    freed block is reused by same-sized bytes and the client gets their contents as its head."""
    h, up, ut = _hold_with_client_write_pressure()
    h.ct.drain()
    before = len(h.out)
    up.data_received(b"world")                        # the rest of the body, read during the hold
    size = len(ok_head(10, b"X-Up: marker-value-0123456789\r\n") + b"hello")   # the held bytes (after the 103)
    junk = [b"Z" * size for _ in range(64)]           # what the allocator hands out next  # noqa: F841
    h.loop.tasks[1].finish(None)
    got = h.out[before:]
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Up: marker-value-0123456789\r\n" in got, got[:200]



def test_body_after_upstream_lost_while_held():
    """The upstream answers early (the request body is still coming), a response policy holds the
    response, and the upstream closes: connection_lost in UP_HELD sets transport = None and keeps
    ex.up (upstream.pyx:279-284). The client's next body bytes go to Exchange._send_up, which writes
    to `self.up.transport` (exchange.pyx:480-482): AttributeError out of ClientConn.data_received
    (the event loop kills the client connection; the held response, which was whole, is lost)."""
    h = Harness(config(route_policies=plugin("AsyncHoldResponse") + ", " + plugin("MemLog")))
    h.client.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    up, ut = h.upstream(0)
    up.data_received(ok_head(4, b"Connection: close\r\n") + b"done")
    assert len(h.loop.tasks) == 1, "precondition: the response is held"
    up.connection_lost(None)                          # the upstream closes after its response
    h.client.data_received(b"56789")                  # the rest of the request body
    h.loop.tasks[0].finish(None)
    assert h.out.startswith(b"HTTP/1.1 200 OK\r\n") and h.out.endswith(b"done")
    assert [e.outcome for e in logged()] == ["proxied"]



def test_bytes_sent_of_a_rechunked_response():
    """ClientConn.send_body (client.pyx:410-416), a piece over COALESCE_MAX in RM_CHUNK: it adds
    `n + out.len` (the pending head), then puts the chunk size line into `out` and adds `out.len + 2`
    again, so the head is counted twice in bytes_written, and the log phase's bytes_sent is too big
    by the head's length."""
    h = Harness(config(top_policies=plugin("MemLog")))
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    body = b"b" * 20000
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert h.out.endswith(b"0\r\n\r\n") and b"Transfer-Encoding: chunked" in h.out
    (entry,) = logged()
    assert entry.bytes_sent == len(h.out), (entry.bytes_sent, len(h.out))



def test_refused_head_logs_no_stale_host():
    """A head the parser refuses never fills hostbuf, but LogEntry.host reads it whenever ex.h is
    set (plugin.pyx:262; Exchange.host, exchange.pyx:840-842), so a refused request on a keep-alive
    connection is logged with the previous request's Host."""
    h = Harness(config(top_policies=plugin("MemLog")))
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: first.example\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    h.client.data_received(b"GET /y HTTP/1.1\r\nHost: second.example\r\nBad Field\r\n\r\n")
    assert h.out.count(b"HTTP/1.1 400 ") == 1
    first, refused = logged()
    assert first.host == "first.example"
    assert refused.outcome == "refused"
    assert refused.host != "first.example", "the refused request is logged with another request's Host"



def test_body_timeout_after_response_start_is_not_a_client_disconnect():
    """The upstream answers early and its response streams while the client's request body stalls:
    the body deadline (client.pyx:547-550) fails the request, which aborts the connection because the
    response had started. Exchange.finish (exchange.pyx:795-797) adds DC unless one of a few upstream
    or framing flags is set; RT is not among them, so the log says the client disconnected, when it
    was the gateway that gave up on a stalled client."""
    import time

    h = Harness(config(top_policies=plugin("MemLog"), limits="{body_timeout: 100ms}"))
    h.client.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n01234")
    up, ut = h.upstream(0)
    up.data_received(ok_head(1000) + b"partial")      # the response starts; the body is still due
    time.sleep(0.2)
    h.worker._tick()
    assert h.ct.aborted, "precondition: the stalled exchange was aborted"
    (entry,) = logged()
    assert "RT" in entry.flags
    assert "DC" not in entry.flags, entry.flags



def test_no_upstream_timeout_while_paused_for_a_slow_client():
    """Exchange._flush_queue (exchange.pyx:538-540) pauses the upstream for a client whose transport
    is still over its high-water mark (a pipelined exchange), then expect_response starts the
    response-header deadline anyway (upstream.pyx:89-94). The upstream cannot be read, so a client that
    takes longer than response_header to read the previous response gets a 504 flagged UT for an
    upstream that may have answered at once. (pause_reading_for_client's own comment: "a slow client
    is not the upstream's fault"; resume_reading_for_client does not re-arm UP_HEAD's deadline either.)"""
    import time

    h = Harness(config(top_policies=plugin("MemLog"), response_header="100ms"))
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(200_000) + b"x" * 200_000)
    assert h.ct.protocol_paused and b"GET /two " in bytes(ut.written) and not ut.reading, "precondition"
    time.sleep(0.2)                                   # the client is slow to read
    h.worker._tick()
    assert b"504 " not in h.out, "504 for an upstream the gateway was not reading"
    assert [e.flags for e in logged()] == [[]], [(e.status, e.flags) for e in logged()]



def test_explain_options_star_does_not_crash():
    """ClientConn.explain (client.pyx:627-628): `OPTIONS *` makes _route return OUT_OPTIONS_STAR,
    which is not OUT_PROXY nor OUT_REDIRECT, so explain formats `<bytes>ex.refusal`, a NULL
    const char*: the process dies with SIGSEGV. Run in a child process."""
    code = textwrap.dedent("""
        from fastgw import _core
        from fastgw.config import loads_config
        from fastgw.runtime import compile_runtime
        cfg = loads_config('''
        listeners: [{address: 127.0.0.1:8080}]
        upstreams: {a: {targets: [{address: 127.0.0.1:9001}]}}
        routes: [{name: all, match: {path: {prefix: /}}, upstream: a}]
        ''', "yaml")
        conn = _core.Worker(None, compile_runtime(cfg))()
        print(conn.explain(b"OPTIONS * HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n", 8080))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"explain died: rc={r.returncode} {r.stderr[-500:]}"
    assert "200" in r.stdout



def test_respond_policy_refuses_an_interim_status():
    """config/policies.py: RespondPolicy.status is `Status` (100..599), so `respond` with 100 or 103
    passes `fastgw check`, and ClientConn.send_answer writes "HTTP/1.1 103 OK" with a Content-Length
    and body and ends the exchange (keep-alive kept): the client takes it as an interim response
    and reads the gateway's next response (or the body bytes) as this request's final one. Plugins'
    Response is already limited to 200..599 (plugin.pyx:506)."""
    from fastgw.config.errors import ConfigError

    with pytest.raises(ConfigError):
        loads_config(config(route_policies="{type: respond, status: 103, body: early}"), "yaml")


def test_http10_keepalive_answer_says_keep_alive():
    """ClientConn.send_answer passes http10=False to _put_trailer_fields (client.pyx:462), so an
    answer the gateway or a policy makes to an HTTP/1.0 client that asked for keep-alive carries no
    `Connection: keep-alive` while the gateway keeps the connection open (send_response_head passes
    ex.http10). An HTTP/1.0 client treats the answer as the connection's last and closes;
    one that reuses it anyway... is in an undefined state. (Older than issue 8: _send_error had it.)"""
    h = Harness(config(route_policies="{type: respond, status: 403, body: denied}"))
    h.client.data_received(b"GET /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    assert h.out.startswith(b"HTTP/1.1 403 ")
    assert not h.ct.closing, "precondition: the gateway keeps the connection"
    assert b"\r\nConnection: keep-alive\r\n" in h.out, h.out



def test_close_all_logs_a_half_received_head():
    """A client that left mid-head is logged as an exchange (ClientConn._log_unfinished_head, from
    connection_lost when state == CL_HEAD and bytes are buffered). Worker.close_all (the end of a
    drain) aborts such a connection instead: abort() sets CL_CLOSED first (client.pyx:519-522), so
    the connection_lost that follows sees no head in progress and the request is never logged."""
    h = Harness(config(top_policies=plugin("MemLog")))
    h.client.data_received(b"GET /slow-head HTTP/1.1\r\nHost: a\r\n")
    h.worker.begin_drain()
    assert not h.ct.closing, "precondition: a connection with a head in progress is left to finish"
    h.worker.close_all()
    h.client_lost(None)
    assert len(logged()) == 1, "the half-received request was never logged"



def test_client_leaving_mid_head_does_not_crash():
    """ClientConn._log_unfinished_head (client.pyx:236-243) calls `ex.init(self, self.buf, 0, NULL)`,
    and Exchange.init reads `h.version_minor` and `h.is_head_method` (exchange.pyx:126-127) from that
    NULL MessageHead*: SIGSEGV. Any client that closes (FIN or reset) after part of a request head
    kills the worker process with every connection it serves (`printf 'GET / HTTP/1.1\\r\\n' | nc`).
    Run in a child process."""
    r = run_isolated("""
        h = Harness(config(top_policies=plugin("MemLog")))
        h.client.data_received(b"GET /slow-head HTTP/1.1\\r\\nHost: a\\r\\n")
        h.client_lost(None)
        print([e.outcome for e in logged()])
    """)
    assert r.returncode == 0, f"the worker died: rc={r.returncode} {r.stderr[-800:]}"
    assert r.stdout.strip() == "['refused']", r.stdout


def test_plugin_stats_count_calls_and_failures_per_hook():
    """Per plugin and phase, kept in the worker: calls, errors and a cumulative duration histogram
    (what fastgw_plugin_duration_seconds{plugin,phase} will be exported from)."""
    h = Harness(config(top_policies=plugin("MemLog"), route_policies=plugin("AsyncGo")))
    for i in range(3):
        client = h.worker()
        ct = fakeloop.FakeTransport(client)
        client.connection_made(ct)
        client.data_received(b"GET /s%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
    tasks = h.loop.tasks
    assert len(tasks) == 3
    tasks[0].finish(None)
    tasks[1].fail(RuntimeError("auth service said no"))
    tasks[2].finish(None)
    stats = h.worker.plugin_stats()
    assert set(stats) == {("plugin-0", "log"), ("routes/all/plugin-0", "request")}
    req = stats[("routes/all/plugin-0", "request")]
    assert (req.calls, req.errors) == (3, 1)
    buckets = req.buckets()
    assert buckets[-1] == (float("inf"), 3)
    assert [c for _, c in buckets] == sorted(c for _, c in buckets), "cumulative"
    log = stats[("plugin-0", "log")]
    assert log.calls == 1 and log.errors == 0, "only the failed exchange has ended (a 500)"


def _has_run_log_phase() -> bool:
    from fastgw import _core
    return hasattr(_core, "run_log_phase")


@pytest.mark.skipif(not _has_run_log_phase(), reason="fastgw._core was built without FASTGW_TESTING=1")
def test_a_log_policy_that_raises_does_not_stop_the_ones_after_it():
    """The log phase's walk has one try around it, entered again after the policy that raised: each
    policy after a raising one still runs, once, and a raising last one ends the walk cleanly."""
    from fastgw import _core
    assert _core.run_log_phase("c") == [1]
    assert _core.run_log_phase("rc") == [1]
    assert _core.run_log_phase("crcrr") == [1, 1]
    assert _core.run_log_phase("rrcc") == [1, 1]
    assert _core.run_log_phase("") == []
