"""Each upstream attempt in the log phase (fastgw/_cy/attempts.pyx), sans-socket: what a plugin's
LogEntry gets (attempt_targets / attempt_results / attempt_ms), and that a reused Exchange starts
its list afresh (docs/observability.md#attempts)."""

from __future__ import annotations

from support import fakeloop, phase_plugins
from support.fakeloop import ok_head

CONFIG = """
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  a:
    targets: [{address: 127.0.0.1:9001}]
    timeouts: {connect: 1s, response_header: 5s, body_idle: 5s}
policies: [{type: plugin, module: 'support.phase_plugins:MemLog'}]
routes:
  - {name: all, match: {path: {prefix: /}}, upstream: a}
"""


def harness() -> fakeloop.Harness:
    phase_plugins.ENTRIES.clear()
    return fakeloop.Harness(CONFIG)


def test_log_entries_list_each_attempt_and_a_reused_exchange_starts_afresh():
    h = harness()
    for _ in range(3):                          # keep-alive: one Exchange, reused
        h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        if len(h.loop.connects) == 1 and not phase_plugins.ENTRIES:
            up, _ut = h.upstream(0)
        up.data_received(ok_head(2) + b"ok")
    entries = list(phase_plugins.ENTRIES)
    assert [(e.attempts, e.attempt_targets, e.attempt_results) for e in entries] == [
        (1, ["127.0.0.1:9001"], ["200"])] * 3
    assert all(len(e.attempt_ms) == 1 and e.attempt_ms[0] >= 0 for e in entries)


def test_a_reset_before_the_head_is_the_attempts_result():
    h = harness()
    h.client.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    up, _ut = h.upstream(0)
    up.connection_lost(ConnectionResetError())
    assert h.out.startswith(b"HTTP/1.1 502")
    (e,) = phase_plugins.ENTRIES
    assert (e.attempts, e.attempt_targets, e.attempt_results) == (1, ["127.0.0.1:9001"], ["reset"])


def test_an_answer_without_an_upstream_has_no_attempts():
    h = harness()
    h.client.data_received(b"GET http://a/x HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
    (e,) = phase_plugins.ENTRIES
    assert (e.attempts, e.attempt_targets, e.attempt_results, e.attempt_ms) == (0, [], [], [])
