"""The access line as the core writes it, sans-socket: a real ClientConn and Exchange on the fake loop
(tests/support/fakeloop.py) writing through a real LineSink into a file. JSON lines are checked with
orjson and json, which refuse anything but valid UTF-8 JSON; the escaper is fuzzed against a reference
decoding of the same bytes."""

from __future__ import annotations

import codecs
import json
import random
import re
from pathlib import Path

import orjson
import pytest
from support import fakeloop
from support.core_testing import access_log_escape
from support.fakeloop import ok_head

from fastgw import _core
from fastgw.config.logs import ACCESS_LOG_FIELDS


def _latin1_fallback(err: UnicodeDecodeError):
    # the core's rule: a byte that is not part of well-formed UTF-8 stands for itself (Latin-1)
    return err.object[err.start:err.start + 1].decode("latin-1"), err.start + 1


codecs.register_error("fastgw-latin1-fallback", _latin1_fallback)


def expected_text(data: bytes) -> str:
    return data.decode("utf-8", "fastgw-latin1-fallback")


def config(access_log: str = "{}", route_extra: str = "") -> str:
    return f"""
listeners: [{{address: 127.0.0.1:8080}}]
access_log: {access_log}
upstreams:
  a: {{targets: [{{address: 127.0.0.1:9001}}]}}
routes:
  - {{name: all, match: {{path: {{prefix: /}}}}, upstream: a{route_extra}}}
"""


class Logged(fakeloop.Harness):
    def __init__(self, tmp_path, cfg: str):
        super().__init__(cfg)
        self.path = tmp_path / "access.log"
        # no timer and a buffer no test fills: lines reach the file when the sink closes
        self.worker.access_log = _core.LineSink(self.loop, str(self.path), 1 << 20, 0, 1 << 20)

    def proxied(self, raw: bytes):
        self.client.data_received(raw)
        up, _ = self.upstream(0)
        up.data_received(ok_head(2) + b"ok")
        return up

    def lines(self) -> list[bytes]:
        self.worker.access_log.close()
        return self.path.read_bytes().splitlines()


def test_field_names_match_the_core():
    assert ACCESS_LOG_FIELDS == _core.ACCESS_LOG_FIELDS


@pytest.mark.parametrize("seed", range(4))
def test_json_escaping_of_random_bytes_is_valid_json_of_the_same_text(seed):
    rng = random.Random(seed)
    alphabet = [*range(256), 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xED, 0xA0]
    for _ in range(500):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        doc = b'"' + access_log_escape(data, True) + b'"'
        assert orjson.loads(doc) == expected_text(data), data
        assert json.loads(doc.decode("utf-8")) == expected_text(data), data


@pytest.mark.parametrize("data", [
    b"\xed\xa0\x80",          # an encoded surrogate: not UTF-8
    b"\xc0\xaf",              # overlong '/'
    b"\xf4\x90\x80\x80",      # past U+10FFFF
    b"\xe2\x82",              # cut short
    b"caf\xc3\xa9 \xf0\x9f\x98\x80",
    b'"},{"injected":1',
    b"\\u0000\x00\x1f\x7f",
])
def test_json_escaping_of_hostile_sequences(data):
    doc = b'{"v":"' + access_log_escape(data, True) + b'"}'
    assert orjson.loads(doc) == {"v": expected_text(data)}


def test_text_escaping_keeps_one_line_and_no_bare_quote():
    out = access_log_escape(b'a"b\\c\nd\xff e', False)
    assert out == b"a\\x22b\\x5cc\\x0ad\\xff e"


def test_proxied_line_has_every_field(tmp_path):
    h = Logged(tmp_path, config())
    h.proxied(b"GET /p/q?x=1 HTTP/1.1\r\nHost: api.example:8080\r\nX-Request-Id: rid-1\r\n"
              b"User-Agent: probe/1\r\n"
              b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
    (line,) = h.lines()
    rec = orjson.loads(line)
    assert list(rec) == list(_core.ACCESS_LOG_JSON_FIELDS)
    assert rec["time"].endswith("Z") and len(rec["time"]) == len("2026-01-01T00:00:00.000Z")
    assert {k: rec[k] for k in ("request_id", "trace_id", "client_ip", "method", "authority", "path", "query",
                                "protocol", "status", "route", "upstream", "target", "attempts", "flags",
                                "outcome", "user_agent", "consumer")} == {
        "request_id": "rid-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "client_ip": "192.0.2.7",
        "method": "GET", "authority": "api.example:8080", "path": "/p/q", "query": "x=1", "protocol": "HTTP/1.1",
        "status": 200, "route": "all", "upstream": "a", "target": "127.0.0.1:9001", "attempts": 1, "flags": [],
        "outcome": "proxied", "user_agent": "probe/1", "consumer": None,
    }
    assert rec["bytes_sent"] == len(h.out) and rec["bytes_received"] > 0
    assert rec["duration_ms"] >= rec["upstream_first_byte_ms"] >= rec["upstream_connect_ms"] >= 0


def test_hostile_user_agent_is_valid_json(tmp_path):
    ua = b'\xff\xc3\xa9"\\\t}{ \xed\xa0\x80'
    h = Logged(tmp_path, config())
    h.proxied(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: " + ua + b"\r\n\r\n")
    (line,) = h.lines()
    assert orjson.loads(line)["user_agent"] == expected_text(ua)


def test_invalid_traceparent_gives_no_trace_id(tmp_path):
    h = Logged(tmp_path, config())
    h.proxied(b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\r\n")
    (line,) = h.lines()
    assert orjson.loads(line)["trace_id"] is None


@pytest.mark.parametrize("access_log, query", [
    ("{query: redact, redact_params: [token, key]}", "a=1&token=REDACTED&b=&key=REDACTED&tokenx=2&flag"),
    ("{query: redact}", "a=REDACTED&token=REDACTED&b=REDACTED&key=REDACTED&tokenx=REDACTED&flag"),
    ("{query: omit}", None),
    ("{query: full}", "a=1&token=s3cret&b=&key=k&tokenx=2&flag"),
])
def test_query_modes(tmp_path, access_log, query):
    h = Logged(tmp_path, config(access_log))
    h.proxied(b"GET /q?a=1&token=s3cret&b=&key=k&tokenx=2&flag HTTP/1.1\r\nHost: a\r\n\r\n")
    (line,) = h.lines()
    assert orjson.loads(line)["query"] == query


def test_text_template_renders_named_fields(tmp_path):
    template = '$method ${path}?$query [$status] $flags "$user_agent" $route $trace_id $$'
    h = Logged(tmp_path, config(f"{{format: text, query: redact, redact_params: [t], template: '{template}'}}"))
    h.proxied(b'GET /x?t=1&u=2 HTTP/1.1\r\nHost: a\r\nUser-Agent: say "hi"\r\n\r\n')
    assert h.lines() == [b'GET /x?t=REDACTED&u=2 [200] - "say \\x22hi\\x22" all - $']


def test_text_uri_field_and_flags(tmp_path):
    h = Logged(tmp_path, config("{format: text, template: '$uri $status $flags $upstream_first_byte_ms'}"))
    h.client.data_received(b"GET /u?k=v HTTP/1.1\r\nHost: a\r\n\r\n")
    h.client_lost()
    assert h.lines() == [b"/u?k=v 0 DC -"]


def test_sampling_half_logs_some_but_not_all(tmp_path):
    h = Logged(tmp_path, config(route_extra=", access_log: {sample: 0.5}"))
    up = h.proxied(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    for i in range(1, 200):     # on the same client and pooled upstream connection
        h.client.data_received(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        up.data_received(ok_head(2) + b"ok")
    assert len(h.loop.connects) == 1
    n = len(h.lines())
    assert 0 < n < 200, n


_GOLDEN_CONFIG = """
listeners: [{{address: 127.0.0.1:8080}}]
access_log: {al}
upstreams:
  a: {{targets: [{{address: 127.0.0.1:9001}}]}}
routes:
  - {{name: r.1-x_, match: {{path: {{prefix: /p}}}}, upstream: a}}
"""
_GOLDEN_REQUESTS = [
    (b"GET /p/q?x=1&token=s HTTP/1.1\r\nHost: api.example:8080\r\nX-Request-Id: rid-1\r\nUser-Agent: probe/1\r\n"
     b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n", True),
    (b"GET /p/%22a?k=%zz&x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\"2\r\n"
     b"User-Agent: \xff\xc3\xa9\"\\\t}{ \xed\xa0\x80\r\n\r\n", True),
    (b"POST /nope?q HTTP/1.1\r\nHost: b\r\nX-Request-Id: r3\r\nContent-Length: 0\r\n\r\n", False),   # 404
    (b"GET /p/\xc3\xa9\xff HTTP/1.1\r\nHost: a\r\n\r\n", False),                                      # refused
]
_GOLDEN_FORMATS = [
    "{}", "{query: redact, redact_params: [token]}", "{format: text}",
    "{format: text, template: '$time $uri $flags $outcome $route $upstream $target $attempts $status "
    "$bytes_received $bytes_sent $protocol $authority $consumer $trace_id $query $user_agent $upstream_connect_ms'}",
]


def test_lines_are_byte_for_byte_the_format_of_record(tmp_path):
    """The lines are a contract: the same exchanges give the bytes of access_log_golden.txt (written
    by the line writer before its fast paths), with the clock's fields and generated request ids
    masked."""
    out = b""
    for i, al in enumerate(_GOLDEN_FORMATS):
        d = tmp_path / str(i)
        d.mkdir()
        h = Logged(d, _GOLDEN_CONFIG.format(al=al))
        up = None
        for raw, proxied in _GOLDEN_REQUESTS:
            h.client.data_received(raw)
            if proxied:
                if up is None:
                    up, _ = h.upstream(0)
                up.data_received(ok_head(2) + b"ok")
        out += b"".join(line + b"\n" for line in h.lines())
    out = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", b"TIME", out)
    out = re.sub(rb"\b\d+\.\d{3}\b", b"MS", out)
    out = re.sub(rb"\b[0-9a-f]{12}-\d+\b", b"RID", out)
    assert out == (Path(__file__).parent / "access_log_golden.txt").read_bytes()


@pytest.mark.parametrize("seed", range(2))
def test_text_escaping_of_random_bytes(seed):
    rng = random.Random(seed)
    for _ in range(500):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        want = b"".join(bytes((c,)) if 0x20 <= c < 0x7F and c not in b'"\\' else b"\\x%02x" % c for c in data)
        assert access_log_escape(data, False) == want, data


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100])
def test_names_of_every_length_are_copied_whole(tmp_path, n):
    """Route names go through the line's short-copy paths (lengths 1-3, 4-7, 8-15, 16-32, more)."""
    name = ("r" + "abcdefghij" * 10)[:n] if n else "r"
    h = Logged(tmp_path, config(route_extra="").replace("name: all", f"name: {name}"))
    h.proxied(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    (line,) = h.lines()
    assert orjson.loads(line)["route"] == name
