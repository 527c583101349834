"""HTTP/2 upstreams (`protocol: h2c`) reached from HTTP/1.1 clients, over real sockets: a python-hyper
`h2` server that counts its connections and open streams (tests/support/h2server.py), Debian's
`nghttpd`, and trailers relayed to a chunked HTTP/1.1 client that asked for them."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import socket
import subprocess

import httpx
import pytest
from support.client import wait_until
from support.gateway import simple_config
from support.h2raw import RawH2
from support.h2server import H2Upstream
from support.logs import wait_event
from support.upstreams import ClosedPort

HOST = {"Host": "test.local"}


def h2c_config(*addresses, **upstream) -> dict:
    cfg = simple_config(addresses[0])
    cfg["upstreams"]["echo"] = {"targets": [{"address": a} for a in addresses], "protocol": "h2c", **upstream}
    return cfg


def raw_exchange(gw, request: bytes, timeout: float = 10.0) -> bytes:
    """One request on a fresh connection with `Connection: close`; everything the gateway sent."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            piece = s.recv(65536)
            if not piece:
                return out
            out += piece


def parallel(n: int, fn):
    with cf.ThreadPoolExecutor(n) as ex:
        return list(ex.map(fn, range(n)))


def test_requests_become_http2_with_pseudo_headers_and_no_connection_fields(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.get("/hello?x=1", headers={**HOST, "Connection": "keep-alive, X-Hop", "X-Hop": "1",
                                             "Keep-Alive": "timeout=5", "TE": "trailers"})
            assert r.status_code == 200, r.text
            seen = r.json()
            names = [k for k, _ in seen["headers"]]
            assert seen["method"] == "GET" and seen["path"] == "/hello?x=1"
            assert seen["authority"] == "test.local" and seen["scheme"] == "http"
            for gone in ("connection", "keep-alive", "x-hop", "host", "transfer-encoding"):
                assert gone not in names, seen["headers"]
            assert ["te", "trailers"] in seen["headers"]
            assert names.count("te") == 1
            assert all(k == k.lower() for k in names)
            # a body with a length, and a chunked one (DATA frames carry the decoded bytes)
            r = c.post("/p", content=b"a" * 100_000, headers=HOST)
            assert r.json()["body_length"] == 100_000
            r = c.post("/p", content=iter([b"x" * 5000, b"y" * 7000]), headers=HOST)
            assert r.json()["body_length"] == 12_000
            # a response larger than the stream window, relayed whole
            r = c.get("/big?n=1000000", headers=HOST)
            assert r.status_code == 200 and len(r.content) == 1_000_000
        assert up.connections == 1


def held_parallel(gw, up, n: int) -> list[int]:
    """n client requests held by the upstream at once (each on its own client connection), then
    released: their statuses."""
    with cf.ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(lambda i: httpx.get(f"{gw.url}/hold?i={i}", headers=HOST, timeout=30).status_code, i)
                   for i in range(n)]
        wait_until(lambda: len(up.held) == n, what=f"{n} requests held by the upstream")
        up.release()
        return [f.result() for f in futures]


def test_many_concurrent_client_requests_share_one_upstream_connection(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        assert held_parallel(gw, up, 30) == [200] * 30
        assert up.connections == 1, up.connections
        assert up.max_open_streams == 30            # all of them in flight at once on it


def test_the_configured_stream_cap_opens_more_connections(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address, http2={"max_concurrent_streams": 4}), workers=1)
        assert held_parallel(gw, up, 12) == [200] * 12
        assert up.max_open_streams == 4
        assert up.connections == 3, up.connections


def test_the_upstreams_settings_limit_is_kept(gateway_factory):
    with H2Upstream(max_concurrent_streams=2) as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        httpx.get(f"{gw.url}/warm", headers=HOST, timeout=10)       # its SETTINGS are known now
        assert held_parallel(gw, up, 8) == [200] * 8
        assert up.max_open_streams == 2
        assert up.connections == 4, up.connections


def test_an_upstream_restart_is_followed_by_a_new_connection(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address, health={"passive": {"enabled": False}}), workers=1)
        assert httpx.get(f"{gw.url}/a", headers=HOST, timeout=10).status_code == 200
        up.stop_listening()
        r = httpx.get(f"{gw.url}/b", headers=HOST, timeout=10)
        assert r.status_code == 502, r.text
        up.listen_again()
        r = wait_until(lambda: (x := httpx.get(f"{gw.url}/c", headers=HOST, timeout=10)).status_code == 200 and x,
                       what="served again after the restart")
        assert r.json()["path"] == "/c"
        assert up.connections == 2


def test_a_target_answering_5xx_is_ejected(gateway_factory):
    with H2Upstream(name="good") as good, H2Upstream(name="bad", status_all=503) as bad:
        cfg = h2c_config(good.address, bad.address,
                         health={"passive": {"consecutive_5xx": 3, "max_ejected_percent": 50}})
        gw = gateway_factory(cfg, workers=1)
        with httpx.Client(base_url=gw.url, headers=HOST, timeout=10) as c:
            first = [c.get(f"/r{i}").status_code for i in range(10)]
            wait_event(gw, "target_ejected", target=bad.address)
            after = [c.get(f"/s{i}").status_code for i in range(20)]
        assert first.count(503) == 3, first
        assert after == [200] * 20


def test_trailers_reach_a_chunked_http1_client_that_asked_for_them(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        out = raw_exchange(gw, b"GET /trailers HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n"
                               b"Connection: close\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert body.endswith(b"0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\nx-trailer: yes\r\n\r\n"), body
        # without TE: trailers the client gets the body and a plain last chunk
        out = raw_exchange(gw, b"GET /trailers HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        assert out.endswith(b"\r\n0\r\n\r\n") and b"grpc-status" not in out


@pytest.mark.skipif(shutil.which("nghttpd") is None, reason="nghttpd (Debian nghttp2-server) not installed")
def test_nghttpd_as_the_upstream_with_its_trailers(gateway_factory, tmp_path):
    (tmp_path / "index.html").write_bytes(b"served by nghttpd\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", str(tmp_path),
                             "--trailer=x-checksum: abc", "--no-content-length", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
                   what="nghttpd listening")
        gw = gateway_factory(h2c_config(f"127.0.0.1:{port}"), workers=1)
        with httpx.Client(base_url=gw.url, headers=HOST, timeout=10) as c:
            rs = [c.get("/index.html") for _ in range(5)]
        assert [r.status_code for r in rs] == [200] * 5
        assert rs[0].content == b"served by nghttpd\n"
        out = raw_exchange(gw, b"GET /index.html HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n"
                               b"Connection: close\r\n\r\n")
        assert b"x-checksum: abc\r\n" in out.partition(b"\r\n\r\n")[2]
        assert httpx.get(f"{gw.url}/missing", headers=HOST, timeout=10).status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


# ---- gRPC answers the gateway makes --------------------------------------------------------------

GRPC_HEAD = (b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/grpc\r\n"
             b"TE: trailers\r\nContent-Length: 5\r\nConnection: close\r\n")


def grpc_answer(gw, extra: bytes = b"") -> dict:
    out = raw_exchange(gw, GRPC_HEAD + extra + b"\r\n\x00\x00\x00\x00\x00")
    head = out.partition(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    fields[":status"] = lines[0].split()[1]
    return fields


def test_grpc_calls_get_grpc_status_codes_from_the_gateway(gateway_factory):
    down = ClosedPort()
    with H2Upstream() as up:
        cfg = simple_config(up.address, routes=[
            {"name": "ok", "match": {"path": {"prefix": "/pkg.Svc"}}, "upstream": "echo"},
            {"name": "down", "match": {"path": {"prefix": "/down.Svc"}}, "upstream": "down"},
            {"name": "slow", "match": {"path": {"prefix": "/slow"}}, "upstream": "slow"},
            {"name": "limited", "match": {"path": {"prefix": "/limited.Svc"}}, "upstream": "echo",
             "policies": [{"type": "rate_limit", "limits": [{"rate": 1, "period": "1h", "burst": 1,
                                                             "key": ["route"]}]}]},
        ])
        cfg["upstreams"] = {
            "echo": {"targets": [{"address": up.address}], "protocol": "h2c"},
            "down": {"targets": [{"address": down.address}], "protocol": "h2c"},
            "slow": {"targets": [{"address": up.address}], "protocol": "h2c",
                     "timeouts": {"response_header": "300ms"}},
        }
        gw = gateway_factory(cfg, workers=1)
        a = grpc_answer(gw)
        assert a[":status"] == "200"
        assert "grpc-status" not in a                  # proxied: the echo's own answer
        assert json.loads(httpx.post(f"{gw.url}/pkg.Svc/Call", headers={**HOST, "content-type": "application/grpc"},
                                     content=b"\x00" * 5).text)["path"] == "/pkg.Svc/Call"

        def status_of(path: bytes, extra: bytes = b"") -> dict:
            out = raw_exchange(gw, GRPC_HEAD.replace(b"/pkg.Svc/Call", path) + extra + b"\r\n\x00\x00\x00\x00\x00")
            head = out.partition(b"\r\n\r\n")[0].decode()
            fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head.split("\r\n")[1:])}
            fields[":status"] = head.split()[1]
            return fields

        nr = status_of(b"/nothing.Here/X")
        assert (nr[":status"], nr["grpc-status"], nr["content-type"]) == ("200", "12", "application/grpc")
        assert nr["grpc-message"] == "no route"
        assert status_of(b"/down.Svc/X")["grpc-status"] == "14"
        assert status_of(b"/slow?ms=3000")["grpc-status"] == "4"
        assert status_of(b"/limited.Svc/X")[":status"] == "200"
        limited = status_of(b"/limited.Svc/X")
        assert limited["grpc-status"] == "8"
        # the same refusals to a plain HTTP client stay HTTP
        assert httpx.get(f"{gw.url}/nothing", headers=HOST, timeout=10).status_code == 404
    down.close()


def test_an_unauthenticated_grpc_call_gets_16(gateway_factory):
    with H2Upstream() as up:
        cfg = h2c_config(up.address)
        cfg["routes"][0]["policies"] = [{"type": "api_key"}]
        gw = gateway_factory(cfg, workers=1)
        a = grpc_answer(gw)
        assert (a[":status"], a["grpc-status"]) == ("200", "16"), a


def test_grpc_timeout_is_the_upstream_response_deadline(gateway_factory):
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)     # response_header: 60 s
        head = GRPC_HEAD.replace(b"/pkg.Svc/Call", b"/slow?ms=5000")
        out = raw_exchange(gw, head + b"grpc-timeout: 200m\r\n\r\n\x00\x00\x00\x00\x00")
        assert b"Grpc-Status: 4\r\n" in out, out
        out = raw_exchange(gw, GRPC_HEAD.replace(b"/pkg.Svc/Call", b"/slow?ms=100")
                           + b"grpc-timeout: 10S\r\n\r\n\x00\x00\x00\x00\x00")
        assert out.startswith(b"HTTP/1.1 200") and b"Grpc-Status" not in out


def test_an_empty_response_is_followed_by_nothing_on_a_kept_alive_connection(gateway_factory):
    """Content-Length: 0 (an HTTP/1.1 upstream's, or the one a HEADERS frame with END_STREAM gets)
    ends the response: a stray last chunk after it would be read as the next response's start."""
    from support.upstreams import RawUpstream, respond_raw
    with RawUpstream(respond_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", then_close=False)) as h1, \
            H2Upstream() as h2:
        cfg = simple_config(h1.address, routes=[
            {"name": "h1", "match": {"path": {"prefix": "/h1"}}, "upstream": "h1"},
            {"name": "h2", "match": {"path": {"prefix": "/"}}, "upstream": "h2"},
        ])
        cfg["upstreams"] = {"h1": {"targets": [{"address": h1.address}]},
                            "h2": {"targets": [{"address": h2.address}], "protocol": "h2c"}}
        gw = gateway_factory(cfg, workers=1)
        out = raw_exchange(gw, b"GET /h1 HTTP/1.1\r\nHost: test.local\r\n\r\n"
                               b"GET /status/204 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        first, _, second = out.partition(b"\r\n\r\n")
        assert b"Content-Length: 0" in first
        assert second.startswith(b"HTTP/1.1 204 "), second


# ---- h2 over the upstream's TLS ------------------------------------------------------------------

def _tls_server_context(tmp_path, alpn: list[str]):
    import ssl

    from support.certs import CA
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("h2", ["h2.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    ctx.set_alpn_protocols(alpn)
    return ca, ctx


def test_h2_over_tls_negotiates_h2_and_multiplexes(gateway_factory, tmp_path):
    ca, ctx = _tls_server_context(tmp_path, ["h2"])
    with H2Upstream(ssl_context=ctx) as up:
        cfg = h2c_config(up.address, protocol="h2", tls={"ca_file": str(ca.cert_path), "server_name": "h2.test"})
        gw = gateway_factory(cfg, workers=1)
        assert held_parallel(gw, up, 10) == [200] * 10
        r = httpx.get(f"{gw.url}/x", headers=HOST, timeout=10)
        assert r.json()["scheme"] == "https"
        assert up.connections == 1 and up.alpn == ["h2"]


def test_an_upstream_without_h2_in_alpn_is_a_502(gateway_factory, tmp_path):
    ca, ctx = _tls_server_context(tmp_path, ["http/1.1"])
    with H2Upstream(ssl_context=ctx) as up:
        cfg = h2c_config(up.address, protocol="h2", tls={"ca_file": str(ca.cert_path), "server_name": "h2.test"},
                         health={"passive": {"enabled": False}})
        gw = gateway_factory(cfg, workers=1)
        r = httpx.get(f"{gw.url}/x", headers=HOST, timeout=10)
        assert r.status_code == 502 and "did not negotiate h2" in r.text


def test_a_client_that_stops_reading_stalls_its_stream_not_the_connection(gateway_factory):
    """The stream's window is given back only as the client takes the bytes: an HTTP/1.1 client that
    stops reading holds the upstream's sending to about its stream window plus socket buffers, while
    other exchanges on the same connection go on."""
    import threading
    total = 32 << 20
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.connect((host, int(port)))
            s.sendall(f"GET /big?n={total} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
            first = b""
            while b"\r\n\r\n" not in first:
                first += s.recv(4096)
            assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % total in first
            got = len(first) - first.index(b"\r\n\r\n") - 4
            threading.Event().wait(2.0)        # the client reads nothing more
            assert up.data_sent < total // 2, up.data_sent
            r = httpx.get(f"{gw.url}/other", headers=HOST, timeout=10)
            assert r.status_code == 200 and r.json()["path"] == "/other"
            assert up.connections == 1
            s.settimeout(30)
            while got < total:
                piece = s.recv(1 << 20)
                assert piece
                got += len(piece)
        assert got == total


def test_request_trailers_from_an_http2_client_reach_the_upstream(gateway_factory):
    """A trailing HEADERS frame from an HTTP/2 client (a body without content-length) goes on as a
    trailing HEADERS frame to the HTTP/2 upstream."""
    with H2Upstream() as up:
        gw = gateway_factory(h2c_config(up.address), workers=1)
        with RawH2(gw.port) as h2:
            sid = h2.request("POST", "/trailers-in", authority="test.local", end_stream=False)
            h2.send_data(sid, b"hello")
            h2.send(*h2.header_frames(sid, [("x-checksum", "abc"), ("x-count", "5")], end_stream=True))
            st = h2.response(sid)
            assert st.status == 200 and st.reset is None
        req = up.requests[-1]
        assert req["body"] == b"hello"
        assert [(bytes(k), bytes(v)) for k, v in req["trailers"]] == [(b"x-checksum", b"abc"), (b"x-count", b"5")]
