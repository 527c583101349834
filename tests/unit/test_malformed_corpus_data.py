"""Checks the corpus data itself against an independent parser (llhttp via httptools).

Valid controls must parse completely with the declared body length (catches typos such as a wrong
chunk size, which would turn a control into a malformed case). Malformed cases that llhttp accepts must
be listed below with the rule that makes them invalid for fastgw: everything else must be rejected by
llhttp too, so a case that is accidentally valid cannot slip in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httptools
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.malformed_corpus import CASES, MALFORMED, VALID  # noqa: E402

# llhttp accepts these; fastgw's contract (or RFC 9112 where llhttp is lenient) rejects them.
STRICTER_THAN_LLHTTP = {
    "http09-simple-request": "HTTP/0.9 is not served (llhttp waits for more)",
    "version-http2": "505: well-formed but unsupported version",
    "version-rtsp": "only HTTP-name is accepted",
    "request-line-double-space": "RFC 9112 3: single SP separators",
    "target-fragment": "no '#' in request-target",
    "target-absolute-userinfo": "RFC 9110 4.2.4: no userinfo in http URIs",
    "target-absolute-bad-scheme": "only http(s) absolute-form",
    "target-asterisk-on-get": "asterisk-form is for OPTIONS only",
    "request-line-too-long": "414 limit",
    "host-missing-http11": "RFC 9112 3.2",
    "host-duplicate-same": "RFC 9112 3.2",
    "host-duplicate-different": "RFC 9112 3.2",
    "host-with-space": "RFC 9112 3.2: invalid Host",
    "host-with-userinfo": "RFC 9112 3.2: invalid Host",
    "host-with-slash": "RFC 9112 3.2: invalid Host",
    "host-list": "RFC 9112 3.2: invalid Host",
    "host-bad-port": "RFC 9112 3.2: invalid Host",
    "field-name-underscore": "underscores_in_headers: reject (default)",
    "too-many-fields": "431 limit",
    "field-block-too-large": "431 limit",
    "expect-unknown": "417",
    "upgrade-twice": "one Upgrade field: the protocol a tunnel switches to is not a guess",
    "te-gzip-chunked": "only exactly 'chunked' is supported",
    "te-on-http10": "RFC 9112 6.1: TE on HTTP/1.0 is a framing fault",
    "chunk-ext-too-long": "4 KiB chunk extension limit",
}


class _Probe:
    def __init__(self):
        self.body_len = 0
        self.complete = False

    def on_body(self, b):
        self.body_len += len(b)

    def on_message_complete(self):
        self.complete = True


def _llhttp(raw: bytes) -> tuple[str, int]:
    probe = _Probe()
    try:
        httptools.HttpRequestParser(probe).feed_data(raw)
    except httptools.HttpParserUpgrade:
        return "upgrade", probe.body_len
    except httptools.HttpParserError:
        return "error", probe.body_len
    return ("ok" if probe.complete else "incomplete"), probe.body_len


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_controls_parse(case):
    outcome, body_len = _llhttp(case.raw)
    # h2c is an upgrade offer to llhttp; fastgw ignores it and serves HTTP/1.1.
    assert outcome in (("ok", "upgrade") if "upgrade" in case.id else ("ok",)), case.id
    if case.body_len is not None:
        assert body_len == case.body_len, case.id
    assert b"Connection: close" in case.raw or b"HTTP/1.0" in case.raw.split(b"\r\n", 1)[0], case.id


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_cases_are_really_malformed(case):
    outcome, _ = _llhttp(case.raw)
    if case.id in STRICTER_THAN_LLHTTP:
        assert outcome != "error", f"{case.id}: llhttp now rejects it too; drop it from the allowlist"
    else:
        assert outcome == "error", f"{case.id}: llhttp accepts it ({outcome}); explain why it is malformed"


def test_allowlist_names_real_cases():
    ids = {c.id for c in CASES}
    assert set(STRICTER_THAN_LLHTTP) <= ids
