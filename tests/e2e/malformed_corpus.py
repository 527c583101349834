"""A corpus of malformed (and a few valid-but-unusual) HTTP/1.1 requests, as raw bytes.

Sources: RFC 9112 sections 2-7 and 11 (message format, request line, Host, fields, framing, chunked,
security considerations), RFC 9110 field syntax, and the published request smuggling techniques
(CL.TE, TE.CL, TE.TE obfuscations; see PortSwigger "HTTP request smuggling" and RFC 9112 section 11.2).

Each case is (id, raw bytes, expected status or set of statuses, body_len or None). Where the contract
allows two answers (for example 400 or 501 for an ambiguous Transfer-Encoding list) the set holds both.
Valid controls expect 200 and carry `Connection: close` so the exchange ends with the gateway closing.
`body_len` (valid cases only) is the decoded body length the upstream must have received.

Every case is sent in one write. Gateway answers for these cases must close the connection and forward
nothing upstream (tests/e2e/test_malformed.py checks both).
"""

from __future__ import annotations

from typing import NamedTuple

HOST = b"Host: h.test\r\n"
CLOSE = b"Connection: close\r\n"
OK = 200
BAD = 400
AMBIGUOUS_TE = frozenset({400, 501})


class Case(NamedTuple):
    id: str
    raw: bytes
    expect: frozenset
    body_len: int | None = None


def _req(line: bytes = b"GET / HTTP/1.1", *fields: bytes, body: bytes = b"", host: bool = True,
         close: bool = True) -> bytes:
    head = line + b"\r\n" + (HOST if host else b"") + b"".join(f + b"\r\n" for f in fields)
    return head + (CLOSE if close else b"") + b"\r\n" + body


def _post(*fields: bytes, body: bytes = b"", line: bytes = b"POST / HTTP/1.1") -> bytes:
    return _req(line, *fields, body=body)


_CHUNKED = b"Transfer-Encoding: chunked"
_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

_RAW: list[tuple] = [
    # ---- valid but unusual: must be served (controls proving the gateway is not merely rejecting) ----
    ("valid-plain-get", _req(), OK),
    ("valid-http10-no-host", b"GET / HTTP/1.0\r\n\r\n", OK),
    ("valid-te-htab-ows", _post(b"Transfer-Encoding:\tchunked", body=_HELLO), OK, 5),
    ("valid-te-double-space-ows", _post(b"Transfer-Encoding:  chunked", body=_HELLO), OK, 5),
    ("valid-te-trailing-ows", _post(b"Transfer-Encoding: chunked ", body=_HELLO), OK, 5),
    ("valid-te-case-insensitive", _post(b"Transfer-Encoding: Chunked", body=_HELLO), OK, 5),
    ("valid-te-name-case", _post(b"tRANSFER-eNCODING: chunked", body=_HELLO), OK, 5),
    ("valid-chunk-extension", _post(_CHUNKED, body=b"5;a=b\r\nhello\r\n0\r\n\r\n"), OK, 5),
    ("valid-chunk-ext-quoted", _post(_CHUNKED, body=b'5;a="b c";d\r\nhello\r\n0\r\n\r\n'), OK, 5),
    ("valid-chunk-upper-hex", _post(_CHUNKED, body=b"A\r\nhelloworld\r\n0\r\n\r\n"), OK, 10),
    ("valid-chunk-leading-zeros", _post(_CHUNKED, body=b"005\r\nhello\r\n0000\r\n\r\n"), OK, 5),
    ("valid-chunk-trailers", _post(_CHUNKED, body=b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"), OK, 5),
    ("valid-chunk-multi", _post(_CHUNKED, body=b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"), OK, 3),
    ("valid-cl-htab-ows", _post(b"Content-Length:\t5", body=b"hello"), OK, 5),
    ("valid-cl-leading-zeros", _post(b"Content-Length: 005", body=b"hello"), OK, 5),
    ("valid-cl-zero", _post(b"Content-Length: 0"), OK, 0),
    ("valid-get-with-body", _req(b"GET / HTTP/1.1", b"Content-Length: 3", body=b"abc"), OK, 3),
    ("valid-value-htab-inside", _req(b"GET / HTTP/1.1", b"X-A: a\tb"), OK),
    ("valid-value-obs-text", _req(b"GET / HTTP/1.1", b"X-A: caf\xe9"), OK),
    ("valid-empty-value", _req(b"GET / HTTP/1.1", b"X-Empty:"), OK),
    ("valid-absolute-form", _req(b"GET http://h.test/x?y=1 HTTP/1.1"), OK),
    ("valid-expect-100-continue", _post(b"Expect: 100-continue", b"Content-Length: 5", body=b"hello"), OK, 5),
    ("valid-upgrade-h2c-ignored",
     _req(b"GET / HTTP/1.1", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
          b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA", close=True), OK),
    ("valid-query-with-odd-chars", _req(b"GET /a?b=c&d=%20e;f=g/h?i HTTP/1.1"), OK),
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    ("tolerated-leading-crlf", b"\r\n" + _req(), frozenset({200, 400})),
    # Absolute-form whose authority disagrees with Host: RFC 9112 3.2.2 says use the target's authority.
    ("tolerated-absolute-form-host-mismatch", _req(b"GET http://h.test/ HTTP/1.1", host=False)
     .replace(b"\r\n", b"\r\nHost: other.test\r\n", 1), frozenset({200, 400})),

    # ---- request line (RFC 9112 section 3) ----
    ("http09-simple-request", b"GET /\r\n", BAD),
    ("version-http2", _req(b"GET / HTTP/2.0"), 505),
    ("version-http12", _req(b"GET / HTTP/1.2"), 505),
    ("version-http30", _req(b"GET / HTTP/3.0"), 505),
    ("version-rtsp", _req(b"GET / RTSP/1.0"), BAD),
    ("version-lowercase", _req(b"GET / http/1.1"), BAD),
    ("version-no-minor", _req(b"GET / HTTP/1"), BAD),
    ("version-two-digit-minor", _req(b"GET / HTTP/1.10"), BAD),
    ("version-garbage", _req(b"GET / HTTP/x.y"), BAD),
    ("request-line-double-space", _req(b"GET  / HTTP/1.1"), BAD),
    ("request-line-trailing-space", _req(b"GET / HTTP/1.1 "), BAD),
    ("request-line-tabs", _req(b"GET\t/\tHTTP/1.1"), BAD),
    ("request-line-leading-space", _req(b" GET / HTTP/1.1"), BAD),
    ("request-line-missing-target", _req(b"GET HTTP/1.1"), BAD),
    ("method-invalid-token", _req(b"G(ET / HTTP/1.1"), BAD),
    ("method-nul", _req(b"G\x00ET / HTTP/1.1"), BAD),
    ("target-space", _req(b"GET /a b HTTP/1.1"), BAD),
    ("target-fragment", _req(b"GET /a#frag HTTP/1.1"), BAD),
    ("target-ctl", _req(b"GET /a\x01b HTTP/1.1"), BAD),
    ("target-del", _req(b"GET /a\x7fb HTTP/1.1"), BAD),
    ("target-nul", _req(b"GET /a\x00b HTTP/1.1"), BAD),
    ("target-non-ascii", _req(b"GET /caf\xe9 HTTP/1.1"), BAD),
    ("target-absolute-userinfo", _req(b"GET http://user:pw@h.test/ HTTP/1.1"), BAD),
    ("target-absolute-bad-scheme", _req(b"GET ftp://h.test/ HTTP/1.1"), BAD),
    ("target-authority-form-on-get", _req(b"GET h.test:80 HTTP/1.1"), BAD),
    ("target-asterisk-on-get", _req(b"GET * HTTP/1.1"), frozenset({400, 404})),
    ("request-line-bare-lf", b"GET / HTTP/1.1\n" + HOST + CLOSE + b"\r\n", BAD),
    ("request-line-bare-cr", b"GET / HTTP/1.1\r" + HOST + CLOSE + b"\r\n", BAD),
    ("request-line-too-long", _req(b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414),

    # ---- Host (RFC 9112 section 3.2) ----
    ("host-missing-http11", _req(host=False), BAD),
    ("host-duplicate-same", _req(b"GET / HTTP/1.1", b"Host: h.test"), BAD),
    ("host-duplicate-different", _req(b"GET / HTTP/1.1", b"Host: evil.test"), BAD),
    ("host-with-space", _req(b"GET / HTTP/1.1", host=False).replace(b"\r\n", b"\r\nHost: h test\r\n", 1), BAD),
    ("host-with-userinfo", _req(host=False).replace(b"\r\n", b"\r\nHost: user@h.test\r\n", 1), BAD),
    ("host-with-slash", _req(host=False).replace(b"\r\n", b"\r\nHost: h.test/x\r\n", 1), BAD),
    ("host-list", _req(host=False).replace(b"\r\n", b"\r\nHost: a.test, b.test\r\n", 1), BAD),
    ("host-bad-port", _req(host=False).replace(b"\r\n", b"\r\nHost: h.test:8x\r\n", 1), BAD),

    # ---- header fields (RFC 9112 section 5, RFC 9110 section 5) ----
    ("field-space-before-colon", _req(b"GET / HTTP/1.1", b"X-A : 1"), BAD),
    ("field-tab-before-colon", _req(b"GET / HTTP/1.1", b"X-A\t: 1"), BAD),
    ("field-empty-name", _req(b"GET / HTTP/1.1", b": v"), BAD),
    ("field-no-colon", _req(b"GET / HTTP/1.1", b"X-A"), BAD),
    ("field-name-space", _req(b"GET / HTTP/1.1", b"X A: 1"), BAD),
    ("field-name-paren", _req(b"GET / HTTP/1.1", b"X(A): 1"), BAD),
    ("field-name-non-ascii", _req(b"GET / HTTP/1.1", b"X-\xe9: 1"), BAD),
    ("field-name-nul", _req(b"GET / HTTP/1.1", b"X\x00A: 1"), BAD),
    ("field-name-underscore", _req(b"GET / HTTP/1.1", b"X_A: 1"), BAD),
    ("field-value-nul", _req(b"GET / HTTP/1.1", b"X-A: a\x00b"), BAD),
    ("field-value-ctl", _req(b"GET / HTTP/1.1", b"X-A: a\x01b"), BAD),
    ("field-value-del", _req(b"GET / HTTP/1.1", b"X-A: a\x7fb"), BAD),
    ("field-value-vertical-tab", _req(b"GET / HTTP/1.1", b"X-A: a\x0bb"), BAD),
    ("field-value-bare-cr", _req(b"GET / HTTP/1.1", b"X-A: a\rb"), BAD),
    ("field-bare-lf-line", _req(b"GET / HTTP/1.1", b"X-A: 1\nX-B: 2"), BAD),
    ("field-bare-lf-end-of-head", b"GET / HTTP/1.1\r\n" + HOST + CLOSE + b"\n", BAD),
    ("field-lf-cr-end-of-head", b"GET / HTTP/1.1\r\n" + HOST + CLOSE[:-2] + b"\n\r\n", BAD),
    ("field-nul-line", b"GET / HTTP/1.1\r\n" + HOST + CLOSE + b"\x00\r\n\r\n", BAD),
    ("obs-fold-space", _req(b"GET / HTTP/1.1", b"X-A: 1", b" 2"), BAD),
    ("obs-fold-tab", _req(b"GET / HTTP/1.1", b"X-A: 1", b"\t2"), BAD),
    ("whitespace-before-first-field", b"GET / HTTP/1.1\r\n X-A: 1\r\n" + HOST + CLOSE + b"\r\n", BAD),
    ("too-many-fields", _req(b"GET / HTTP/1.1", *[b"X-F%d: v" % i for i in range(100)]), 431),
    ("field-block-too-large", _req(b"GET / HTTP/1.1", b"X-Big: " + b"v" * 70000), 431),
    ("expect-unknown", _req(b"GET / HTTP/1.1", b"Expect: something-else"), 417),
    ("upgrade-twice", _req(b"GET /ws HTTP/1.1", b"Connection: Upgrade", b"Upgrade: websocket",
                           b"Upgrade: websocket", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                           b"Sec-WebSocket-Version: 13"), BAD),

    # ---- Content-Length (RFC 9112 section 6.3) ----
    ("cl-duplicate-equal", _post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), BAD),
    ("cl-duplicate-different", _post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), BAD),
    ("cl-list-equal", _post(b"Content-Length: 5, 5", body=b"hello"), BAD),
    ("cl-plus-sign", _post(b"Content-Length: +5", body=b"hello"), BAD),
    ("cl-minus-sign", _post(b"Content-Length: -5", body=b"hello"), BAD),
    ("cl-hex", _post(b"Content-Length: 0x5", body=b"hello"), BAD),
    ("cl-inner-space", _post(b"Content-Length: 1 0", body=b"helloworld"), BAD),
    ("cl-empty", _post(b"Content-Length: ", body=b"hello"), BAD),
    ("cl-non-digit", _post(b"Content-Length: five", body=b"hello"), BAD),
    ("cl-decimal", _post(b"Content-Length: 5.0", body=b"hello"), BAD),
    ("cl-overflow", _post(b"Content-Length: 99999999999999999999999999", body=b"hello"), BAD),
    ("cl-space-before-colon", _post(b"Content-Length : 5", body=b"hello"), BAD),
    ("cl-underscore-name", _post(b"Content_Length: 5", body=b"hello"), BAD),

    # ---- Transfer-Encoding and smuggling (RFC 9112 sections 6.1, 6.3, 11.2) ----
    ("cl-te-both", _post(b"Content-Length: 6", _CHUNKED, body=b"0\r\n\r\nG"), BAD),
    ("te-cl-both", _post(_CHUNKED, b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), BAD),
    ("te-space-before-colon", _post(b"Transfer-Encoding : chunked", body=_HELLO), BAD),
    ("te-xchunked", _post(b"Transfer-Encoding: xchunked", body=_HELLO), AMBIGUOUS_TE),
    ("te-chunked-then-x", _post(_CHUNKED, b"Transfer-Encoding: x", body=_HELLO), AMBIGUOUS_TE),
    ("te-chunked-then-cow-lowercase-name", _post(_CHUNKED, b"Transfer-encoding: cow", body=_HELLO),
     AMBIGUOUS_TE),
    ("te-identity", _post(b"Transfer-encoding: identity", body=b"hello"), AMBIGUOUS_TE),
    ("te-gzip", _post(b"Transfer-Encoding: gzip", body=b"hello"), 501),
    ("te-chunked-chunked", _post(b"Transfer-Encoding: chunked, chunked", body=_HELLO), AMBIGUOUS_TE),
    ("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked", body=_HELLO), AMBIGUOUS_TE),
    ("te-chunked-gzip", _post(b"Transfer-Encoding: chunked, gzip", body=_HELLO), AMBIGUOUS_TE),
    ("te-empty", _post(b"Transfer-Encoding: ", body=_HELLO), AMBIGUOUS_TE),
    ("te-comma-only", _post(b"Transfer-Encoding: ,", body=_HELLO), AMBIGUOUS_TE),
    ("te-quoted", _post(b'Transfer-Encoding: "chunked"', body=_HELLO), AMBIGUOUS_TE),
    ("te-vertical-tab", _post(b"Transfer-Encoding:\x0bchunked", body=_HELLO), BAD),
    ("te-nul", _post(b"Transfer-Encoding: chunked\x00", body=_HELLO), BAD),
    ("te-obs-fold", _post(b"Transfer-Encoding:", b" chunked", body=_HELLO), BAD),
    ("te-underscore-name", _post(b"Transfer_Encoding: chunked", body=_HELLO), BAD),
    ("te-on-http10", _post(_CHUNKED, body=_HELLO, line=b"POST / HTTP/1.0"), BAD),
    ("te-bare-lf-before", b"POST / HTTP/1.1\r\n" + HOST + b"X-A: 1\n" + _CHUNKED + b"\r\n" + CLOSE + b"\r\n"
     + _HELLO, BAD),

    # ---- chunked body (RFC 9112 section 7) ----
    ("chunk-size-non-hex", _post(_CHUNKED, body=b"g\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-0x-prefix", _post(_CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-plus", _post(_CHUNKED, body=b"+5\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-minus", _post(_CHUNKED, body=b"-5\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-leading-space", _post(_CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-trailing-space", _post(_CHUNKED, body=b"5 \r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-overflow", _post(_CHUNKED, body=b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-size-missing", _post(_CHUNKED, body=b"\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-ext-too-long", _post(_CHUNKED, body=b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-data-no-crlf", _post(_CHUNKED, body=b"5\r\nhelloX0\r\n\r\n"), BAD),
    ("chunk-data-longer-than-size", _post(_CHUNKED, body=b"3\r\nhello\r\n0\r\n\r\n"), BAD),
    ("chunk-bare-lf", _post(_CHUNKED, body=b"5\nhello\n0\n\n"), BAD),
    ("chunk-size-bare-cr", _post(_CHUNKED, body=b"5\rhello\r\n0\r\n\r\n"), BAD),
    ("chunk-trailer-no-colon", _post(_CHUNKED, body=b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"), BAD),
    ("chunk-trailer-space-before-colon", _post(_CHUNKED, body=b"5\r\nhello\r\n0\r\nX-T : 1\r\n\r\n"), BAD),
    ("chunk-trailer-obs-fold", _post(_CHUNKED, body=b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"), BAD),
    ("chunk-trailer-ctl", _post(_CHUNKED, body=b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n"), BAD),
]


def _case(entry) -> Case:
    cid, raw, expect, *rest = entry
    exp = frozenset({expect}) if isinstance(expect, int) else frozenset(expect)
    return Case(cid, raw, exp, rest[0] if rest else None)


CASES: list[Case] = [_case(e) for e in _RAW]
VALID = [c for c in CASES if c.expect == {200}]
MALFORMED = [c for c in CASES if 200 not in c.expect]

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
