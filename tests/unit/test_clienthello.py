"""The tls-passthrough ClientHello parser (clienthello.pyx): real ClientHellos from Python's TLS client,
fragmented into many records and split across reads, hand-made edge cases, and a fuzz run of
mutations, truncations and random bytes that must never crash, hang or accept garbage."""

from __future__ import annotations

import os
import random
import struct

import pytest
from fastgw._core import client_hello_sni
from support.streams import client_hello, refragment


def test_a_real_client_hello_gives_its_sni_lowercased():
    assert client_hello_sni(client_hello("API.Example.com")) == ("ok", "api.example.com")


def test_no_sni_is_ok_without_a_name():
    assert client_hello_sni(client_hello(None)) == ("ok", None)


def test_every_prefix_asks_for_more():
    hello = client_hello("a.example.com")
    for n in range(len(hello)):
        assert client_hello_sni(hello[:n])[0] == "more", n


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 300, 16384])
def test_a_client_hello_fragmented_over_records(size):
    hello = refragment(client_hello("frag.example.com"), size)
    assert client_hello_sni(hello) == ("ok", "frag.example.com")
    for n in range(0, len(hello), max(1, len(hello) // 50)):
        assert client_hello_sni(hello[:n])[0] == "more"


def test_bytes_after_the_client_hello_are_not_looked_at():
    hello = client_hello("a.example.com")
    assert client_hello_sni(hello + b"\x17\x03\x03\x00\x05hello" + os.urandom(100)) == ("ok", "a.example.com")


def _hello_with_extensions(extensions: bytes, version=b"\x03\x03") -> bytes:
    body = version + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack(">H", len(extensions)) + extensions
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def _sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack(">H", len(n)) + n for n in names)
    data = struct.pack(">H", len(entries)) + entries
    return b"\x00\x00" + struct.pack(">H", len(data)) + data


@pytest.mark.parametrize("ext,why", [
    (_sni_ext(b"a.example.com") * 2, "repeated server_name"),
    (_sni_ext(b"a.example.com", b"b.example.com"), "more than one host name"),
    (_sni_ext(b"a.example.com", name_type=1), "unknown server name type"),
    (_sni_ext(b"bad name"), "not a host name"),
    (_sni_ext(b"trailing.dot."), "not a host name"),
    (_sni_ext(b"a..b"), "not a host name"),
    (_sni_ext(b""), "not a host name"),
    (_sni_ext(b"x" * 64 + b".com"), "not a host name"),
    (_sni_ext(), "empty server_name list"),
    (b"\x00\x00\x00\x01\x00", "bad server_name list"),
    (b"\x00\x10\x00\x09\x00", "extension past the end"),
])
def test_malformed_server_names_are_refused(ext, why):
    status, reason = client_hello_sni(_hello_with_extensions(ext))
    assert status == "bad" and why in reason


def test_handmade_hello_is_accepted():
    assert client_hello_sni(_hello_with_extensions(_sni_ext(b"Hand.Made"))) == ("ok", "hand.made")


@pytest.mark.parametrize("data,why", [
    (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake record"),
    (b"\x17\x03\x03\x00\x05hello", "not a TLS handshake record"),
    (b"\x16\x02\x00\x00\x05hello", "bad record version"),
    (b"\x16\x03\x01\x00\x00", "bad record length"),
    (b"\x16\x03\x01\x40\x01" + b"\x01" * 10, "bad record length"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (b"\x16\x03\x01\x00\x04\x01\x01\x00\x01", "ClientHello too large"),
    (b"\x80\x2e\x01\x03\x01", "not a TLS handshake record"),
])
def test_not_a_client_hello(data, why):
    status, reason = client_hello_sni(data)
    assert status == "bad" and why in reason


def test_a_hello_over_the_bound_is_refused_before_it_is_whole():
    body = b"\x03\x03" + b"\x00" * 100
    hs = b"\x01" + (70000).to_bytes(3, "big") + body
    assert client_hello_sni(b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs)[0] == "bad"
    assert client_hello_sni(_hello_with_extensions(_sni_ext(b"a.b")), 40)[0] == "bad"


def test_fuzzed_client_hellos_never_crash():
    rng = random.Random(13)
    seeds = [client_hello("a.example.com"), client_hello(None), refragment(client_hello("f.example.com"), 5),
             _hello_with_extensions(_sni_ext(b"a.b"))]
    outcomes = {"ok": 0, "bad": 0, "more": 0}
    for _ in range(30000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = os.urandom(rng.randint(1, 8))
            elif op == 2 and data:
                del data[pos:pos + rng.randint(1, 16)]
            else:
                data = data[:pos]
        status, value = client_hello_sni(bytes(data))
        outcomes[status] += 1
        if status == "ok" and value is not None:
            assert value == value.lower() and 0 < len(value) <= 255
            assert all(c.isalnum() or c in "-._" for c in value)
    for _ in range(5000):
        client_hello_sni(os.urandom(rng.randint(0, 600)))
    assert outcomes["bad"] > 1000 and outcomes["more"] > 100
