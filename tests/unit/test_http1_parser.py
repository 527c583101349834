"""Sans-socket tests of the strict HTTP/1.1 parser in the core (the end-to-end corpus in tests/e2e
checks the same rules over real sockets)."""

import random

import httptools
import pytest
from support.core_testing import HTTPParseError, decode_chunked, parse_request


def test_simple_get():
    r = parse_request(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-A:  v  \r\n\r\n")
    assert r["method"] == b"GET"
    assert r["target"] == b"/a/b?x=1"
    assert r["path"] == b"/a/b"
    assert r["host"] == b"Example.com"
    assert r["version"] == (1, 1)
    assert r["keep_alive"] is True
    assert r["headers"] == [(b"Host", b"Example.com:8080"), (b"X-A", b"v")]
    assert r["content_length"] == -1


def test_incomplete_returns_none():
    assert parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert parse_request(b"GET / HT") is None


def test_http10_defaults_to_close_and_needs_no_host():
    r = parse_request(b"GET / HTTP/1.0\r\n\r\n")
    assert r["keep_alive"] is False and r["host"] is None
    r = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert r["keep_alive"] is True


def test_absolute_form_uses_authority():
    r = parse_request(b"GET http://api.example.com:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n")
    assert r["authority"] == b"api.example.com:81"
    assert r["target"] == b"/x?y" and r["path"] == b"/x"


@pytest.mark.parametrize("authority", [
    b"a.com:xyz",          # port not digits
    b"a.com:80:90",        # two ports
    b"a.com:9999999",      # port longer than 5 digits
    b":80",                # empty host
    b"[::1",               # unclosed IP-literal
    b"a]b:1",              # ']' outside an IP-literal
    b"a" * 256,            # longer than MAX_HOST_LEN (the Host field's limit)
])
def test_absolute_form_authority_gets_the_host_rules(authority):
    """`_absolute_form` (http1.pyx:568-594) accepts any run of _HOST_CHAR bytes as the authority,
    while the same value in a Host field is checked by `_host_value` (length <= 255, port of 1-5
    digits, brackets, non-empty host) and refused with 400. The authority then *replaces* Host
    upstream (client.pyx `_build_upstream_head`) and in X-Forwarded-Host, so absolute-form is a way
    around every Host rule in docs/http.md; its missing length check is also what lets
    `_route` overflow `hostbuf` (see test_absolute_form_long_authority_does_not_crash_worker in
    tests/e2e/test_limits.py). Expected: 400, as for the Host field.
    (From review 1: absolute-form authorities get the Host rules.)"""
    raw = b"GET http://" + authority + b"/x HTTP/1.1\r\nHost: a.com\r\n\r\n"
    with pytest.raises(HTTPParseError) as e:
        parse_request(raw)
    assert e.value.status == 400


@pytest.mark.parametrize("authority", [b"a.com:xyz", b"a.com:80:90", b":80", b"a" * 256])
def test_host_field_refuses_the_same_authority_values(authority):
    """Control (passes): the Host field refuses each of these.
    (From review 1: the control of test_absolute_form_authority_gets_the_host_rules.)"""
    with pytest.raises(HTTPParseError) as e:
        parse_request(b"GET /x HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
    assert e.value.status == 400


def test_chunked_and_lengths():
    r = parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert r["chunked"] is True
    r = parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0012\r\n\r\n")
    assert r["content_length"] == 12


def test_underscore_drop_mode():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\nX-Z: 2\r\n\r\n"
    with pytest.raises(HTTPParseError) as e:
        parse_request(raw)
    assert e.value.status == 400
    r = parse_request(raw, drop_underscores=True)
    assert r["headers"] == [(b"Host", b"a"), (b"X-Z", b"2")]


BAD = [
    (b"GET /\r\n\r\n", 400),                                          # HTTP/0.9
    (b"GET / RTSP/1.0\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                 # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400),         # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: \r\nConnection: Upgrade\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    (b"GET http://" + b"a" * 300 + b"/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),   # authority over 255 bytes
    (b"GET / HTTP/1.1\r\nHost: " + b"a" * 300 + b"\r\n\r\n", 400),
    (b"GET " + b"/a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Long: " + b"v" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 101 + b"\r\n", 431),
]


@pytest.mark.parametrize("raw,status", BAD, ids=[str(i) for i in range(len(BAD))])
def test_refused_with_status(raw, status):
    with pytest.raises(HTTPParseError) as e:
        parse_request(raw)
    assert e.value.status == status


def test_upgrade_websocket_is_parsed_for_the_route_to_decide():
    r = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert r["method"] == b"GET"


def test_upgrade_h2c_is_ignored():
    r = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    assert r["method"] == b"GET"


def test_chunked_decoding():
    body = b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    assert decode_chunked(body + b"GET") == (b"hello", len(body))
    assert decode_chunked(b"5\r\nhel") is None
    for bad in [b"x\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b"-5\r\n", b" 5\r\nhello\r\n0\r\n\r\n",
                b"5 \r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n",
                b"1" * 17 + b"\r\n", b"5;" + b"a" * 5000 + b"\r\n", b"0\r\nbad trailer\r\n\r\n"]:
        with pytest.raises(HTTPParseError):
            decode_chunked(bad)


class _Sink:
    def on_url(self, url):
        pass


def _httptools_accepts(raw: bytes) -> bool:
    p = httptools.HttpRequestParser(_Sink())
    try:
        p.feed_data(raw)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError:
        return False
    return True


def test_at_least_as_strict_as_httptools_on_mutations():
    """Differential test: mutate valid requests byte by byte; whatever llhttp (strict mode, via
    httptools) refuses in the head, the gateway refuses too."""
    seeds = [
        b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Y: z\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
        b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    alphabet = b" \t\r\n:\x00\x7f;,/_-aZ09\x80@#?"
    rng = random.Random(1234)
    disagreements = []
    for _ in range(4000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw) - 4)
            op = rng.random()
            if op < 0.5:
                raw[i] = rng.choice(alphabet)
            elif op < 0.75:
                raw.insert(i, rng.choice(alphabet))
            else:
                del raw[i]
        raw = bytes(raw)
        try:
            ours = parse_request(raw)
        except HTTPParseError:
            continue
        if ours is None:
            continue
        head = raw[:ours["head_length"]]
        if not _httptools_accepts(head):
            # llhttp knows a fixed list of methods; extension methods are valid HTTP
            if _httptools_accepts(b"GET" + head[head.index(b" "):]):
                continue
            disagreements.append(raw)
    assert disagreements == []
