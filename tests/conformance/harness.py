"""Gateway API conformance harness: echo backends, suite manifests, a gateway process, raw HTTP/1.1.

The data (gateway-api-cases.json, extracted from kubernetes-sigs/gateway-api) lives beside the
repository in `../shared/conformance/`; its `conventions` block defines every field used here.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "conformance" / "gateway-api-cases.json"
NAMESPACE = "gateway-conformance-infra"
BACKENDS = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3")
# The misdirected-request cases ask for HTTP/2 over TLS (protocol H2). fastgw speaks HTTP/1.1 only
# (ALPN http/1.1), so they run over HTTP/1.1 on TLS: what they check, the listener chosen by SNI
# against the one the Host names (421), is the same on either protocol.


def _main_checkout(repo: Path) -> Path | None:
    """For a git worktree (`.git` is a file), the main checkout it belongs to."""
    try:
        gitdir = Path((repo / ".git").read_text().split("gitdir:", 1)[1].strip())
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    except (OSError, IndexError):
        return None
    return common.parent


def data_path() -> Path:
    """`../shared/conformance/gateway-api-cases.json` beside the repository (for a git worktree, also
    beside its main checkout); FASTGW_CONFORMANCE_DATA overrides."""
    candidates = candidate_paths()
    return next((c for c in candidates if c.is_file()), candidates[0])


def candidate_paths() -> list[Path]:
    """Where data_path() looks, in order."""
    if "FASTGW_CONFORMANCE_DATA" in os.environ:
        return [Path(os.environ["FASTGW_CONFORMANCE_DATA"])]
    main = _main_checkout(REPO)
    roots = [REPO] + ([main] if main is not None and main != REPO else [])
    return [root.parent / "shared" / "conformance" / "gateway-api-cases.json" for root in roots]


def in_ci() -> bool:
    """CI is set (to anything but empty, 0 or false): missing data fails the suite instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_data_message() -> str:
    where = " or ".join(str(p) for p in candidate_paths())
    return (f"Gateway API conformance data not found: expected {where} "
            "(../shared/conformance/gateway-api-cases.json beside the repository; FASTGW_CONFORMANCE_DATA "
            "overrides)")


def load_data() -> dict[str, Any] | None:
    path = data_path()
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_known_failures(path: Path) -> dict[str, str]:
    """`case-id  reason` per line; `#` starts a comment."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        case_id, _, reason = line.partition(" ")
        out[case_id] = reason.strip() or "known failure"
    return out


def conformance_certificate() -> tuple[str, str]:
    """(cert PEM, key PEM) of `tls-validity-checks-certificate` as the Go suite makes it: self-signed
    RSA 2048, DNS SANs `*.org` and `*.wildcard.org`, and `*` (not a valid DNS name) as a URI SAN.
    Made once per run."""
    global _CERT
    if _CERT is None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kubernetes Gateway API")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("*.org"), x509.DNSName("*.wildcard.org"), x509.UniformResourceIdentifier("*")]),
                    critical=False)
                .sign(key, hashes.SHA256()))
        _CERT = (cert.public_bytes(serialization.Encoding.PEM).decode(),
                 key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode())
    return _CERT


_CERT: tuple[str, str] | None = None


def client_tls_context() -> ssl.SSLContext:
    """Trusts the suite's self-signed certificate. Its names (`*.org`) are ones OpenSSL will not match
    as a wildcard (too few labels), and the cases check statuses, not names: no hostname check."""
    ctx = ssl.create_default_context(cadata=conformance_certificate()[0])
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def needs_tls(case: dict[str, Any]) -> bool:
    req = case["request"]
    return req.get("scheme") == "https" or req.get("protocol") is not None or req.get("sni") is not None


# -- echo backends (gateway-api echo-basic) --------------------------------------------------------


class EchoBackends:
    """One asyncio loop in a thread serving every backend, each on its own port."""

    def __init__(self, names: tuple[str, ...] = BACKENDS):
        self.names = names
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="echo-backends", daemon=True)

    def start(self) -> EchoBackends:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        for name in self.names:
            server = await asyncio.start_server(
                lambda r, w, n=name: self._serve(n, r, w), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            for s in self._servers:
                s.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @staticmethod
    async def _serve(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, proto = lines[0].split(" ", 2)
                headers: dict[str, list[str]] = {}
                host = ""
                length = 0
                chunked = close = False
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    k, v = k.strip(), v.strip()
                    lk = k.lower()
                    if lk == "host":
                        host = v
                        continue
                    if lk == "content-length":
                        length = int(v)
                    elif lk == "transfer-encoding" and "chunked" in v.lower():
                        chunked = True
                    elif lk == "connection" and "close" in v.lower():
                        close = True
                    headers.setdefault("-".join(p.capitalize() for p in k.split("-")), []).append(v)
                if chunked:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                elif length:
                    await reader.readexactly(length)
                body = json.dumps({
                    "path": target, "host": host, "method": method, "proto": proto, "headers": headers,
                    "namespace": NAMESPACE, "ingress": "", "service": "", "pod": f"{name}-5d8f9c-x2k4p",
                }).encode()
                out = [b"HTTP/1.1 200 OK", b"Content-Type: application/json",
                       b"Content-Length: " + str(len(body)).encode()]
                for spec in headers.get("X-Echo-Set-Header", []):
                    for item in spec.split(","):
                        hn, sep, hv = item.partition(":")
                        if sep and hn.strip():
                            out.append(f"{hn.strip()}: {hv.strip()}".encode("latin-1"))
                if close:
                    out.append(b"Connection: close")
                writer.write(b"\r\n".join(out) + b"\r\n\r\n" + (b"" if method == "HEAD" else body))
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()


# -- manifests -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SuitePlan:
    """What one suite runs: manifests (HTTP listeners only), the port map, skipped case ids."""

    suite: dict[str, Any]
    manifests: str
    port_map: dict[tuple[str, int], int]
    skipped_gateways: set[str] = field(default_factory=set)


def plan_suite(suite: dict[str, Any], backend_ports: dict[str, int]) -> SuitePlan:
    docs: list[dict[str, Any]] = []
    port_map: dict[tuple[str, int], int] = {}
    kept: set[str] = set()
    skipped: set[str] = set()
    secrets: set[str] = set()
    for gw in suite["gateways"]:
        listeners = []
        for li in gw["listeners"]:
            if li["protocol"] not in ("HTTP", "HTTPS"):
                continue
            out = {"name": li["name"], "port": li["port"], "protocol": li["protocol"]}
            if li["protocol"] == "HTTPS":
                refs = (li.get("tls") or {}).get("certificateRefs") or []
                out["tls"] = {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": r} for r in refs]}
                secrets.update(refs)
            if li.get("hostname"):
                out["hostname"] = li["hostname"]
            out["allowedRoutes"] = {"namespaces": {"from": "All"}}
            listeners.append(out)
            if (gw["name"], li["port"]) not in port_map:
                port_map[(gw["name"], li["port"])] = free_port()
        if not listeners:
            skipped.add(gw["name"])
            continue
        kept.add(gw["name"])
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": gw["name"], "namespace": NAMESPACE},
                     "spec": {"gatewayClassName": "fastgw", "listeners": listeners}})
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for i, route in enumerate(suite["routes"]):
        parents = []
        for p in route["parents"]:
            if p["gateway"] not in kept:
                continue
            ref: dict[str, Any] = {"name": p["gateway"], "namespace": NAMESPACE}
            for k in ("sectionName", "port"):
                if p.get(k) is not None:
                    ref[k] = p[k]
            parents.append(ref)
        if not parents:
            continue
        spec: dict[str, Any] = {"parentRefs": parents}
        if route.get("hostnames"):
            spec["hostnames"] = route["hostnames"]
        spec["rules"] = route["rules"]
        ts = (t0 + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                     "metadata": {"name": route["name"], "namespace": NAMESPACE, "creationTimestamp": ts},
                     "spec": spec})
    for name in sorted(secrets):
        crt, key = conformance_certificate()
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": name, "namespace": NAMESPACE},
                     "data": {"tls.crt": base64.b64encode(crt.encode()).decode(),
                              "tls.key": base64.b64encode(key.encode()).decode()}})
    for name in BACKENDS:
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
                     "spec": {"selector": {"app": name},
                              "ports": [{"name": "http", "port": 8080, "targetPort": 3000}]}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-abcde", "namespace": NAMESPACE,
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4",
                     "ports": [{"name": "http", "port": backend_ports[name], "protocol": "TCP"}],
                     "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})
    text = yaml.safe_dump_all(docs, sort_keys=False)
    return SuitePlan(suite, text, port_map, skipped)


# -- the gateway process ---------------------------------------------------------------------------


class GatewayProcess:
    def __init__(self, config_path: Path, addresses: set[tuple[str, int]]):
        self.config_path = config_path
        self.addresses = addresses
        self.stderr: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastgw", "run", "-c", str(self.config_path), "--workers", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        ready = threading.Event()
        listening: set[str] = set()

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.stderr.append(line)
                if any(f"listening on {scheme}://" in line for scheme in ("http", "https", "tcp", "tls")) \
                        and "admin API listening" not in line:
                    listening.add(line.rsplit("://", 1)[1])
                    if len(listening) >= len(self.addresses):
                        ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.stderr[-30:]))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- raw HTTP/1.1 client ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def _read_response(sock: socket.socket, method: str) -> Response:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response head (got {buf!r})")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    lower = {k.lower(): v for k, v in headers}
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = b""
        data = rest
        while True:
            while b"\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    raise ConnectionError("truncated chunked body")
                data += more
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(data) < size + 2:
                more = sock.recv(65536)
                if not more:
                    raise ConnectionError("truncated chunk")
                data += more
            body += data[:size]
            data = data[size + 2:]
            if size == 0:
                return Response(status, headers, body)
    if "content-length" in lower:
        n = int(lower["content-length"])
        while len(rest) < n:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("truncated body")
            rest += more
        return Response(status, headers, rest[:n])
    while True:
        more = sock.recv(65536)
        if not more:
            return Response(status, headers, rest)
        rest += more


def send(port: int, method: str, target: str, host: str, headers: list[tuple[str, str]],
         timeout: float = 5.0, sni: str | None = None, tls: bool = False) -> Response:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: Go-http-client/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    last: Exception | None = None
    for _attempt in range(3):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
                sock = client_tls_context().wrap_socket(raw, server_hostname=sni) if tls else raw
                sock.sendall(data)
                return _read_response(sock, method)
        except (ConnectionError, TimeoutError, OSError) as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"request failed: {last!r}")


# -- one case --------------------------------------------------------------------------------------


def _path_matches(match: dict[str, Any], path: str) -> int:
    """Specificity (>0) of a rule match against a request path, counting only its path; 0 = no."""
    p = match.get("path") or {}
    value = p.get("value", "/")
    path = path.split("?", 1)[0]
    if p.get("type") == "Exact":
        return 100000 if path == value else 0
    if p.get("type", "PathPrefix") != "PathPrefix":
        return 0
    v = value.rstrip("/")
    if path == v or path.startswith(v + "/") or v == "":
        return len(v) + 1
    return 0


def _redirect_filter(suite: dict[str, Any], case: dict[str, Any]) -> dict[str, Any] | None:
    """The RequestRedirect filter that should answer this case (by path, on the case's gateway)."""
    best, best_score = None, 0
    for route in suite["routes"]:
        if not any(p["gateway"] == case["gateway"] for p in route["parents"]):
            continue
        for rule in route["rules"]:
            redirects = [f["requestRedirect"] for f in rule.get("filters", []) if f["type"] == "RequestRedirect"]
            for ref in rule.get("backendRefs") or []:
                redirects += [f["requestRedirect"] for f in ref.get("filters", []) if f["type"] == "RequestRedirect"]
            if not redirects:
                continue
            for m in rule.get("matches") or [{}]:
                score = _path_matches(m, case["request"]["path"])
                if score > best_score:
                    best, best_score = redirects[0], score
    return best


def _joined(values: list[str]) -> str:
    return ",".join(values)


def _body_header(body: dict[str, Any], name: str) -> list[str] | None:
    found = None
    for k, v in body.get("headers", {}).items():
        if k.lower() == name.lower():
            found = (found or []) + list(v)
    return found


class CaseRunner:
    def __init__(self, plan: SuitePlan):
        self.plan = plan
        self.suite = plan.suite

    def port_of(self, case: dict[str, Any], port: int) -> int:
        return self.plan.port_map[(case["gateway"], port)]

    def map_host(self, case: dict[str, Any], host: str) -> str:
        """A Host with a listener port of the case's gateway gets the remapped port."""
        name, sep, port = host.rpartition(":")
        if sep and port.isdigit() and (case["gateway"], int(port)) in self.plan.port_map:
            return f"{name}:{self.port_of(case, int(port))}"
        return host

    def request(self, case: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> tuple[Response, str]:
        req = case["request"]
        port = self.port_of(case, req["port"])
        host = self.map_host(case, req["host"]) if req.get("host") else f"127.0.0.1:{port}"
        headers = list((req.get("headers") or {}).items())
        echo = ",".join(f"{k}:{v}" for k, v in (req.get("backend_set_response_headers") or {}).items())
        headers.append(("X-Echo-Set-Header", echo))
        headers += extra or []
        return send(port, req.get("method") or "GET", req["path"], host, headers,
                    sni=req.get("sni"), tls=needs_tls(case)), host

    def check(self, case: dict[str, Any]) -> None:
        kind = case.get("kind")
        if kind == "weighted_distribution":
            return self.check_distribution(case)
        if kind == "repeated_invariant":
            return self.check_invariant(case)
        resp, host = self.request(case)
        self.check_response(case, resp, host)

    def check_response(self, case: dict[str, Any], resp: Response, host: str) -> dict[str, Any] | None:
        exp = case["expect"]
        allowed = exp.get("status_any_of") or [exp["status"]]
        body_text = resp.body[:300].decode(errors="replace")
        assert resp.status in allowed, f"status {resp.status}, expected {allowed}; body: {body_text}"
        if "redirect" in exp:
            self.check_redirect(case, resp)
            return None
        if not 200 <= resp.status < 300:
            return None
        try:
            body = resp.json()
        except ValueError:
            raise AssertionError(f"not an echo response: {body_text}") from None
        if exp.get("backend") is not None:
            assert body["pod"].startswith(exp["backend"]), f"answered by {body['pod']}, expected {exp['backend']}"
        if "path_seen_by_backend" in exp:
            assert body["path"] == exp["path_seen_by_backend"], f"backend saw path {body['path']!r}"
        if "method_seen_by_backend" in exp:
            assert body["method"] == exp["method_seen_by_backend"], f"backend saw method {body['method']!r}"
        if exp.get("host_seen_by_backend") is not None:
            want = self.map_host(case, exp["host_seen_by_backend"])
            assert body["host"] == want, f"backend saw Host {body['host']!r}, expected {want!r}"
        for name, want in (exp.get("request_headers") or {}).items():
            got = _body_header(body, name)
            assert got is not None, f"request header {name} missing at the backend; it saw {body['headers']}"
            assert _joined(got) == want, f"request header {name}: backend saw {got}, expected {want!r}"
        for name in exp.get("absent_request_headers") or []:
            assert _body_header(body, name) is None, f"request header {name} should not reach the backend"
        for name, want in (exp.get("response_headers") or {}).items():
            got = resp.header_values(name)
            assert got, f"response header {name} missing; got {resp.headers}"
            assert _joined(got) == want, f"response header {name}: {got}, expected {want!r}"
        for name in exp.get("absent_response_headers") or []:
            assert not resp.header_values(name), f"response header {name} should be absent"
        return body

    def check_redirect(self, case: dict[str, Any], resp: Response) -> None:
        exp = case["expect"]["redirect"]
        location = resp.header_values("Location")
        assert len(location) == 1, f"expected one Location header, got {location}"
        url = urlsplit(location[0])
        assert url.scheme == exp["scheme"], f"Location {location[0]!r}: scheme, expected {exp['scheme']!r}"
        if exp.get("hostname") is not None:
            assert url.hostname == exp["hostname"], f"Location {location[0]!r}: host, expected {exp['hostname']!r}"
        assert url.path == exp["path"], f"Location {location[0]!r}: path, expected {exp['path']!r}"
        port = str(url.port) if url.port is not None else None
        allowed = exp.get("port_any_of") or [exp.get("port")]
        f = _redirect_filter(self.suite, case)
        if f is not None and f.get("scheme") is None and f.get("port") is None:
            # The port comes from the listener, which runs on a remapped port.
            allowed = [str(self.port_of(case, case["request"]["port"]))]
        assert port in allowed, f"Location {location[0]!r}: port {port}, expected one of {allowed}"

    def _distribution_run(self, case: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
        """One run of `total_requests` requests, `concurrency` at a time: (count per backend, failures)."""
        exp = case["expect"]
        rnd = case["request"].get("random_header")
        counts: dict[str, int] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            for _ in range(n):
                extra = []
                if rnd and random.random() < rnd["probability"]:
                    extra.append((rnd["name"], str(random.randint(0, 9999))))
                try:
                    resp, host = self.request(case, extra)
                    body = self.check_response(case, resp, host)
                    assert body is not None
                except AssertionError as e:
                    with lock:
                        failures.append(str(e))
                    continue
                name = next((b for b in exp["weights"] if body["pod"].startswith(b)), body["pod"])
                with lock:
                    counts[name] = counts.get(name, 0) + 1

        total, conc = case["total_requests"], case.get("concurrency", 1)
        threads = [threading.Thread(target=worker, args=(total // conc + (i < total % conc),))
                   for i in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return counts, failures

    def check_distribution(self, case: dict[str, Any]) -> None:
        exp = case["expect"]
        errors: list[str] = []
        for _attempt in range(case.get("max_attempts", 1)):
            counts, failures = self._distribution_run(case)
            if failures:
                errors.append(f"{len(failures)} bad responses, first: {failures[0]}")
                continue
            seen = sum(counts.values())
            bad = [f"{b}: {counts.get(b, 0) / seen:.3f} (expected {want})"
                   for b, want in exp["distribution"].items()
                   if abs(counts.get(b, 0) / seen - want) > exp["tolerance_abs"]]
            if exp.get("zero_weight_backends_receive_none"):
                bad += [f"{b} has weight 0 but got {counts[b]}" for b, w in exp["weights"].items()
                        if w == 0 and counts.get(b)]
            if not bad:
                return
            errors.append("; ".join(bad) + f" (counts {counts})")
        raise AssertionError("distribution never matched: " + " | ".join(errors[-3:]))

    def check_invariant(self, case: dict[str, Any]) -> None:
        for i in range(case["repeat"]):
            resp, host = self.request(case)
            body = self.check_response(case, resp, host)
            assert body is not None
            values = _body_header(body, "Backend") or []
            assert len(values) == 1, f"request {i}: Backend header values {values}"
            pod = body["pod"]
            assert pod.startswith(values[0] + "-"), f"request {i}: Backend={values[0]!r} but {pod} answered"
