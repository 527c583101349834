"""Accuracy of a cluster-wide limit (issue 11 section 3): 3 gateway processes share one Redis limit of
R requests/s; clients drive them unevenly (1, 2 and 4 connections) well above R for a fixed time;
the figure is admitted / allowed over the steady state (after the first second).

One command: .venv/bin/python tests/e2e/ratelimit_accuracy.py [R] [SECONDS] [server|cluster|sentinel]
(or bench/ratelimit_accuracy.py, which repeats it).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.gateway import Gateway, simple_config, upstream_config  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402
from support.upstreams import EchoServer  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def config(echo_address: str, redis_url: str, rate: int, on_error: str = "open") -> dict:
    cfg = simple_config(upstreams={"echo": upstream_config(echo_address)}, routes=[{
        "name": "acc", "match": {"path": {"prefix": "/"}}, "upstream": "echo",
        "policies": [{"type": "rate_limit", "name": "acc", "headers": [], "limits": [
            {"rate": rate, "period": "1s", "burst": max(1, rate // 10), "key": ["route"], "scope": "cluster",
             "on_redis_error": on_error}]}]}])
    # a deadline long enough that a loaded machine's slow answer is not taken for an outage (which
    # fails open, and would be counted as over-admission here)
    cfg["redis"] = {"url": redis_url, "timeout": "1s"}
    return cfg


def _drive(port: int, stop: threading.Event, stamps: list, statuses: dict) -> None:
    """Requests back to back on keep-alive connections (a new one when the gateway closes one after
    its requests-per-connection limit); records each 200's time."""
    while not stop.is_set():
        try:
            _drive_one(port, stop, stamps, statuses)
        except OSError:
            pass


def _drive_one(port: int, stop: threading.Event, stamps: list, statuses: dict) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buf = b""
    try:
        while not stop.is_set():
            sock.sendall(REQUEST)
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                rest += chunk
            buf = rest[length:]
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                stamps.append(time.monotonic())
    finally:
        sock.close()


def run_load(ports: list[int], seconds: float, conns=(1, 2, 4), on_half=None) -> tuple[list[float], dict, float]:
    """Drives the gateways; returns (each admitted request's time, status counts, start time)."""
    stop = threading.Event()
    stamps: list[float] = []
    statuses: dict = {}
    threads = [threading.Thread(target=_drive, args=(port, stop, stamps, statuses), daemon=True)
               for port, n in zip(ports, conns, strict=False) for _ in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    if on_half is not None:
        time.sleep(seconds / 2)
        on_half()
        time.sleep(seconds / 2)
    else:
        time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10)
    return stamps, statuses, start


def accuracy(stamps: list[float], start: float, seconds: float, rate: int, warmup: float = 1.0) -> float:
    """admitted / allowed in [start + warmup, start + seconds)."""
    window = [t for t in stamps if start + warmup <= t < start + seconds]
    return len(window) / (rate * (seconds - warmup))


def main(rate: int = 200, seconds: float = 8.0, topology: str = "server") -> float:
    """One run: 3 gateways on a fresh Redis (`server`, a 3-node `cluster`, or a `sentinel` set);
    prints and returns admitted / allowed over the steady state."""
    import tempfile

    with _Ctx(topology) as ctx:
        echo = ctx.echo
        cfg = config(echo.address, ctx.url, rate)
        cfg["redis"].update(ctx.redis_extra)
        gws = [Gateway(cfg, tempfile.mkdtemp(prefix="fastgw-acc-")).start() for _ in range(3)]
        ctx.gateways = gws
        stamps, statuses, start = run_load([g.port for g in gws], seconds)
        figure = accuracy(stamps, start, seconds, rate)
        print(f"R={rate}/s over {seconds:g}s, 3 gateways, 1/2/4 connections, Redis {topology}: statuses {statuses}; "
              f"admitted/allowed (steady state) = {figure:.4f}")
        return figure


class _Ctx:
    def __init__(self, topology: str = "server") -> None:
        self.topology = topology

    def __enter__(self):
        from support.redis_topologies import ClusterSet, SentinelSet

        self.redis_extra: dict = {}
        if self.topology == "cluster":
            self.redis = ClusterSet()
            self.url = f"redis://127.0.0.1:{self.redis.ports[0]}"
            self.redis_extra = {"mode": "cluster"}
        elif self.topology == "sentinel":
            self.redis = SentinelSet()
            self.url = "redis://"
            self.redis_extra = {"mode": "sentinel", "sentinels": [self.redis.sentinel_address]}
        else:
            self.redis = RedisServer()
            self.url = self.redis.url
        self.echo = EchoServer("echo")
        self.gateways = []
        return self

    def __exit__(self, *exc):
        for g in self.gateways:
            g.close()
        self.echo.close()
        self.redis.stop()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]), *(float(a) for a in sys.argv[2:3]), *sys.argv[3:4])
