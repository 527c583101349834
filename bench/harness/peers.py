"""The upstream and the peers under test: direct (no proxy), fastgw, nginx, HAProxy.

Every config is generated into a temp dir. Each proxy runs one worker; the harness counts the CPU time
and memory of the proxy's whole process tree (nginx's master and worker, fastgw and any children).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tools import log

#: The repository root (bench/harness/peers.py is two levels below it).
REPO_ROOT = Path(__file__).resolve().parent.parent.parent

#: The upstream's fixed bodies. The 26-byte one also answers every path not listed (gateway routes, POSTs).
BODY_26 = "hello from the upstream!!\n"
assert len(BODY_26) == 26
SIZES = {"/4k": 4096, "/64k": 65536}

#: Header the gateway scenario's header transform sets on the way to the upstream.
GATEWAY_SET_HEADER = ("X-Gateway", "fastgw-bench")
#: Header every gateway-scenario request carries; routes match on it where a proxy can.
GATEWAY_MATCH_HEADER = ("X-Env", "prod")

#: Gateway features, in the order the table lists them.
#: EXTENSION POINT: add "auth", "rate_limit", "metrics", "access_log" here as fastgw gains them, and teach
#: each peer's config builder below to do the same work (nginx: auth_request/limit_req/stub_status/
#: access_log; HAProxy: http-request auth/stick tables/stats/log).
ALL_FEATURES = ("route_host", "route_path", "route_header", "set_request_header")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Routes:
    """A gateway route table: route i matches host hosts[i] and path prefix prefixes[i]."""

    hosts: list[str]
    prefixes: list[str]


@dataclass
class PeerConfig:
    upstream_port: int
    routes: Routes | None = None  # None: one catch-all route
    features: frozenset[str] = frozenset()
    #: fastgw only: `policies:` on every route (the others have no equivalent and ignore it).
    policies: list[dict] = field(default_factory=list)
    #: A JSON access line per request to a file in the peer's work dir (else the access log is off).
    access_log: bool = False
    #: fastgw only: top-level config sections.
    config: dict = field(default_factory=dict)
    #: (cert PEM file, key PEM file): the proxy terminates TLS with it (the same for every proxy).
    tls: tuple[str, str] | None = None
    #: False: no session tickets and no session cache, so that every connection is a full handshake
    #: (wrk keeps a connection's session across its reconnections and would resume it).
    tls_resumption: bool = True
    #: nginx only: the same work as fastgw's policies, as http-level directives (map, geo) and
    #: directives of the catch-all location (if ... return).
    nginx_http: str = ""
    nginx_location: str = ""
    #: nginx: limit_req per client IP at this many requests/s (fastgw gets its policy in `policies`).
    ip_rate_limit: int | None = None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    port: int
    workdir: Path
    logfile: Path
    extra: dict = field(default_factory=dict)
    tls: bool = False       # the port speaks HTTPS

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        p = self.popen
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: the group is only this peer
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        # nginx's worker may outlive a killed master for a moment; the group is ours.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _spawn(
    name: str, cmd: list[str], cpus: str | None, workdir: Path, port: int, env: dict[str, str] | None = None
) -> Proc:
    logfile = workdir / f"{name}.log"
    full = (["taskset", "-c", cpus] if cpus else []) + cmd
    with open(logfile, "wb") as out:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    return Proc(name=name, popen=popen, port=port, workdir=workdir, logfile=logfile)


def _connection(port: int, tls: bool, timeout: float) -> http.client.HTTPConnection:
    if not tls:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE       # the bench's own throwaway certificate
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)


def make_certificate(workdir: Path, kind: str) -> tuple[str, str]:
    """A self-signed certificate for the TLS scenarios, `ecdsa` (P-256) or `rsa` (2048), made with the
    openssl command; every proxy serves this same one."""
    workdir.mkdir(parents=True, exist_ok=True)
    crt, key = workdir / f"{kind}.crt", workdir / f"{kind}.key"
    alg = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *alg, "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
                    "-subj", "/CN=bench.example.com", "-addext", "subjectAltName=DNS:bench.example.com"],
                   check=True, capture_output=True)
    return str(crt), str(key)


def wait_ready(proc: Proc, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Waits until the peer answers an HTTP request (any status); raises RuntimeError if it can't."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            conn = _connection(proc.port, proc.tls, 2)
            conn.request("GET", "/", headers={"Host": host})
            conn.getresponse().read()
            conn.close()
            return
        except OSError as e:
            last = e
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError(
        f"{proc.name} did not answer on port {proc.port} within {timeout:.0f}s ({last}):\n{proc.log_tail()}"
    )


def http_status(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
                tls: bool = False) -> int:
    conn = _connection(port, tls, 5)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- upstream


def start_upstream(nginx: str, cpus: str | None, workdir: Path) -> Proc:
    """nginx answering fixed responses: `/` (and any other path, any method) 26 B, /4k, /64k; and for the
    mixed-traffic setup /static/4k/*, /static/64k/*, /status/500, /status/503."""
    d = workdir / "upstream"
    (d / "www").mkdir(parents=True, exist_ok=True)
    for path, size in SIZES.items():
        (d / "www" / path.strip("/")).write_bytes((b"0123456789abcdef" * (size // 16 + 1))[:size])
    port = free_port()
    conf = d / "nginx.conf"
    body = BODY_26.replace("\n", "\\n")
    conf.write_text(f"""
worker_processes 1;
master_process off;
daemon off;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_max_body_size 16m;
  client_body_buffer_size 256k;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }}
    location = /4k {{ default_type application/octet-stream; alias {d}/www/4k; }}
    location = /64k {{ default_type application/octet-stream; alias {d}/www/64k; }}
    # For the mixed-traffic (locust) setup: static files under any name, and upstream errors.
    location ^~ /static/4k/ {{ default_type application/octet-stream; root {d}/www; try_files /4k =404; }}
    location ^~ /static/64k/ {{ default_type application/octet-stream; root {d}/www; try_files /64k =404; }}
    location = /status/500 {{ return 500 "upstream error\n"; }}
    location = /status/503 {{ return 503 "upstream unavailable\n"; }}
  }}
}}
""")
    proc = _spawn(
        "upstream", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], cpus, d, port
    )
    wait_ready(proc)
    return proc


# -------------------------------------------------------------------------------------------- the peers


class Peer:
    name = "?"
    #: Gateway features this peer can be configured to do (see ALL_FEATURES).
    features: frozenset[str] = frozenset()
    version = ""

    def available(self) -> str | None:
        """None when the peer can run here, else the reason it is skipped."""
        return None

    def start(self, cfg: PeerConfig, cpus: str | None, workdir: Path) -> Proc:
        raise NotImplementedError


class Direct(Peer):
    """The baseline: wrk talks to the upstream itself. No proxy, so no proxy CPU or memory."""

    name = "direct"
    features = frozenset(ALL_FEATURES)  # trivially: the upstream answers every path

    def start(self, cfg: PeerConfig, cpus: str | None, workdir: Path) -> Proc:
        return None  # type: ignore[return-value]


class Nginx(Peer):
    name = "nginx"
    features = frozenset(ALL_FEATURES)

    def __init__(self, path: str | None, version: str = ""):
        self.path = path
        self.version = version

    def available(self) -> str | None:
        return None if self.path else "nginx is not installed"

    def start(self, cfg: PeerConfig, cpus: str | None, workdir: Path) -> Proc:
        d = workdir / "nginx"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        f = cfg.features
        headers = ['proxy_set_header Connection "";']
        if "set_request_header" in f:
            headers.append(f"proxy_set_header {GATEWAY_SET_HEADER[0]} {GATEWAY_SET_HEADER[1]};")
        hdr_check = ""
        if "route_header" in f:
            hname = GATEWAY_MATCH_HEADER[0].lower().replace("-", "_")
            hdr_check = f'if ($http_{hname} != "{GATEWAY_MATCH_HEADER[1]}") {{ return 404; }} '
        tls = ""
        if cfg.tls is not None:
            # Mozilla intermediate, as fastgw's default; tickets on, as fastgw's
            tls = (f"ssl_certificate {cfg.tls[0]}; ssl_certificate_key {cfg.tls[1]}; "
                   "ssl_protocols TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers off; "
                   + ("ssl_session_tickets on; " if cfg.tls_resumption else
                      "ssl_session_tickets off; ssl_session_cache off; ") +
                   "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
                   "ECDHE-RSA-CHACHA20-POLY1305;")
        ssl_flag = " ssl" if cfg.tls is not None else ""
        if cfg.routes is None:
            servers = f"""
  server {{
    listen 127.0.0.1:{port}{ssl_flag} backlog=4096;
    {tls}
    location / {{ {cfg.nginx_location}proxy_pass http://origin; }}
  }}"""
        else:
            by_host: dict[str, list[str]] = {}
            for h, p in zip(cfg.routes.hosts, cfg.routes.prefixes, strict=True):
                lst = by_host.setdefault(h if "route_host" in f else "_any", [])
                if p not in lst:
                    lst.append(p)
            blocks = [
                f"""
  server {{
    listen 127.0.0.1:{port} default_server backlog=4096;
    server_name _;
    location / {{ return 404; }}
  }}"""
            ]
            for h, prefixes in by_host.items():
                locs = "\n".join(
                    f"    location {p} {{ {hdr_check}proxy_pass http://origin; }}" for p in prefixes
                )
                name = f"server_name {h};" if h != "_any" else ""
                blocks.append(f"""
  server {{
    listen 127.0.0.1:{port};
    {name}
{locs}
  }}""")
            if "_any" in by_host:
                blocks.pop(0)  # the host-less block is the default server
                blocks[0] = blocks[0].replace(
                    f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} backlog=4096;"
                )
            servers = "".join(blocks)
        access_log = "access_log off;"
        if cfg.access_log:
            # the same kind of line as fastgw's: JSON, to a file, written in batches
            access_log = (
                "log_format json escape=json '{\"time\":\"$time_iso8601\",\"request_id\":\"$request_id\","
                "\"client_ip\":\"$remote_addr\",\"method\":\"$request_method\",\"authority\":\"$http_host\","
                "\"path\":\"$uri\",\"query\":\"$args\",\"protocol\":\"$server_protocol\",\"status\":$status,"
                "\"bytes_received\":$request_length,\"bytes_sent\":$bytes_sent,\"duration\":$request_time,"
                "\"upstream_connect\":\"$upstream_connect_time\",\"upstream_first_byte\":\"$upstream_header_time\","
                "\"target\":\"$upstream_addr\",\"user_agent\":\"$http_user_agent\"}'; "
                f"access_log {d}/access.log json buffer=64k flush=1s;"
            )
        limit_req = ""
        if cfg.ip_rate_limit:
            # 503 is limit_req's default answer; burst as large as the rate, as fastgw's default bucket
            limit_req = (f"limit_req_zone $binary_remote_addr zone=perip:10m rate={cfg.ip_rate_limit}r/s; "
                         f"limit_req zone=perip burst={cfg.ip_rate_limit} nodelay;")
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 9000; }}
http {{
  {access_log}
  {limit_req}
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_max_body_size 16m;
  server_names_hash_max_size 4096;
  server_names_hash_bucket_size 128;
  proxy_http_version 1.1;
  {" ".join(headers)}
  proxy_buffer_size 16k;
  proxy_buffers 8 16k;
  {cfg.nginx_http}
  upstream origin {{
    server 127.0.0.1:{cfg.upstream_port};
    keepalive 1024;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
  }}{servers}
}}
""")
        cmd = [self.path, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        proc = _spawn("nginx", cmd, cpus, d, port)
        proc.tls = cfg.tls is not None
        return proc


class HAProxy(Peer):
    name = "haproxy"
    features = frozenset(ALL_FEATURES)

    def __init__(self, path: str | None, version: str = ""):
        self.path = path
        self.version = version

    def available(self) -> str | None:
        return None if self.path else "haproxy is not installed"

    def start(self, cfg: PeerConfig, cpus: str | None, workdir: Path) -> Proc:
        if cfg.tls is not None:
            raise RuntimeError("the TLS scenarios compare fastgw with nginx only")
        d = workdir / "haproxy"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        f = cfg.features
        rules = []
        if cfg.routes is None:
            default = "default_backend origin"
        else:
            default = "default_backend notfound"
            hdr = ""
            if "route_header" in f:
                hdr = f" {{ req.hdr({GATEWAY_MATCH_HEADER[0].lower()}) -m str {GATEWAY_MATCH_HEADER[1]} }}"
            for h, p in zip(cfg.routes.hosts, cfg.routes.prefixes, strict=True):
                host = f" {{ req.hdr(host) -i {h} }}" if "route_host" in f else ""
                rules.append(f"  use_backend origin if{host} {{ path_beg {p} }}{hdr}")
        set_hdr = ""
        if "set_request_header" in f:
            set_hdr = f"  http-request set-header {GATEWAY_SET_HEADER[0]} {GATEWAY_SET_HEADER[1]}\n"
        conf = d / "haproxy.cfg"
        conf.write_text(f"""
global
  nbthread 1
  maxconn 9000

defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always

frontend fe
  bind 127.0.0.1:{port}
{chr(10).join(rules)}
  {default}

backend origin
{set_hdr}  server s1 127.0.0.1:{cfg.upstream_port}

backend notfound
  http-request return status 404
""")
        return _spawn("haproxy", [self.path, "-db", "-f", str(conf)], cpus, d, port)


def fastgw_command() -> list[str]:
    exe = Path(sys.executable).parent / "fastgw"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("fastgw")
    return [found] if found else [sys.executable, "-m", "fastgw"]


class Fastgw(Peer):
    name = "fastgw"
    # What fastgw does for sure. The others are probed at start-up by running them (see probe()): the
    # config schema may accept a feature before the proxy implements it.
    features = frozenset({"route_host", "route_path"})

    def __init__(self) -> None:
        self.cmd = fastgw_command()
        self._why_not: str | None = None
        self._extra_run_args: list[str] = []
        self.version = ""

    def available(self) -> str | None:
        try:
            r = subprocess.run(
                self.cmd + ["run", "--help"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError as e:
            return f"fastgw cannot be started: {e}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            return f"`fastgw run` is not available yet ({tail[0]})"
        if "--workers" in r.stdout:
            self._extra_run_args = ["--workers", "1"]
        v = subprocess.run(self.cmd + ["version"], capture_output=True, text=True, timeout=30, check=False)
        self.version = (
            (v.stdout.strip().splitlines() or ["?"])[0].removeprefix("fastgw ") if v.returncode == 0 else "?"
        )
        return None

    def config_yaml(self, cfg: PeerConfig, port: int, workdir: Path | None = None) -> str:
        f = cfg.features
        # The plain path is plain: the access log (on by default) only where the scenario asks.
        access_log = "{enabled: false}"
        if cfg.access_log:
            access_log = f"{{path: '{(workdir or Path('.')) / 'access.log'}', format: json}}"
        lines = [
            "# generated by bench/harness",
            f"listeners: [{{address: 127.0.0.1:{port}{self._tls_yaml(cfg)}}}]",
            f"access_log: {access_log}",
            "upstreams:",
            f"  origin: {{targets: [{{address: 127.0.0.1:{cfg.upstream_port}}}], "
            "keepalive: {max_idle: 1024, idle_timeout: 60s}}",
            "routes:",
        ]
        # Policies (config schema `policies:` on a route), written as JSON: flow-style YAML.
        pol = f", policies: {json.dumps(cfg.policies)}" if cfg.policies else ""
        if cfg.routes is None:
            lines.append(f"  - {{name: all, match: {{path: {{prefix: /}}}}, upstream: origin{pol}}}")
        else:
            for i, (h, p) in enumerate(zip(cfg.routes.hosts, cfg.routes.prefixes, strict=True)):
                match = [f"path: {{prefix: '{p}'}}"]
                if "route_host" in f:
                    match.insert(0, f"hosts: ['{h}']")
                # The header match (config schema `match.headers`).
                if "route_header" in f:
                    match.append(
                        f"headers: [{{name: {GATEWAY_MATCH_HEADER[0].lower()}, value: {GATEWAY_MATCH_HEADER[1]}}}]"
                    )
                extra = ""
                # The header transform: route filters (config schema `filters.request_headers`).
                if "set_request_header" in f:
                    extra = (
                        f", filters: {{request_headers: {{set: {{{GATEWAY_SET_HEADER[0].lower()}: "
                        f"{GATEWAY_SET_HEADER[1]}}}}}}}"
                    )
                lines.append(
                    f"  - {{name: r{i}, match: {{{', '.join(match)}}}, upstream: origin{extra}{pol}}}"
                )
        lines += [f"{key}: {json.dumps(value)}" for key, value in cfg.config.items()]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _tls_yaml(cfg: PeerConfig) -> str:
        if cfg.tls is None:
            return ""
        tickets = "" if cfg.tls_resumption else ", session_tickets: false"
        return f", tls: {{certificates: [{{cert: '{cfg.tls[0]}', key: '{cfg.tls[1]}'}}]{tickets}}}"

    def probe(self, workdir: Path) -> frozenset[str]:
        """Adds to `features` the optional ones fastgw really does, not only accepts: for each, it runs
        fastgw with a one-route config using it in front of a small echo server and checks the effect
        (the header match refuses a request without the header; the transform reaches the upstream)."""
        found = set(self.features)
        d = workdir / "fastgw-probe"
        d.mkdir(parents=True, exist_ok=True)
        echo = _EchoServer()
        try:
            for feat in ("route_header", "set_request_header"):
                routes = Routes(hosts=["probe.example.com"], prefixes=["/probe/"])
                cfg = PeerConfig(echo.port, routes, frozenset({"route_host", "route_path", feat}))
                try:
                    proc = self.start(cfg, None, d / feat)
                except OSError:
                    continue
                try:
                    wait_ready(proc, timeout=10)
                    base = {"Host": "probe.example.com"}
                    with_hdr = dict(base, **{GATEWAY_MATCH_HEADER[0]: GATEWAY_MATCH_HEADER[1]})
                    if feat == "route_header":
                        ok = (
                            _get(proc.port, "/probe/x", with_hdr)[0] == 200
                            and _get(proc.port, "/probe/x", base)[0] == 404
                        )
                    else:
                        status, body = _get(proc.port, "/probe/x", with_hdr)
                        want = f"{GATEWAY_SET_HEADER[0].lower()}: {GATEWAY_SET_HEADER[1]}".encode()
                        ok = status == 200 and want in body.lower()
                    if ok:
                        found.add(feat)
                except (RuntimeError, OSError):
                    pass
                finally:
                    proc.stop()
        finally:
            echo.close()
        self.features = frozenset(found)
        return self.features

    def start(self, cfg: PeerConfig, cpus: str | None, workdir: Path) -> Proc:
        d = workdir / "fastgw"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = d / "fastgw.yaml"
        conf.write_text(self.config_yaml(cfg, port, d))
        # The repository root on PYTHONPATH: plugins under bench/ (the plugin scenario's) import from there.
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONPATH=pythonpath)
        cmd = self.cmd + ["run", "-c", str(conf)] + self._extra_run_args
        proc = _spawn("fastgw", cmd, cpus, d, port, env)
        proc.tls = cfg.tls is not None
        return proc


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class _EchoServer:
    """An upstream for feature probes: answers 200 with the request's header lines as the body."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        if p is not None:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - best effort at teardown
                log(f"stopping {p.name}: {e}")
