"""HTTP/2 from clients (issue 14 section 2; docs/http2.md) with peers written by others: curl
(--http2-prior-knowledge on cleartext, --http2 over TLS with ALPN), nghttp, h2load, httpx with h2, and
the raw frames of tests/support/h2raw.py where a test needs to hold a window shut. Each stream is an
Exchange: routing by :authority, policies, the HTTP/1.1 upstream's view, the access log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hyperframe.frame import WindowUpdateFrame
from support.certs import CA
from support.client import RawConn, wait_until
from support.gateway import simple_config
from support.h2raw import RawH2
from support.logs import lines_for
from support.upstreams import RawUpstream
from support.wire import pattern_sha256

TESTS_DIR = str(Path(__file__).resolve().parents[1])


def route(name: str, prefix: str, **extra) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo", **extra}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2pki")
    ca = CA(d / "ca", "H2 Test CA")
    return {"ca": ca, "site": ca.issue("site", ["h2.example.com"], kind="ecdsa")}


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    cfg = simple_config(echo.address, timeouts={"connect": "2s", "response_header": "30s", "body_idle": "30s"})
    cfg["routes"] = [
        route("teapot", "/teapot", policies=[{"type": "respond", "status": 418, "body": "short and stout"}]),
        route("limited", "/limited", policies=[{"type": "rate_limit", "name": "few",
                                                "limits": [{"rate": 3, "period": "1h", "key": ["route"]}]}]),
        {"name": "other-host", "match": {"hosts": ["other.example"], "path": {"prefix": "/"}},
         "upstream": "echo", "filters": {"response_headers": {"add": {"X-Route": "other"}}}},
        route("all", "/"),
    ]
    return module_gateway_factory(cfg, workers=1)


@pytest.fixture(scope="module")
def tls_gw(echo, pki, module_gateway_factory):
    site = pki["site"]
    cfg = simple_config(echo.address)
    cfg["listeners"] = [{"address": "127.0.0.1:0", "tls": {"certificates": [
        {"cert": str(site.cert_path), "key": str(site.key_path)}]}}]
    return module_gateway_factory(cfg, workers=1)


def curl(*args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def echo_json(body: bytes) -> dict:
    return json.loads(body[body.index(b"{"):])


# ---- cleartext: prior knowledge and HTTP/1.1 on one port ------------------------------------------

def test_curl_prior_knowledge_reaches_an_http11_upstream(gw, echo):
    snap = echo.snapshot()
    out = curl("--http2-prior-knowledge", "-i", "-H", "X-Request-Id: h2-curl-1", "-H", "Cookie: a=1",
               "-H", "Cookie: b=2", gw.url + "/items/7?q=1")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    assert b"x-request-id: h2-curl-1" in head and b"connection:" not in head.lower()
    j = echo_json(body)
    assert (j["method"], j["target"], j["version"]) == ("GET", "/items/7?q=1", "HTTP/1.1")
    hdrs = {k.lower(): v for k, v in j["headers"]}
    assert hdrs["host"] == f"127.0.0.1:{gw.port}"          # :authority is the Host
    assert hdrs["cookie"] == "a=1; b=2"                     # crumbs joined for HTTP/1.1
    assert hdrs["x-forwarded-proto"] == "http" and hdrs["x-request-id"] == "h2-curl-1"
    [req] = echo.requests_since(snap)
    assert req.request_id == "h2-curl-1"


def test_http11_still_served_on_the_same_port(gw):
    out = curl("--http1.1", "-i", gw.url + "/plain")
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:200]
    with RawConn(gw.port) as c:
        r = c.request("GET", "/raw", [("Host", "x")])
        assert r.status == 200 and echo_json(r.body)["target"] == "/raw"
    # a head that merely starts like the preface is HTTP/1.1's to refuse
    with RawConn(gw.port) as c:
        c.send(b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response("PRI").status in (400, 405, 501)


def test_upgrade_h2c_is_served_as_http11(gw):
    # curl --http2 on a cleartext URL asks for `Upgrade: h2c`, which fastgw does not do (docs/http2.md)
    out = curl("--http2", "-i", gw.url + "/upgrade")
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:200]
    hdrs = {k.lower() for k, _ in echo_json(out.stdout)["headers"]}
    assert "upgrade" not in hdrs and "http2-settings" not in hdrs


def test_authority_routes(gw):
    out = curl("--http2-prior-knowledge", "-i", "--connect-to", f"other.example:80:127.0.0.1:{gw.port}",
               "http://other.example/x")
    assert out.returncode == 0, out.stderr
    assert b"x-route: other" in out.stdout.lower()


def test_nghttp_several_requests_on_one_connection(gw):
    out = subprocess.run(["nghttp", "-nv", gw.url + "/a", gw.url + "/b", gw.url + "/teapot"],
                         capture_output=True, timeout=30, text=True)
    assert out.returncode == 0, out.stderr
    statuses = re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", out.stdout)
    assert sorted(s for _, s in statuses) == ["200", "200", "418"]
    assert len({sid for sid, _ in statuses}) == 3
    assert out.stdout.count("send HEADERS frame") == 3


def test_policies_apply_to_streams(gw):
    out = curl("--http2-prior-knowledge", "-i", gw.url + "/teapot")
    assert out.stdout.startswith(b"HTTP/2 418") and out.stdout.endswith(b"short and stout")
    with RawH2(gw.port) as c:
        sids = [c.request("GET", "/limited/x") for _ in range(6)]
        statuses = [c.response(s).status for s in sids]
    assert statuses.count(429) >= 3 and statuses.count(200) <= 3, statuses


def test_access_log_says_http2(gw):
    out = curl("--http2-prior-knowledge", "-H", "X-Request-Id: h2-log-1", gw.url + "/logged")
    assert out.returncode == 0
    wait_until(lambda: lines_for(gw, "h2-log-1"), what="the access line")
    [line] = lines_for(gw, "h2-log-1")
    assert (line["protocol"], line["status"], line["outcome"], line["path"]) == ("HTTP/2.0", 200, "proxied", "/logged")
    assert line["bytes_sent"] > 0


def test_expect_100_continue_relayed_as_an_informational_head(gw):
    with RawH2(gw.port) as c:
        sid = c.request("POST", "/expect", headers=[("content-length", "5"), ("expect", "100-continue")],
                        end_stream=False)
        st = c.streams[sid]
        c.until(lambda: st.informational, what="the 100 Continue")
        assert st.informational[0][0] == (":status", "100") and not st.headers
        c.send_data(sid, b"hello", end_stream=True)
        st = c.response(sid)
    assert st.status == 200 and echo_json(bytes(st.data))["body_len"] == 5


def test_head_and_bodiless_statuses(gw):
    with RawH2(gw.port) as c:
        head = c.response(c.request("HEAD", "/h"))
        nocontent = c.response(c.request("GET", "/n", headers=[("x-echo-status", "204")]))
    assert head.status == 200 and head.data == b"" and int(head.header("content-length")) > 0
    assert nocontent.status == 204 and nocontent.data == b"" and nocontent.header("content-length") is None


def test_gateway_errors_on_a_stream(gw):
    out = curl("--http2-prior-knowledge", "-i", gw.url + "/%zz")
    assert out.stdout.startswith(b"HTTP/2 400"), out.stdout[:200]
    assert b'"request_id"' in out.stdout


def test_many_concurrent_streams_on_one_connection(gw, echo):
    snap = echo.snapshot()
    with RawH2(gw.port) as c:
        sids = [c.request("GET", f"/many/{i}", headers=[("x-echo-delay", "0.2")]) for i in range(90)]
        results = {sid: c.response(sid, timeout=60) for sid in sids}
    assert all(st.status == 200 for st in results.values())
    targets = sorted(echo_json(bytes(st.data))["target"] for st in results.values())
    assert targets == sorted(f"/many/{i}" for i in range(90))
    assert len(echo.requests_since(snap)) == 90


def test_httpx_h2(gw):
    async def main():
        async with httpx.AsyncClient(http1=False, http2=True, base_url=gw.url, timeout=30) as client:
            rs = await asyncio.gather(*(client.post(f"/x/{i}", content=b"p" * i) for i in range(40)))
            return rs
    rs = asyncio.run(main())
    assert {r.http_version for r in rs} == {"HTTP/2"}
    for i, r in enumerate(rs):
        j = r.json()
        assert r.status_code == 200 and j["target"] == f"/x/{i}" and j["body_len"] == i


# ---- bodies and backpressure -------------------------------------------------------------------

def test_big_upload_without_length_is_chunked_upstream(gw, echo):
    total = 24 << 20
    data = bytes(range(256)) * (total // 256)
    snap = echo.snapshot()

    def gen():
        for i in range(0, total, 1 << 20):
            yield data[i:i + (1 << 20)]
    with httpx.Client(http1=False, http2=True, timeout=120) as client:
        r = client.post(gw.url + "/upload", content=gen())
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    j = r.json()
    assert j["body_len"] == total and j["body_sha256"] == hashlib.sha256(data).hexdigest()
    [req] = echo.requests_since(snap)
    assert req.chunked


def test_upload_with_length(gw):
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", gw.url + "/len"],
                         input=b"z" * 300_000, capture_output=True, timeout=60)
    j = echo_json(out.stdout)
    assert j["body_len"] == 300_000 and j["body_sha256"] == hashlib.sha256(b"z" * 300_000).hexdigest()
    assert {k.lower(): v for k, v in j["headers"]}["content-length"] == "300000"


def test_big_download(gw):
    total = 64 << 20
    p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", f"X-Echo-Body-Bytes: {total}",
                        gw.url + "/download"], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == total and hashlib.sha256(p.stdout).hexdigest() == pattern_sha256(total)


def test_stalled_reader_holds_the_upstream(gw):
    """A client that gives no window back gets its 64 KiB; the gateway reads the upstream no further
    than its bound (its memory stays flat), then everything arrives once the client reads on."""
    total = 128 << 20
    with RawH2(gw.port, auto_window=False, timeout=60) as c:
        sid = c.request("GET", "/stall", headers=[("x-echo-body-bytes", str(total))])
        st = c.streams[sid]
        c.until(lambda: len(st.data) >= 65535, what="the first window")
        rss0 = gw.rss_bytes()
        time.sleep(2.0)
        rss1 = gw.rss_bytes()
        assert len(st.data) == 65535
        assert rss1 - rss0 < 64 << 20, (rss0, rss1)
        c.auto_window = True
        c.send(WindowUpdateFrame(0, window_increment=1 << 30), WindowUpdateFrame(sid, window_increment=1 << 30))
        c.response(sid, timeout=120)
        assert len(st.data) == total and hashlib.sha256(st.data).hexdigest() == pattern_sha256(total)


def test_upload_held_while_the_upstream_does_not_read(gw_slow_reader):
    """DATA window is given back only as the upstream takes bytes: with an upstream that reads
    nothing, the client is held to about the window plus the socket buffers, not the whole body."""
    gw, gate, got = gw_slow_reader
    total = 64 << 20
    with RawH2(gw.port, timeout=60) as c:
        sid = c.request("POST", "/up", headers=[("content-length", str(total))], end_stream=False)
        c.until(lambda: c.server_settings, what="SETTINGS")
        sent = 0
        window = 65535
        stream_window = 65535
        chunk = b"u" * 16384
        deadline = time.monotonic() + 3.0
        while sent < total and time.monotonic() < deadline:
            n = min(len(chunk), window, stream_window, total - sent)
            if n > 0:
                c.send_data(sid, chunk[:n])
                sent += n
                window -= n
                stream_window -= n
                continue
            try:
                f = c.read_frame(0.2)
            except TimeoutError:
                continue
            if f is not None and isinstance(f, WindowUpdateFrame):
                if f.stream_id == 0:
                    window += f.window_increment
                elif f.stream_id == sid:
                    stream_window += f.window_increment
        held = sent
        assert held < 24 << 20, f"the client sent {held} bytes to an upstream that read none"
        gate.set()
        while sent < total:
            n = min(len(chunk), window, stream_window, total - sent)
            if n > 0:
                c.send_data(sid, chunk[:n], end_stream=sent + n == total)
                sent += n
                window -= n
                stream_window -= n
                continue
            f = c.read_frame(30)
            assert f is not None
            if isinstance(f, WindowUpdateFrame):
                if f.stream_id == 0:
                    window += f.window_increment
                elif f.stream_id == sid:
                    stream_window += f.window_increment
        st = c.response(sid, timeout=60)
        assert st.status == 200
    wait_until(lambda: got and got[0] == total, what="the upstream reading the whole body")


@pytest.fixture
def gw_slow_reader(gateway_factory):
    gate = threading.Event()
    got: list[int] = []

    def handler(conn):
        head = conn.reader.read_head()
        length = int(head[1].get("content-length"))
        gate.wait(30)
        got.append(conn.reader.stream_exact(length, lambda piece: None))
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    up = RawUpstream(handler, "slow-reader")
    cfg = simple_config(up.address, timeouts={"connect": "2s", "response_header": "60s", "body_idle": "60s"})
    yield gateway_factory(cfg, workers=1), gate, got
    gate.set()
    up.close()


# ---- TLS: ALPN --------------------------------------------------------------------------------

def test_curl_http2_over_tls(tls_gw, pki):
    args = ["--cacert", str(pki["ca"].cert_path), "--resolve", f"h2.example.com:{tls_gw.port}:127.0.0.1", "-i"]
    url = f"https://h2.example.com:{tls_gw.port}/tls"
    out = curl("--http2", *args, url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/2 200")
    hdrs = {k.lower(): v for k, v in echo_json(out.stdout)["headers"]}
    assert hdrs["x-forwarded-proto"] == "https" and hdrs["host"] == f"h2.example.com:{tls_gw.port}"
    out = curl("--http1.1", *args, url)
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:100]


def test_httpx_h2_over_tls(tls_gw, pki):
    ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    with httpx.Client(http2=True, verify=ctx, timeout=30) as client:
        r = client.get(f"https://127.0.0.1:{tls_gw.port}/x", headers={"Host": "h2.example.com"},
                       extensions={"sni_hostname": "h2.example.com"})
    assert r.status_code == 200 and r.http_version == "HTTP/2"


# ---- h2load ------------------------------------------------------------------------------------

def test_h2load_smoke(gw):
    out = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", gw.url + "/load"],
                         capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded", out.stdout), out.stdout
    assert "status codes: 400 2xx" in out.stdout


# ---- drain -------------------------------------------------------------------------------------

def test_goaway_on_drain_lets_streams_finish(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, server={"drain_timeout": "10s"}), workers=1)
    with RawH2(gw.port, timeout=20) as c:
        sid = c.request("GET", "/slow", headers=[("x-echo-delay", "1.5")])
        time.sleep(0.3)
        gw.signal(signal.SIGTERM)
        c.until(lambda: c.goaway is not None, what="GOAWAY")
        assert c.goaway.error_code == 0 and c.goaway.last_stream_id >= sid
        st = c.response(sid)
        assert st.status == 200
        c.wait_closed()


def test_prior_knowledge_off(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, limits={"http2": {"prior_knowledge": False}}), workers=1)
    with RawConn(gw.port) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert c.response("PRI").status in (400, 505)
    out = curl("--http1.1", gw.url + "/still")
    assert out.returncode == 0 and echo_json(out.stdout)["target"] == "/still"


def test_paused_policies_on_streams(echo, gateway_factory):
    """A request policy that pauses (an async plugin hook): DATA that arrives meanwhile is held and
    reaches the upstream whole; one that never finishes gets its 504 from the policy deadline."""
    def plugin(cls: str) -> dict:
        return {"type": "plugin", "module": f"support.phase_plugins:{cls}", "config": {}}
    cfg = simple_config(echo.address)
    cfg["routes"] = [
        route("async", "/async", policies=[plugin("AsyncGo")]),
        route("forever", "/forever", policies=[{**plugin("Forever"), "timeout": "300ms"}]),
        route("all", "/"),
    ]
    gw = gateway_factory(cfg, workers=1, env={"PYTHONPATH": TESTS_DIR})
    body = bytes(range(256)) * 230          # within the first window (RawH2 sends DATA without flow control)
    with RawH2(gw.port) as c:
        up = c.request("POST", "/async/up", body=body)
        never = c.request("GET", "/forever/x")
        st = c.response(up)
        assert st.status == 200, (st.reset, c.frames[-5:], gw.stderr[-2000:])
        j = echo_json(bytes(st.data))
        assert j["body_len"] == len(body) and j["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert c.response(never).status == 504


def test_idle_timeout_goaway(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, limits={"http2": {"idle_timeout": "1s"}}), workers=1)
    with RawH2(gw.port) as c:
        assert c.response(c.request("GET", "/p")).status == 200
        c.wait_closed(10)
        assert c.goaway is not None and c.goaway.error_code == 0 and c.goaway.last_stream_id == 1


def test_ping_timeout(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, limits={"http2": {
        "ping_interval": "300ms", "ping_timeout": "600ms"}}), workers=1)
    # a client that answers PINGs is kept (idle_timeout is the keep-alive's 60 s) ...
    with RawH2(gw.port) as c:
        c.until(lambda: c.pings >= 3, timeout=10, what="three PINGs")
        assert not c.closed
        assert c.response(c.request("GET", "/p")).status == 200
    # ... one that never answers is closed once ping_timeout passes
    with RawH2(gw.port, auto_ping=False) as c:
        c.wait_closed(10)
        assert c.pings >= 1


def test_request_trailers_reach_an_http11_upstream_when_the_body_is_chunked(gw):
    """A trailing HEADERS frame: in the chunked trailer section of the HTTP/1.1 request (no
    content-length); with content-length the request is not chunked and they are dropped."""
    with RawH2(gw.port) as h2:
        sid = h2.request("POST", "/trailers-in", end_stream=False)
        h2.send_data(sid, b"hello")
        h2.send(*h2.header_frames(sid, [("x-checksum", "abc"), ("x-count", "5")], end_stream=True))
        seen = echo_json(bytes(h2.response(sid).data))
        assert [[k.lower(), v] for k, v in seen["trailers"]] == [["x-checksum", "abc"], ["x-count", "5"]]
        assert seen["body_len"] == 5
        sid = h2.request("POST", "/trailers-in", headers=[("content-length", "5")], end_stream=False)
        h2.send_data(sid, b"hello")
        h2.send(*h2.header_frames(sid, [("x-checksum", "abc")], end_stream=True))
        seen = echo_json(bytes(h2.response(sid).data))
        assert seen["trailers"] == [] and seen["body_len"] == 5
