"""TLS termination and origination over real sockets (issue 13 §1, §2, §5): certificates by SNI
(RSA, ECDSA, wildcard, default), protocol versions and ALPN, client certificates (required and
optional, headers upstream, the plugin view), reloads that swap certificates without dropping
connections and refuse a bad one, X-Forwarded-Proto, redirects to https, HSTS, 421, session
resumption across workers, upstream TLS with verification, SNI and client certificates, pools
kept apart, and the handshake timeout with a thousand silent connections."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.certs import CA
from support.client import wait_until
from support.upstreams import TlsEchoServer

TESTS_DIR = str(Path(__file__).resolve().parents[1])
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d / "ca", "Test CA")
    other_ca = CA(d / "other", "Other CA")
    return {
        "dir": d,
        "ca": ca,
        "other_ca": other_ca,
        "ecdsa": ca.issue("ecdsa", ["ecdsa.example.com"], kind="ecdsa"),
        "rsa": ca.issue("rsa", ["rsa.example.com"], kind="rsa"),
        "wild": ca.issue("wild", ["*.wild.example.com"], kind="ecdsa"),
        "default": ca.issue("default", ["default.example.com", "localhost"], kind="ecdsa"),
        "a": ca.issue("a", ["a.example.com"]),
        "b": ca.issue("b", ["b.example.com"]),
        "alice": ca.issue("alice", [], client=True, cn="alice", org="Example",
                          uris=["spiffe://example.com/alice"], emails=["alice@example.com"]),
        "mallory": other_ca.issue("mallory", [], client=True, cn="mallory"),
        "upstream": ca.issue("upstream", ["upstream.internal"], kind="ecdsa", uris=["spiffe://example.com/up"]),
        "gw-client": ca.issue("gw-client", [], client=True, cn="fastgw"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cert(c, **extra) -> dict:
    return {"cert": str(c.cert_path), "key": str(c.key_path), **extra}


def tls_listener(certs: list[dict], **tls) -> dict:
    return {"address": "127.0.0.1:0", "tls": {"certificates": certs, **tls}}


def config(listeners: list[dict], echo, routes=None, **top) -> dict:
    return {"listeners": listeners, "upstreams": {"echo": {"targets": [{"address": echo.address}]}},
            "routes": routes or [{"name": "all", "upstream": "echo"}], **top}


def client_ctx(pki, *, client=None, ca=None, version=None, alpn=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str((ca or pki["ca"]).cert_path))
    if client is not None:
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, sni: str | None, **kw) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=sni, **kw)


def peer_names(sock: ssl.SSLSocket) -> list[str]:
    return [v for k, v in sock.getpeercert().get("subjectAltName", ()) if k == "DNS"]


def get(sock: ssl.SSLSocket, path: str = "/", host: str = "x", headers: str = "") -> tuple[int, dict, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), hdrs, body[:n]


def echoed_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


# -- termination -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sni_gw(pki, echo, module_gateway_factory):
    certs = [cert(pki["default"], default=True), cert(pki["ecdsa"]), cert(pki["rsa"]), cert(pki["wild"])]
    return module_gateway_factory(config([tls_listener(certs)], echo), workers=2)


@pytest.mark.parametrize(("sni", "served"), [
    ("ecdsa.example.com", "ecdsa.example.com"),
    ("rsa.example.com", "rsa.example.com"),
    ("x.wild.example.com", "*.wild.example.com"),
    ("unknown.example.org", "default.example.com"),
    (None, "default.example.com"),
])
def test_certificate_chosen_by_sni(pki, sni_gw, sni, served):
    ctx = client_ctx(pki)
    ctx.check_hostname = sni is not None and served != "default.example.com"
    with handshake(sni_gw.port, ctx, sni) as s:
        assert served in peer_names(s)
        status, _, body = get(s, host=sni or "x")
        assert status == 200
        assert echoed_headers(body)["x-forwarded-proto"] == "https"


def test_rsa_and_ecdsa_keys_are_served(pki, sni_gw):
    with handshake(sni_gw.port, client_ctx(pki, version=ssl.TLSVersion.TLSv1_2), "rsa.example.com") as s:
        assert "RSA" in s.cipher()[0]
    with handshake(sni_gw.port, client_ctx(pki, version=ssl.TLSVersion.TLSv1_2), "ecdsa.example.com") as s:
        assert "ECDSA" in s.cipher()[0]


def test_tls12_and_tls13_accepted_older_refused(pki, sni_gw):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with handshake(sni_gw.port, client_ctx(pki, version=version), "ecdsa.example.com") as s:
            assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{sni_gw.port}", "-tls1_1",
                          "-servername", "ecdsa.example.com"], input=b"", capture_output=True, timeout=30)
    assert out.returncode != 0 and b"Cipher is (NONE)" in out.stdout + out.stderr or b"alert" in out.stderr


def test_alpn_h2_then_http11(pki, sni_gw):
    # the default ALPN list is [h2, http/1.1] (HTTP/2: tests/e2e/test_http2_downstream.py)
    with handshake(sni_gw.port, client_ctx(pki, alpn=["h2", "http/1.1"]), "ecdsa.example.com") as s:
        assert s.selected_alpn_protocol() == "h2"
    with handshake(sni_gw.port, client_ctx(pki, alpn=["http/1.1"]), "ecdsa.example.com") as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_curl_and_httpx(pki, sni_gw):
    url = f"https://ecdsa.example.com:{sni_gw.port}/curl"
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki["ca"].cert_path), "--resolve",
                          f"ecdsa.example.com:{sni_gw.port}:127.0.0.1", url], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["target"] == "/curl"
    with httpx.Client(verify=client_ctx(pki)) as c:
        r = c.get(f"https://localhost:{sni_gw.port}/httpx")
        assert r.status_code == 200 and r.json()["target"] == "/httpx"


def test_session_resumption_across_workers(pki, sni_gw):
    """Tickets are encrypted with keys every worker shares (contexts made before the fork): every
    reconnection resumes, wherever SO_REUSEPORT sends it."""
    ctx = client_ctx(pki, version=ssl.TLSVersion.TLSv1_2)
    with handshake(sni_gw.port, ctx, "ecdsa.example.com") as s:
        get(s, host="ecdsa.example.com")
        session = s.session
    assert session is not None and session.has_ticket
    reused = 0
    for _ in range(12):
        with handshake(sni_gw.port, ctx, "ecdsa.example.com", session=session) as s:
            reused += s.session_reused
            get(s, host="ecdsa.example.com")
    assert reused == 12


def test_ticket_keys_rotate_on_every_worker(pki, echo, gateway_factory):
    """With a rotation every 2 s: a ticket from before a rotation makes a full handshake after it, and
    a fresh ticket resumes on both workers (all of them got the same new keys)."""
    gw = gateway_factory(config([tls_listener([cert(pki["default"])], session_ticket_rotation="2s")], echo),
                         workers=2)
    ctx = client_ctx(pki, version=ssl.TLSVersion.TLSv1_2)

    def rotations() -> int:
        return gw.stderr.count("session ticket keys rotated")

    def fresh_session():
        with handshake(gw.port, ctx, "localhost") as s:
            get(s, host="localhost")
            return s.session

    wait_until(lambda: rotations() >= 1, what="a first rotation")
    for _attempt in range(10):
        before = rotations()
        old = fresh_session()
        wait_until(lambda b=before: rotations() > b, what="the next rotation")
        between = rotations()
        with handshake(gw.port, ctx, "localhost", session=old) as s:
            old_reused = s.session_reused
        session = fresh_session()
        reused = 0
        for _ in range(8):
            with handshake(gw.port, ctx, "localhost", session=session) as s:
                reused += s.session_reused
        if rotations() != between:
            continue            # a rotation fell inside the checks: try again
        assert not old_reused
        assert reused == 8
        assert '"workers":2,"workers_missed":0' in gw.stderr
        return
    pytest.fail("no quiet window between rotations")


# -- 421, redirects, HSTS --------------------------------------------------------------------------


def test_misdirected_request_421(pki, echo, gateway_factory):
    listeners = [
        {"name": "a", "address": "127.0.0.1:0", "hostname": "a.example.com", "tls": {"certificates": [cert(pki["a"])]}},
    ]
    gw = gateway_factory(config(listeners, echo, routes=[{"name": "all", "upstream": "echo"}]))
    port = gw.port
    both = [{**listeners[0], "address": f"127.0.0.1:{port}"},
            {"name": "b", "address": f"127.0.0.1:{port}", "hostname": "b.example.com",
             "tls": {"certificates": [cert(pki["b"])]}}]
    gw.stop()
    gw = gateway_factory(config(both, echo))
    with handshake(gw.port, client_ctx(pki), "a.example.com") as s:
        assert "a.example.com" in peer_names(s)
        assert get(s, host="a.example.com")[0] == 200
        status, _, body = get(s, host="b.example.com")
        assert status == 421, body
        assert json.loads(body)["request_id"]
    with handshake(gw.port, client_ctx(pki), "b.example.com") as s:
        assert "b.example.com" in peer_names(s)
        assert get(s, host="b.example.com:443")[0] == 200


def test_redirect_to_https_and_hsts(pki, echo, gateway_factory):
    listeners = [{"name": "plain", "address": "127.0.0.1:0"},
                 {"name": "secure", **tls_listener([cert(pki["default"])]), "address": f"127.0.0.1:{free_port()}"}]
    routes = [
        {"name": "to-https", "listeners": ["plain"], "filters": {"redirect": {"scheme": "https", "status": 301}}},
        {"name": "app", "listeners": ["secure"], "upstream": "echo",
         "filters": {"response_headers": {"set": {"Strict-Transport-Security": "max-age=63072000"}}}},
        {"name": "same-scheme", "listeners": ["secure"], "match": {"path": {"prefix": "/again"}},
         "filters": {"redirect": {"hostname": "localhost"}}},
    ]
    gw = gateway_factory(config(listeners, echo, routes=routes))
    plain, secure = gw.ports
    r = httpx.get(f"http://127.0.0.1:{plain}/x?y=1", headers={"Host": "localhost"})
    assert r.status_code == 301 and r.headers["location"] == "https://localhost/x?y=1"
    with httpx.Client(verify=client_ctx(pki)) as c:
        r = c.get(f"https://localhost:{secure}/app")
        assert r.headers["strict-transport-security"] == "max-age=63072000"
        r = c.get(f"https://localhost:{secure}/again", follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == f"https://localhost:{secure}/again"


# -- client certificates ---------------------------------------------------------------------------


def _mtls_config(pki, echo, mode: str) -> dict:
    headers = {"subject": "X-Client-Subject", "san": "X-Client-San", "fingerprint": "X-Client-Fingerprint"}
    listener = tls_listener([cert(pki["default"])], client_certificate={
        "mode": mode, "ca_file": str(pki["ca"].cert_path), "headers": headers})
    routes = [{"name": "all", "upstream": "echo",
               "policies": [{"type": "plugin", "module": "support.tls_plugins:CertConsumer"}]}]
    return config([listener], echo, routes=routes)


@pytest.fixture(scope="module")
def mtls_required(pki, echo, module_gateway_factory):
    return module_gateway_factory(_mtls_config(pki, echo, "required"), env={"PYTHONPATH": TESTS_DIR})


@pytest.fixture(scope="module")
def mtls_optional(pki, echo, module_gateway_factory):
    return module_gateway_factory(_mtls_config(pki, echo, "optional"), env={"PYTHONPATH": TESTS_DIR})


SPOOF = "X-Client-Subject: CN=admin\r\nX-Client-Fingerprint: 00\r\nX-Client-San: DNS:evil\r\n"


def test_mtls_required_forwards_the_verified_certificate(pki, mtls_required):
    with handshake(mtls_required.port, client_ctx(pki, client=pki["alice"]), "localhost") as s:
        status, _, body = get(s, host="localhost", headers=SPOOF)
        assert status == 200
        h = echoed_headers(body)
        assert h["x-client-subject"] == "CN=alice,O=Example"
        assert h["x-client-fingerprint"] == pki["alice"].fingerprint
        assert h["x-client-san"] == "URI:spiffe://example.com/alice,email:alice@example.com"
        raw = json.loads(body)["headers"]
        assert sum(1 for k, _ in raw if k.lower() == "x-client-subject") == 1
        status, _, body = get(s, "/whoami", host="localhost")
        assert status == 200
        view = json.loads(body)
        assert view["subject"] == "CN=alice,O=Example" and view["fingerprint"] == pki["alice"].fingerprint
        assert ["URI", "spiffe://example.com/alice"] in view["sans"]


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """The handshake fails, or (TLS 1.3, where the client's side completes first) the connection
    ends with an alert or EOF before any response."""
    try:
        with handshake(port, ctx, "localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return s.recv(65536) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize("who", [None, "mallory"])
def test_mtls_required_refuses_no_or_untrusted_certificate(pki, mtls_required, who):
    assert refused(mtls_required.port, client_ctx(pki, client=pki[who] if who else None))


def test_mtls_optional(pki, mtls_optional):
    with handshake(mtls_optional.port, client_ctx(pki), "localhost") as s:
        status, _, body = get(s, host="localhost", headers=SPOOF)
        assert status == 200
        h = echoed_headers(body)
        assert "x-client-subject" not in h and "x-client-fingerprint" not in h and "x-client-san" not in h
        assert get(s, "/whoami", host="localhost")[0] == 403
    with handshake(mtls_optional.port, client_ctx(pki, client=pki["alice"]), "localhost") as s:
        assert echoed_headers(get(s, host="localhost")[2])["x-client-subject"] == "CN=alice,O=Example"
    assert refused(mtls_optional.port, client_ctx(pki, client=pki["mallory"]))


# -- reloads and config errors ---------------------------------------------------------------------


def test_reload_swaps_certificates_keeps_connections_and_refuses_a_bad_one(pki, echo, gateway_factory, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    crt, key = live / "tls.crt", live / "tls.key"
    crt.write_bytes(pki["a"].cert_path.read_bytes())
    key.write_bytes(pki["a"].key_path.read_bytes())
    cfg = config([tls_listener([{"cert": str(crt), "key": str(key), "names": ["a.example.com", "b.example.com"]}])],
                 echo)
    gw = gateway_factory(cfg, workers=2)
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    old = handshake(gw.port, ctx, "a.example.com")
    assert "a.example.com" in peer_names(old)
    assert get(old, host="a")[0] == 200

    crt.write_bytes(pki["b"].cert_path.read_bytes())
    key.write_bytes(pki["b"].key_path.read_bytes())
    n = gw.stderr_line_count()
    gw.reload(cfg)
    wait_until(lambda: gw.stderr_since(n).count("configuration reloaded") >= 2, what="both workers reloaded")
    for _ in range(4):
        with handshake(gw.port, ctx, "a.example.com") as s:
            assert "b.example.com" in peer_names(s)
    assert get(old, host="a")[0] == 200          # the connection from before the reload goes on

    key.write_bytes(pki["a"].key_path.read_bytes())     # a key that does not match its certificate
    n = gw.stderr_line_count()
    gw.reload(cfg)
    wait_until(lambda: "reload refused" in gw.stderr_since(n), what="the reload refused")
    assert "$.listeners[0].tls.certificates[0].cert" in gw.stderr_since(n)
    assert "the key does not match the certificate" in gw.stderr_since(n)
    with handshake(gw.port, ctx, "a.example.com") as s:
        assert "b.example.com" in peer_names(s)
        assert get(s, host="a")[0] == 200
    assert get(old, host="a")[0] == 200
    old.close()


def test_admin_api_config_swaps_certificates_and_refuses_a_bad_key(pki, echo, gateway_factory):
    from support.admin import admin_client, with_admin

    def cfg(c, k):
        return with_admin(config([tls_listener([{"cert": str(c.cert_path), "key": str(k.key_path),
                                                 "names": ["a.example.com"]}])], echo))

    gw = gateway_factory(cfg(pki["a"], pki["a"]), workers=2)
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    with admin_client(gw) as admin:
        r = admin.post("/config", json=cfg(pki["b"], pki["b"]))
        assert r.status_code == 200 and r.json()["ok"], r.text
        for _ in range(4):
            with handshake(gw.port, ctx, "a.example.com") as s:
                assert "b.example.com" in peer_names(s)
        r = admin.post("/config", json=cfg(pki["a"], pki["b"]))
        assert r.status_code == 400, r.text
        assert "$.listeners[0].tls.certificates[0].cert" in r.text and "does not match" in r.text
    with handshake(gw.port, ctx, "a.example.com") as s:
        assert "b.example.com" in peer_names(s)


def _check(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess:
    import yaml

    p = tmp_path / "check.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(p)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_check_reports_bad_certificates_with_paths(pki, echo, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    cfg = config([
        tls_listener([{"cert": str(pki["a"].cert_path), "key": str(pki["b"].key_path)}]),
        {"address": "127.0.0.1:0", "tls": {"certificates": [{"cert": str(garbage), "key": str(pki["b"].key_path)}],
                                           "client_certificate": {"mode": "required"}}},
        {"address": "127.0.0.1:0", "tls": {"certificates": [{"cert": str(tmp_path / "missing.pem"),
                                                             "key": str(pki["b"].key_path)}]}},
    ], echo)
    out = _check(tmp_path, cfg)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "$.listeners[0].tls.certificates[0].cert" in text and "does not match" in text
    assert "$.listeners[1].tls.certificates[0].cert" in text
    assert "$.listeners[1].tls.client_certificate" in text
    assert "$.listeners[2].tls.certificates[0].cert" in text and "no such file" in text


def test_check_listeners_sharing_an_address_must_agree(pki, echo, tmp_path):
    cfg = config([
        {"address": "127.0.0.1:8443", "hostname": "a.example.com", "tls": {"certificates": [cert(pki["a"])]}},
        {"address": "127.0.0.1:8443", "hostname": "b.example.com",
         "tls": {"certificates": [cert(pki["b"])], "min_version": "1.3"}},
        {"address": "127.0.0.1:8443", "hostname": "c.example.com"},
    ], echo)
    text = _check(tmp_path, cfg).stdout + _check(tmp_path, cfg).stderr
    assert "$.listeners[1].tls" in text and "share one TLS endpoint" in text
    assert "$.listeners[2]" in text and "must all have 'tls'" in text


def test_inline_pem_and_redacted_key(pki, echo, gateway_factory):
    listener = tls_listener([{"cert_pem": pki["default"].cert_pem, "key_pem": pki["default"].key_pem}])
    gw = gateway_factory(config([listener], echo, admin={"address": "127.0.0.1:0"}))
    with httpx.Client(verify=client_ctx(pki)) as c:
        assert c.get(f"https://localhost:{gw.port}/").status_code == 200
    import re

    admin = re.search(r"admin API listening on (http://[^\s\"]+)", gw.stderr).group(1)
    shown = httpx.get(admin + "/config").json()
    got = shown["config"] if "config" in shown else shown
    key = got["listeners"][0]["tls"]["certificates"][0]["key_pem"]
    assert key == "<redacted>"
    assert "PRIVATE KEY" not in json.dumps(shown)


# -- upstream TLS ----------------------------------------------------------------------------------


def _upstream_server(pki, name: str, require_client: bool = False) -> TlsEchoServer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki["upstream"].cert_path), str(pki["upstream"].key_path))
    ctx.set_alpn_protocols(["http/1.1"])
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki["ca"].cert_path))
    return TlsEchoServer(name, ctx)


def test_upstream_tls_verified_with_sni_client_cert_and_separate_pools(pki, gateway_factory):
    up = _upstream_server(pki, "tls-up", require_client=True)
    try:
        base = {"server_name": "upstream.internal", "ca_file": str(pki["ca"].cert_path),
                "cert": str(pki["gw-client"].cert_path), "key": str(pki["gw-client"].key_path),
                "alpn": ["http/1.1"]}
        upstreams = {
            "good": {"targets": [{"address": up.address}], "tls": base},
            "good-other-client": {"targets": [{"address": up.address}],
                                  "tls": {**base, "cert": str(pki["alice"].cert_path),
                                          "key": str(pki["alice"].key_path)}},
            "wrong-ca": {"targets": [{"address": up.address}],
                         "tls": {**base, "ca_file": str(pki["other_ca"].cert_path)}},
            "wrong-name": {"targets": [{"address": up.address}], "tls": {**base, "server_name": "other.internal"}},
            "plain": {"targets": [{"address": up.address}]},
            "san-uri": {"targets": [{"address": up.address}],
                        "tls": {**base, "server_name": "sni-only.internal",
                                "subject_alt_names": [{"hostname": "nope.internal"}, {"uri": "spiffe://example.com/up"}]}},
            "san-dns": {"targets": [{"address": up.address}],
                        "tls": {**base, "server_name": "sni-only.internal",
                                "subject_alt_names": [{"hostname": "upstream.internal"}]}},
            "san-none": {"targets": [{"address": up.address}],
                         "tls": {**base, "subject_alt_names": [{"uri": "spiffe://example.com/other"}]}},
        }
        routes = [{"name": n, "match": {"path": {"prefix": f"/{n}"}}, "upstream": n} for n in upstreams]
        gw = gateway_factory({"listeners": [{"address": "127.0.0.1:0"}], "upstreams": upstreams, "routes": routes})
        with httpx.Client() as c:
            for _ in range(3):
                r = c.get(gw.url_for("/good"))
                assert r.status_code == 200 and r.json()["name"] == "tls-up"
            assert c.get(gw.url_for("/good-other-client")).status_code == 200
            r = c.get(gw.url_for("/wrong-ca"))
            assert r.status_code == 502 and "TLS" in r.json()["error"]
            assert c.get(gw.url_for("/wrong-name")).status_code == 502
            assert c.get(gw.url_for("/plain")).status_code == 502
            before = len(up.handshakes)
            assert c.get(gw.url_for("/san-uri")).status_code == 200
            assert c.get(gw.url_for("/san-dns")).status_code == 200
            r = c.get(gw.url_for("/san-none"))
            assert r.status_code == 502 and "TLS" in r.json()["error"]
        # the plain-HTTP attempt's failed handshake may be recorded after `before` was read
        san_checked = [h for h in up.handshakes[before:] if "error" not in h]
        assert [h.get("sni") for h in san_checked[:2]] == ["sni-only.internal"] * 2, up.handshakes[before:]
        ok = [h for h in up.handshakes[:before] if "error" not in h]
        assert {h["sni"] for h in ok} == {"upstream.internal"}
        assert {h["alpn"] for h in ok} == {"http/1.1"}
        from cryptography import x509

        clients = [x509.load_der_x509_certificate(h["client_cert"]).subject.rfc4514_string() for h in ok]
        # keep-alive: three requests on one pooled connection; the other client certificate got its own
        assert sorted(clients) == ["CN=alice,O=Example", "CN=fastgw"], clients
    finally:
        up.close()


# -- handshake timeout and silent connections ------------------------------------------------------


def test_handshake_timeout_and_a_thousand_silent_connections(pki, echo, gateway_factory):
    gw = gateway_factory(config([tls_listener([cert(pki["default"])], handshake_timeout="1s")], echo))
    silent = []
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            silent.append(s)
        half = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a ClientHello that never ends
        silent.append(half)
        plain = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")           # not TLS at all
        garbage = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        garbage.sendall(b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff" * 3)   # a malformed handshake record
        with httpx.Client(verify=client_ctx(pki)) as c:
            for _ in range(5):
                assert c.get(f"https://localhost:{gw.port}/served").status_code == 200

        def closed(s: socket.socket) -> bool:
            s.settimeout(10)
            try:
                return s.recv(1) == b""
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False

        assert closed(half)
        assert closed(plain) and closed(garbage)
        plain.close()
        garbage.close()
        assert all(closed(s) for s in silent[:50])
    finally:
        for s in silent:
            s.close()


# -- bodies over TLS -------------------------------------------------------------------------------


def test_large_bodies_both_ways_over_tls_on_both_sides(pki, echo, gateway_factory):
    """16 MiB down and 8 MiB up through a TLS listener, to a plain and a TLS upstream: every byte
    arrives (large pieces leave the core as memoryviews, which the TLS transport must not keep)."""
    import hashlib

    from support.wire import pattern_sha256

    up = _upstream_server(pki, "tls-big")
    try:
        upstreams = {"echo": {"targets": [{"address": echo.address}]},
                     "tls": {"targets": [{"address": up.address}],
                             "tls": {"server_name": "upstream.internal", "ca_file": str(pki["ca"].cert_path)}}}
        routes = [{"name": "tls", "match": {"path": {"prefix": "/tls"}}, "upstream": "tls"},
                  {"name": "all", "upstream": "echo"}]
        gw = gateway_factory({"listeners": [tls_listener([cert(pki["default"])])], "upstreams": upstreams,
                              "routes": routes})
        body = bytes(range(256)) * (8 * 4096)
        with httpx.Client(verify=client_ctx(pki), timeout=60) as c:
            for path in ("/plain", "/tls"):
                r = c.get(f"https://localhost:{gw.port}{path}", headers={"X-Echo-Body-Bytes": str(16 << 20)})
                assert r.status_code == 200 and len(r.content) == 16 << 20
                assert hashlib.sha256(r.content).hexdigest() == pattern_sha256(16 << 20)
                r = c.post(f"https://localhost:{gw.port}{path}", content=body)
                assert r.status_code == 200
                assert r.json()["body_len"] == len(body)
                assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        up.close()
