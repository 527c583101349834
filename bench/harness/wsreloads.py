"""1,000 open WebSockets through 10 reloads: how many the reloads dropped (issue 13's measurement).

    python -m bench.harness.wsreloads [--sockets 1000] [--reloads 10] [--workers 2]

A `websockets` echo server is the upstream; `sockets` WebSockets (the `websockets` client) are opened
through fastgw; then, `reloads` times, the config is rewritten (a redirect route's target and the upstream's
keep-alive settings change) and SIGHUP sent, the new config is seen answering,
and every WebSocket sends a message and must get it back. Prints a JSON report; exit 1 if any dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import websockets

from .peers import _spawn, fastgw_command, free_port


def config(port: int, up_port: int, gen: int) -> str:
    return json.dumps({
        "listeners": [{"address": f"127.0.0.1:{port}"}],
        "upstreams": {"ws": {"targets": [{"address": f"127.0.0.1:{up_port}"}],
                             "keepalive": {"max_idle": 16 + gen}}},
        "routes": [{"name": "gen", "match": {"path": {"exact": "/gen"}},
                    "filters": {"redirect": {"hostname": f"gen-{gen}.test"}}},
                   {"name": "ws", "upstream": "ws"}],
        "logging": {"level": "warning"},
    })


def generation(port: int) -> str | None:
    """The config generation answering: a redirect route's Location names it."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/gen")
        location = conn.getresponse().getheader("Location") or ""
        conn.close()
    except OSError:
        return None
    return location.split("//gen-", 1)[1].split(".", 1)[0] if "//gen-" in location else None


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def run(a) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * a.sockets + 256)), hard))
    server = await websockets.serve(echo, "127.0.0.1", 0, ping_interval=None)
    up_port = server.sockets[0].getsockname()[1]
    report = {"sockets": a.sockets, "reloads": a.reloads, "workers": a.workers}
    with tempfile.TemporaryDirectory(prefix="fastgw-wsreloads-") as tmp:
        d = Path(tmp)
        port = free_port()
        conf = d / "fastgw.yaml"
        conf.write_text(config(port, up_port, 0))
        proc = _spawn("fastgw", fastgw_command() + ["run", "-c", str(conf), "--workers", str(a.workers)],
                      None, d, port)
        try:
            deadline = time.monotonic() + 30
            while generation(port) != "0":
                if time.monotonic() > deadline:
                    raise RuntimeError("fastgw did not start:\n" + proc.log_tail())
                await asyncio.sleep(0.2)
            t0 = time.monotonic()
            socks = []
            for i in range(0, a.sockets, 100):
                socks += await asyncio.gather(*[websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None,
                                                                   open_timeout=30)
                                                for _ in range(min(100, a.sockets - i))])
            report["open_seconds"] = round(time.monotonic() - t0, 2)
            alive = list(range(len(socks)))
            dropped: set[int] = set()
            reload_seconds = []

            async def check(i: int, tag: str) -> bool:
                try:
                    await socks[i].send(tag)
                    return await asyncio.wait_for(socks[i].recv(), 30) == tag
                except Exception:
                    return False

            for gen in range(1, a.reloads + 1):
                conf.write_text(config(port, up_port, gen))
                t = time.monotonic()
                proc.popen.send_signal(signal.SIGHUP)
                while generation(port) != str(gen):
                    if time.monotonic() - t > 30:
                        raise RuntimeError(f"reload {gen} not applied:\n" + proc.log_tail())
                    await asyncio.sleep(0.05)
                reload_seconds.append(round(time.monotonic() - t, 3))
                ok = await asyncio.gather(*[check(i, f"{gen}:{i}") for i in alive])
                dropped |= {i for i, good in zip(alive, ok, strict=True) if not good}
                alive = [i for i in alive if i not in dropped]
            report["dropped"] = len(dropped)
            report["still_open"] = len(alive)
            report["reload_applied_seconds"] = reload_seconds
            for s in socks:
                await s.close()
        finally:
            proc.stop()
    server.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    report = asyncio.run(run(a))
    print(json.dumps(report, indent=2))
    return 0 if report["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
