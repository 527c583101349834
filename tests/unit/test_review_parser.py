"""Regression tests from a review of the strict request parser (http1.pyx): absolute-form
authorities get the Host rules."""

import pytest
from fastgw._core import HTTPParseError, parse_request


@pytest.mark.parametrize("authority", [
    b"a.com:xyz",          # port not digits
    b"a.com:80:90",        # two ports
    b"a.com:9999999",      # port longer than 5 digits
    b":80",                # empty host
    b"[::1",               # unclosed IP-literal
    b"a]b:1",              # ']' outside an IP-literal
    b"a" * 256,            # longer than MAX_HOST_LEN (the Host field's limit)
])
def test_review_absolute_form_authority_gets_the_host_rules(authority):
    """`_absolute_form` (http1.pyx:568-594) accepts any run of _HOST_CHAR bytes as the authority,
    while the same value in a Host field is checked by `_host_value` (length <= 255, port of 1-5
    digits, brackets, non-empty host) and refused with 400. The authority then *replaces* Host
    upstream (client.pyx `_build_upstream_head`) and in X-Forwarded-Host, so absolute-form is a way
    around every Host rule in docs/http.md; its missing length check is also what lets
    `_route` overflow `hostbuf` (see test_review_crash.py). Expected: 400, as for the Host field."""
    raw = b"GET http://" + authority + b"/x HTTP/1.1\r\nHost: a.com\r\n\r\n"
    with pytest.raises(HTTPParseError) as e:
        parse_request(raw)
    assert e.value.status == 400


@pytest.mark.parametrize("authority", [b"a.com:xyz", b"a.com:80:90", b":80", b"a" * 256])
def test_review_control_host_field_refuses_the_same_values(authority):
    """Control (passes): the Host field refuses each of these."""
    with pytest.raises(HTTPParseError) as e:
        parse_request(b"GET /x HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
    assert e.value.status == 400
