#!/usr/bin/env python3
"""HTTP/2 downstream, side by side (issue 14's performance figure): `h2load -c 10 -m 20` against a small
(26 B) response through fastgw (h2c with prior knowledge) and through nginx (`listen ... http2`, HTTP/1.1
keep-alive to the same upstream), and straight at the upstream's HTTP/1.1 with h2load's --h1 as a
reference. Each proxy runs one worker pinned to one CPU; the figure is CPU seconds of the proxy's process
tree per request (utime+stime over the run), and requests/s as h2load reports them.

    .venv/bin/python bench/h2load_bench.py [--requests 100000] [--cpus 1] [--upstream-cpus 0] [--load-cpus 0]

On a shared, loaded machine the figures are noise within a run or two: compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.peers import Fastgw, PeerConfig, _spawn, free_port, start_upstream, wait_ready  # noqa: E402
from harness.procs import TreeSampler  # noqa: E402
from harness.tools import which  # noqa: E402


def nginx_h2(nginx: str, upstream_port: int, cpus: str | None, workdir: Path):
    d = workdir / "nginx-h2"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  http2_max_requests 100000000;
  http2_max_concurrent_streams 128;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  upstream origin {{
    server 127.0.0.1:{upstream_port};
    keepalive 1024;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    location / {{ proxy_pass http://origin; }}
  }}
}}
""")
    proc = _spawn("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], cpus, d, port)
    proc.tls = False
    return proc


def wait_h2(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["h2load", "-n", "1", "-c", "1", f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True)
        if "1 succeeded" in out.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers HTTP/2 on port {port}")


def h2load(port: int, requests: int, load_cpus: str | None, h1: bool = False) -> tuple[float, int, str]:
    cmd = (["taskset", "-c", load_cpus] if load_cpus else []) + [
        "h2load", "-c", "10", "-m", "20", "-n", str(requests), f"http://127.0.0.1:{port}/"]
    if h1:
        cmd.insert(cmd.index("h2load") + 1, "--h1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    m = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    if m is None:
        raise RuntimeError(f"no h2load summary:\n{out}")
    rps = float(m.group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok = re.search(r"(\d+) succeeded", out)
    if ok is None or int(ok.group(1)) != done:
        raise RuntimeError(f"h2load saw failures:\n{out}")
    return rps, done, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--cpus", default="1", help="CPU the proxy is pinned to")
    ap.add_argument("--upstream-cpus", default="0")
    ap.add_argument("--load-cpus", default="0")
    ap.add_argument("--peers", default="fastgw,nginx")
    args = ap.parse_args()
    nginx = which("nginx")
    if nginx is None or which("h2load") is None:
        print("needs nginx and h2load (Debian nginx, nghttp2-client)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fastgw-h2bench-") as tmp:
        work = Path(tmp)
        up = start_upstream(nginx, args.upstream_cpus, work)
        rows = []
        try:
            for name in args.peers.split(","):
                if name == "fastgw":
                    peer = Fastgw()
                    peer.available()           # finds whether `run` takes --workers (then 1)
                    proc = peer.start(PeerConfig(upstream_port=up.port), args.cpus, work)
                else:
                    proc = nginx_h2(nginx, up.port, args.cpus, work)
                try:
                    if name == "fastgw":
                        wait_ready(proc)
                    wait_h2(proc.port)
                    with TreeSampler([proc.pid]) as s:
                        rps, done, _ = h2load(proc.port, args.requests, args.load_cpus)
                    cpu = s.cpu_s[proc.pid]
                    rows.append((name, rps, done, cpu / done * 1e6 if done else float("nan")))
                finally:
                    proc.stop()
        finally:
            up.stop()
    print(f"h2load -c 10 -m 20 -n {args.requests}, 26 B response (noisy on a shared machine)")
    print(f"{'peer':8} {'req/s':>10} {'requests':>10} {'proxy CPU us/req':>18}")
    for name, rps, done, us in rows:
        print(f"{name:8} {rps:10.0f} {done:10d} {us:18.1f}")
    by = {r[0]: r for r in rows}
    if "fastgw" in by and "nginx" in by:
        print(f"fastgw/nginx CPU per request: {by['fastgw'][3] / by['nginx'][3]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
