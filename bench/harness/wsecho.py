"""WebSocket echo of 1 KiB messages through fastgw and through nginx: the proxy's CPU per message.

    python -m bench.harness.wsecho [--seconds 10] [--connections 50] [--window 4] [--proxies fastgw,nginx]

The upstream does the WebSocket handshake (a real 101 with Sec-WebSocket-Accept) and then echoes the
bytes it gets; the load generator opens `connections` WebSockets through the proxy and keeps `window`
masked 1 KiB binary frames in flight on each, counting the echoed bytes. Both sides are raw asyncio
protocols (no frame parsing), so the Python peers cost as little CPU as they can; the proxies tunnel
bytes either way (neither parses frames on the hot path). The figure is the proxy's process-tree CPU
(utime+stime) over the messages echoed: µs per message (one message each way counts once). nginx runs
with one worker and fastgw with one worker, each pinned to no CPU (the machine is small).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .peers import _spawn, fastgw_command, free_port
from .procs import TreeSampler

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAYLOAD = 1024
FRAME = b"\x82\xfe" + PAYLOAD.to_bytes(2, "big") + b"\x00\x00\x00\x00" + os.urandom(PAYLOAD)  # mask 0: XOR no-op


class EchoUpstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
        self.open = False

    def data_received(self, data):
        if self.open:
            self.t.write(data)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.open = True
        if rest:
            self.t.write(rest)


class Loader(asyncio.Protocol):
    def __init__(self, stats: dict, window: int, ready: asyncio.Future):
        self.stats, self.window, self.ready = stats, window, ready
        self.got = 0
        self.open = False
        self.buf = b""

    def connection_made(self, transport):
        self.t = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data):
        if not self.open:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, _, data = self.buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(head[:200].decode(errors="replace")))
                return
            self.open = True
            if not self.ready.done():
                self.ready.set_result(None)
        self.got += len(data)
        done = self.got // len(FRAME)
        if done:
            self.got -= done * len(FRAME)
            self.stats["messages"] += done
            if self.stats["running"]:
                self.t.write(FRAME * done)

    def start(self):
        self.t.write(FRAME * self.window)


async def drive(port: int, connections: int, window: int, seconds: float, sampler_root: int) -> dict:
    loop = asyncio.get_running_loop()
    stats = {"messages": 0, "running": True}
    conns = []
    for _ in range(connections):
        ready = loop.create_future()
        _, proto = await loop.create_connection(lambda r=ready: Loader(stats, window, r), "127.0.0.1", port)
        await asyncio.wait_for(ready, 10)
        conns.append(proto)
    for c in conns:
        c.start()
    await asyncio.sleep(1.0)                  # warm-up
    stats["messages"] = 0
    with TreeSampler([sampler_root]) as s:
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        n = stats["messages"]
        elapsed = time.monotonic() - t0
    stats["running"] = False
    for c in conns:
        c.t.close()
    cpu = s.cpu_s[sampler_root]
    return {"messages": n, "seconds": round(elapsed, 2), "messages_per_s": round(n / elapsed),
            "proxy_cpu_s": round(cpu, 3), "cpu_us_per_message": round(cpu / n * 1e6, 2) if n else None}


def start_fastgw(up_port: int, workdir: Path):
    port = free_port()
    d = workdir / "fastgw"
    d.mkdir(parents=True, exist_ok=True)
    (d / "fastgw.yaml").write_text(json.dumps({
        "listeners": [{"address": f"127.0.0.1:{port}"}],
        "upstreams": {"ws": {"targets": [{"address": f"127.0.0.1:{up_port}"}]}},
        "routes": [{"name": "ws", "upstream": "ws"}],
        "logging": {"level": "warning"},
    }))
    return _spawn("fastgw", fastgw_command() + ["run", "-c", str(d / "fastgw.yaml"), "--workers", "1"], None, d, port)


def start_nginx(nginx: str, up_port: int, workdir: Path):
    port = free_port()
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream origin {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
    }}
  }}
}}
""")
    return _spawn("nginx", [nginx, "-c", str(d / "nginx.conf"), "-p", str(d)], None, d, port)


async def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main_async(a) -> dict:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoUpstream, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    results = {"payload_bytes": PAYLOAD, "connections": a.connections, "window": a.window}
    with tempfile.TemporaryDirectory(prefix="fastgw-wsbench-") as tmp:
        for name in a.proxies.split(","):
            if name == "nginx":
                nginx = shutil.which("nginx") or "/usr/sbin/nginx"
                if not os.path.exists(nginx):
                    results["nginx"] = {"skipped": "nginx is not installed"}
                    continue
                proc = start_nginx(nginx, up_port, Path(tmp))
            else:
                proc = start_fastgw(up_port, Path(tmp))
            try:
                await wait_port(proc.port)
                await asyncio.sleep(0.5)
                results[name] = await drive(proc.port, a.connections, a.window, a.seconds, proc.pid)
            finally:
                proc.stop()
    server.close()
    f, n = results.get("fastgw", {}), results.get("nginx", {})
    if f.get("cpu_us_per_message") and n.get("cpu_us_per_message"):
        results["fastgw_over_nginx_cpu_per_message"] = round(f["cpu_us_per_message"] / n["cpu_us_per_message"], 2)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--proxies", default="fastgw,nginx")
    a = p.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main_async(a)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
