"""The auth and IP policies' on_request on a parsed head, in process (the core's test entry points):
trusted_proxies' walk over X-Forwarded-For and Forwarded, depth mode, what goes upstream in
X-Forwarded-For; ip rules on IPv4/IPv6 text forms; api_key's stripping and consumer headers."""

from __future__ import annotations

import pytest

from fastgw import _core
from fastgw.auth.ipsets import ip_set

pytestmark = pytest.mark.skipif(not hasattr(_core, "run_request_policy"),
                                reason="core built without FASTGW_TESTING=1")

P_CONTINUE, P_ANSWERED = 0, 1


def head(*fields: str, target: str = "/") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: a.test\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


def trusted(cidrs=None, depth=0, forwarded=False):
    return _core.TrustedProxies("t", "t", ip_set(cidrs) if cidrs else None, depth, forwarded)


@pytest.mark.parametrize(("peer", "fields", "client", "xff"), [
    ("127.0.0.1", [], "127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", ["X-Forwarded-For: 203.0.113.1"], "203.0.113.1", "203.0.113.1, 127.0.0.1"),
    ("127.0.0.1", ["X-Forwarded-For: 9.9.9.9, 203.0.113.1", "X-Forwarded-For: 10.0.0.2"],
     "203.0.113.1", "203.0.113.1, 10.0.0.2, 127.0.0.1"),
    ("127.0.0.1", ["X-Forwarded-For: 10.0.0.3, 10.0.0.2"], "10.0.0.3", "10.0.0.3, 10.0.0.2, 127.0.0.1"),
    ("127.0.0.1", ["X-Forwarded-For: 2001:DB8:0:0::1"], "2001:db8::1", "2001:db8::1, 127.0.0.1"),
    ("127.0.0.1", ["X-Forwarded-For: 203.0.113.1:4711"], "203.0.113.1", "203.0.113.1, 127.0.0.1"),
    ("192.0.2.1", ["X-Forwarded-For: 203.0.113.1"], "192.0.2.1", "192.0.2.1"),           # untrusted peer
    ("127.0.0.1", ["X-Forwarded-For: unknown, 10.0.0.2"], "10.0.0.2", "10.0.0.2, 127.0.0.1"),
])
def test_trusted_walk(peer, fields, client, xff):
    r = _core.run_request_policy(trusted(["127.0.0.0/8", "10.0.0.0/8"]), head(*fields), peer.encode())
    assert r[0] == P_CONTINUE
    assert (r[3], r[4]) == (client.encode(), xff.encode())


def test_depth_counts_from_the_right_of_the_header():
    p = trusted(depth=1)
    r = _core.run_request_policy(p, head("X-Forwarded-For: 1.1.1.1, 2.2.2.2"), b"127.0.0.1")
    assert (r[3], r[4]) == (b"2.2.2.2", b"2.2.2.2, 127.0.0.1")
    r = _core.run_request_policy(trusted(depth=3), head("X-Forwarded-For: 1.1.1.1, 2.2.2.2"), b"127.0.0.1")
    assert (r[3], r[4]) == (b"127.0.0.1", b"127.0.0.1")


def test_forwarded_for_parameters():
    p = trusted(["127.0.0.1"], forwarded=True)
    r = _core.run_request_policy(p, head('Forwarded: for=_hidden;by=x, for="[2001:db8::7]:80";proto=https'),
                                 b"127.0.0.1")
    assert r[3] == b"2001:db8::7"
    r = _core.run_request_policy(p, head('Forwarded: proto=https'), b"127.0.0.1")
    assert r[3] == b"127.0.0.1"


@pytest.mark.parametrize(("addr", "inside"), [
    ("10.1.2.3", True), ("11.0.0.0", False), ("::ffff:10.0.0.1", True), ("2001:db8::1", True),
    ("2001:db9::", False), ("fe80::1%eth0", False),
])
def test_ip_rules(addr, inside):
    s = ip_set(["10.0.0.0/8", "2001:db8::/32"])
    allow = _core.IpRulePolicy("a", "a", s, True)
    deny = _core.IpRulePolicy("d", "d", s, False)
    assert _core.run_request_policy(allow, head(), addr.encode())[1] == (0 if inside else 403)
    assert _core.run_request_policy(deny, head(), addr.encode())[1] == (403 if inside else 0)


def test_api_key_strips_and_names_the_consumer():
    alice = _core.Consumer("alice", ["admin", "dev"])
    p = _core.ApiKeyAuth("k", "k", ["X-API-Key", "X-Other"], ["key"], _core.SecretDigests([(b"s3cr3t", alice)]), True)
    p.set_access(None, None, "X-Consumer-Name", "X-Consumer-Groups")
    r = _core.run_request_policy(p, head("X-Other: s3cr3t", "X-Consumer-Name: mallory"), b"127.0.0.1")
    assert (r[0], r[2]) == (P_CONTINUE, b"alice")
    assert b"x-other" not in r[7] and (b"x-consumer-name", None, True) in r[5]
    r = _core.run_request_policy(p, head(target="/p?a=1&key=s3cr3t"), b"127.0.0.1")
    assert (r[0], r[6]) == (P_CONTINUE, b"?a=1")
    r = _core.run_request_policy(p, head(target="/p?key=s3cr3"), b"127.0.0.1")
    assert (r[0], r[1]) == (P_ANSWERED, 401)


def test_groups_policy():
    p = _core.GroupsPolicy("g", "g", ["admin"], ["banned"])
    assert _core.run_request_policy(p, head(), b"127.0.0.1")[1] == 401        # no consumer at all


def test_api_key_from_a_header_is_stripped_of_whitespace_and_found():
    keys = _core.SecretDigests([(b"s3cr3t", _core.Consumer("alice"))])
    p = _core.ApiKeyAuth("k", "k", ["X-API-Key"], [], keys, True)
    for value in (b"s3cr3t", b"s3cr3t \t", b"\ts3cr3t"):
        raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: " + value + b"\r\n\r\n"
        r = _core.run_request_policy(p, raw, b"127.0.0.1")
        assert (r[0], r[2]) == (P_CONTINUE, b"alice"), value
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: s3cr3t-\r\n\r\n"
    assert _core.run_request_policy(p, raw, b"127.0.0.1")[1] == 401
