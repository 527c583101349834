"""The idle-connection memory scenario (issue 16, "Memory"): N idle keep-alive client connections, each
after one request, to fastgw, nginx and HAProxy (one worker each, in front of the harness's nginx
upstream), and what each proxy's processes hold: RSS, and PSS/USS from /proc/PID/smaps_rollup, at idle
and with the N connections open, and the KiB per connection (worker RSS difference / N).

    .venv/bin/python bench/memory.py                 # 10,000 connections, the three proxies
    .venv/bin/python bench/memory.py -n 2000 --peers fastgw
    .venv/bin/python bench/memory.py --workers 2     # fastgw with two workers (the supervisor's share)
    .venv/bin/python bench/memory.py --workers 2 --preload -n 0 --peers fastgw   # worker modules pre-fork

RLIMIT_NOFILE is raised to its hard limit (the proxies inherit it); the upstream is the harness's nginx.
Memory figures are not timing figures: they repeat to within a few hundred KiB from run to run.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.peers import Fastgw, PeerConfig, _spawn, free_port, start_upstream, stop_all, wait_ready  # noqa: E402
from harness.procs import tree  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: memory.bench\r\nUser-Agent: bench-memory\r\nAccept: */*\r\n\r\n"


def rollup(pid: int) -> dict[str, int]:
    """KiB: rss, pss, uss (private clean + private dirty) of one process."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            key, kib = parts[0].rstrip(":"), int(parts[1])
            if key == "Rss":
                out["rss"] = kib
            elif key == "Pss":
                out["pss"] = kib
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += kib
    return out


def roles(root: int, name: str) -> dict[str, int]:
    """{role: pid}: fastgw's supervisor and worker(s), nginx's master and worker, haproxy's process."""
    pids = tree(root)
    if name == "haproxy":
        return {"process": pids[-1]}
    children = [p for p in pids if p != root]
    role = "supervisor" if name == "fastgw" else "master"
    out = {role: root}
    for i, p in enumerate(children):
        out[f"worker{i}" if len(children) > 1 else "worker"] = p
    return out


def open_idle(port: int, n: int) -> list[socket.socket]:
    """n connections, each after one complete keep-alive exchange, left open."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the proxy closed a connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            body += s.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer {head[:60]!r}")
        socks.append(s)
    return socks


def start_nginx(nginx: str, upstream: int, workdir: Path, n: int):
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
worker_rlimit_nofile {2 * n + 1000};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {n + 1000}; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  upstream origin {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    return _spawn("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
                  None, d, port)


def start_haproxy(haproxy: str, upstream: int, workdir: Path, n: int):
    d = workdir / "haproxy"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (d / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn {n + 100}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend origin
backend origin
  server s1 127.0.0.1:{upstream}
""")
    return _spawn("haproxy", [haproxy, "-db", "-f", str(d / "haproxy.cfg")], None, d, port)


# --preload: the supervisor also imports what only a worker needs (fastgw.server imports these in
# run_worker, after the fork), so that the workers share those pages with it copy-on-write.
PRELOAD = ("import sys, uvloop, fastgw._core, fastgw.accesslog, fastgw.runtime, fastgw.tracing, fastgw.dns, "
           "fastgw.jwt_auth; from fastgw.cli import main; sys.exit(main(sys.argv[1:]))")


def start_fastgw(upstream: int, workdir: Path, workers: int, preload: bool = False):
    gw = Fastgw()
    why = gw.available()
    if why:
        raise RuntimeError(why)
    if preload:
        gw.cmd = [sys.executable, "-c", PRELOAD]
    gw._extra_run_args = ["--workers", str(workers)]
    cfg = PeerConfig(upstream, config={"limits": {"keepalive_timeout": "300s", "header_timeout": "60s"}})
    return gw.start(cfg, None, workdir)


def measure(name: str, proc, n: int) -> list[dict]:
    wait_ready(proc)
    time.sleep(1.0)
    idle = {role: rollup(pid) for role, pid in roles(proc.pid, name).items()}
    socks = open_idle(proc.port, n)
    time.sleep(2.0)
    loaded = {role: rollup(pid) for role, pid in roles(proc.pid, name).items()}
    for s in socks:
        s.close()
    rows = []
    for role in idle:
        a, b = idle[role], loaded.get(role, {"rss": 0, "pss": 0, "uss": 0})
        rows.append({"proxy": name, "process": role, "idle": a, "loaded": b,
                     "n": n, "per_conn": (b["rss"] - a["rss"]) / n if n else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--connections", type=int, default=10_000)
    ap.add_argument("--peers", default="fastgw,nginx,haproxy")
    ap.add_argument("--workers", type=int, default=1, help="fastgw's --workers")
    ap.add_argument("--preload", action="store_true", help="the supervisor imports the workers' modules too")
    args = ap.parse_args(argv)
    n = args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 3 * n + 2000)
    try:                        # root may raise the hard limit too (HAProxy wants 2 fds a connection)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastgw-memory-") as tmp:
        work = Path(tmp)
        upstream = start_upstream(nginx, None, work)
        procs = [upstream]
        try:
            for name in args.peers.split(","):
                peer_n = n
                if name == "fastgw":
                    proc = start_fastgw(upstream.port, work, args.workers, args.preload)
                elif name == "nginx":
                    proc = start_nginx(nginx, upstream.port, work, n)
                elif name == "haproxy":
                    exe = shutil.which("haproxy")
                    if exe is None:
                        print("haproxy: not installed, skipped")
                        continue
                    # two descriptors a connection: where the hard limit cannot be raised, as many
                    # connections as it allows (the row says how many)
                    peer_n = min(n, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 700) // 2)
                    proc = start_haproxy(exe, upstream.port, work, peer_n)
                else:
                    raise SystemExit(f"unknown peer {name!r}")
                procs.append(proc)
                try:
                    rows += measure(name, proc, peer_n)
                except RuntimeError as exc:
                    print(f"{name}: {exc}")
                finally:
                    proc.stop()
                    procs.remove(proc)
        finally:
            stop_all(procs)
    print("idle keep-alive connections (each after one request); KiB from /proc/PID/smaps_rollup")
    print("| proxy | process | conns | RSS idle | PSS idle | USS idle | RSS loaded | PSS loaded | USS loaded "
          "| KiB/conn (RSS) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["idle"], r["loaded"]
        print(f"| {r['proxy']} | {r['process']} | {r['n']} | {a['rss']} | {a['pss']} | {a['uss']} | {b['rss']} | "
              f"{b['pss']} | {b['uss']} | {r['per_conn']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
