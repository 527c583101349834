"""CPU instructions per HTTPS keep-alive request in the fastgw worker, counted by callgrind (the
`https` bench scenario's work, deterministic where wall and CPU time on a shared machine are not).

A real `fastgw run --workers 1` runs under `valgrind --tool=callgrind` (which follows the fork into
the worker) with a TLS listener (a self-signed ECDSA P-256 certificate, the bench's settings) in
front of a plain keep-alive upstream in this process (a thread answering the bench's 26-byte nginx
response). One TLS 1.3 client connection (Python's ssl, OpenSSL's default suites, as wrk's) does N
requests, then the gateway stops; the worker's Ir is read from its callgrind file. Two runs, N = LOW
and N = HIGH: instructions/request = (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW), so start-up, the
handshake and the drain cancel out. The client and the upstream are outside valgrind.

    .venv/bin/python bench/https_instructions.py             # instructions/request: N (and the cipher)
    .venv/bin/python bench/https_instructions.py --top 30    # and the functions that cost the most
    .venv/bin/python bench/https_instructions.py --plain     # the same over plain HTTP, for the ratio
    .venv/bin/python bench/https_instructions.py --nginx     # nginx (one process) in fastgw's place
    .venv/bin/python bench/https_instructions.py --handshakes [--rsa]   # a full handshake per request

bench/README.md (HTTPS) has the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from instructions import REQUEST, RESPONSE, per_function  # noqa: E402

LOW, HIGH = 500, 2500


def upstream() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    c.sendall(RESPONSE)

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def requests(s, n: int) -> None:
    for _ in range(n):
        s.sendall(REQUEST)
        got = b""
        while not got.endswith(b"xyz"):
            data = s.recv(65536)
            if not data:
                raise SystemExit("the gateway closed the connection")
            got += data
        if not got.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected response: {got[:200]!r}")


RSA = False                 # --rsa: an RSA 2048 certificate instead of ECDSA P-256
HANDSHAKES = False          # --handshakes: every request on a new connection, a full TLS handshake each


def run(port: int, plain: bool, n: int) -> str:
    """n requests: on one keep-alive connection, or (--handshakes) each on its own; the cipher."""
    if not HANDSHAKES:
        s, cipher = _client(port, plain)
        requests(s, n)
        s.close()
        return cipher
    for _ in range(n):
        s, cipher = _client(port, plain)     # Python's client never resumes unless given a session
        requests(s, 1)
        s.close()
    return cipher


def measure(d: Path, plain: bool, n: int, nginx: bool = False) -> tuple[int, Path, str]:
    srv, up_port = upstream()
    crt, key = d / "cert.pem", d / "key.pem"
    alg = ["-newkey", "rsa:2048"] if RSA else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(["openssl", "req", "-x509", *alg, "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
                    "-subj", "/CN=bench"], check=True, capture_output=True)  # fmt: skip
    tls = "" if plain else f", tls: {{certificates: [{{cert: '{crt}', key: '{key}'}}]}}"
    cfg = d / "fastgw.yaml"
    cfg.write_text(f"""
listeners: [{{address: 127.0.0.1:0{tls}}}]
access_log: {{enabled: false}}
limits: {{max_requests_per_connection: 1000000}}
upstreams:
  origin:
    targets: [{{address: 127.0.0.1:{up_port}}}]
    keepalive: {{max_idle: 1024, idle_timeout: 60s, max_requests: 1000000}}
routes:
  - {{name: all, match: {{path: {{prefix: /}}}}, upstream: origin}}
""")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg{n}.%p", sys.executable, "-m", "fastgw",
           "run", "-c", str(cfg), "--workers", "1"]  # fmt: skip
    if nginx:
        return measure_nginx(d, plain, n, crt, key, up_port, srv)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port = worker = None
    lines = []
    deadline = time.monotonic() + 300
    try:
        while port is None and time.monotonic() < deadline:
            if not select.select([proc.stderr], [], [], 1)[0]:
                if proc.poll() is not None:
                    break
                continue
            line = proc.stderr.readline()
            lines.append(line)
            m = re.search(r'"worker_pid":\s*(\d+)', line)
            if m:
                worker = int(m.group(1))
            m = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        if port is None or worker is None:
            raise SystemExit("the gateway did not start under valgrind:\n" + "".join(lines[-30:]))
        cipher = run(port, plain, n)
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        srv.close()
    dump = d / f"cg{n}.{worker}"
    if not dump.exists():
        raise SystemExit(f"no callgrind file of the worker ({worker}) in {d}")
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]), dump, cipher
    raise SystemExit(f"no totals in {dump}")


def _client(port: int, plain: bool):
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    if plain:
        return raw, "none"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(raw)
    return s, f"{s.version()} {s.cipher()[0]}"


def measure_nginx(d: Path, plain: bool, n: int, crt: Path, key: Path, up_port: int, srv) -> tuple[int, Path, str]:
    """nginx as the bench's `nginx` peer is configured (bench/harness/peers.py), as one process
    (master_process off) so that callgrind counts it all."""
    port = int(subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                               "print(s.getsockname()[1])"], capture_output=True, text=True).stdout)  # fmt: skip
    tls = "" if plain else (
        f"ssl_certificate {crt}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; "
        "ssl_prefer_server_ciphers off; ssl_session_tickets on; ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:"
        "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;")
    conf = d / f"nginx{n}.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; error_log {d}/nginx-error.log; pid {d}/nginx{n}.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream origin {{ server 127.0.0.1:{up_port}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port}{"" if plain else " ssl"} backlog=4096;
    {tls}
    keepalive_requests 1000000;
    location / {{ proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffers 8 16k;
                 proxy_pass http://origin; }}
  }}
}}
""")
    out = d / f"cg{n}.nginx"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "nginx", "-c", str(conf),
                             "-p", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("nginx did not start under valgrind") from None
                time.sleep(0.5)
        cipher = run(port, plain, n)
    finally:
        proc.terminate()
        proc.wait(120)
        srv.close()
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]), out, cipher
    raise SystemExit(f"no totals in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=0, metavar="K", help="the K costliest functions per request")
    ap.add_argument("--plain", action="store_true", help="plain HTTP instead of HTTPS")
    ap.add_argument("--nginx", action="store_true", help="measure nginx instead of fastgw")
    ap.add_argument("--handshakes", action="store_true", help="a new connection (full handshake) per request")
    ap.add_argument("--rsa", action="store_true", help="an RSA 2048 certificate (default ECDSA P-256)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind files in DIR")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    global LOW, HIGH, HANDSHAKES, RSA
    RSA = args.rsa
    if args.handshakes:
        HANDSHAKES, LOW, HIGH = True, 50, 250
    d = Path(args.keep or tempfile.mkdtemp(prefix="fastgw-https-ir-"))
    d.mkdir(parents=True, exist_ok=True)
    ir_low, low, cipher = measure(d, args.plain, LOW, args.nginx)
    ir_high, high, _ = measure(d, args.plain, HIGH, args.nginx)
    print(f"instructions/request: {round((ir_high - ir_low) / (HIGH - LOW))} "
          f"({'nginx' if args.nginx else 'fastgw'}, {'http' if args.plain else 'https'}, {cipher}"
          f"{', a full handshake per request' if HANDSHAKES else ''})")
    if args.top:
        a, b = per_function(low), per_function(high)
        diff = {f: (b.get(f, 0) - a.get(f, 0)) / (HIGH - LOW) for f in set(a) | set(b)}
        print(f"top {args.top} functions, self instructions per request:")
        for name, v in sorted(diff.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {v:9.1f}  {name}")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
