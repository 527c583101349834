"""CPU instructions per request on the plain proxy path, counted by callgrind: a deterministic figure,
unlike wall-clock or CPU time on a shared machine.

The real Worker, ClientConn and UpstreamConn of fastgw._core run sans-socket on the fake loop of
tests/support/fakeloop.py (as tests/unit/test_connection_states.py drives them), over transports that
only count what is written. One client connection does N keep-alive cycles: a GET with a wrk-like head
goes in, the upstream connection (pooled after the first cycle) gets an nginx-like 26-byte response.
The script runs that under `valgrind --tool=callgrind` for N = 1000 and N = 3000;
instructions/request = (Ir(3000) - Ir(1000)) / 2000, so interpreter start-up, imports and the config
compile cancel out.

    .venv/bin/python bench/instructions.py            # one line: instructions/request: N
    .venv/bin/python bench/instructions.py --top 25   # and the functions that cost the most per request
    .venv/bin/python bench/instructions.py --wrk      # and a short real wrk run against fastgw
    .venv/bin/python bench/instructions.py --scenario apikey    # bench/run.py's apikey scenario
    .venv/bin/python bench/instructions.py --scenario gateway   # ... and its gateway scenario

Scenarios (`--scenario`), each the config and requests of bench/run.py's scenario of that name:
get26 (the default: one catch-all route, `GET /`); apikey (an `api_key` policy, 1,000 consumers, the
key in X-API-Key); gateway (300 routes by host + path prefix + the X-Env header, a request header set,
the harness's 64 request shapes in rotation).

Run with PYTHONHASHSEED fixed (the script sets it for the children) the figure repeats to within a few
instructions; differences between builds are what it is for (bench/README.md has the history).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOW, HIGH = 1000, 3000

CONFIG = """
listeners: [{address: 127.0.0.1:8080}]
access_log: {enabled: false}
limits: {max_requests_per_connection: 1000000}
upstreams:
  origin:
    targets: [{address: 127.0.0.1:9001}]
    keepalive: {max_idle: 1024, idle_timeout: 60s, max_requests: 1000000}
routes:
  - {name: all, match: {path: {prefix: /}}, upstream: origin}
"""



def _harness():
    sys.path.insert(0, str(ROOT))
    from bench.harness import peers, scenarios

    return peers, scenarios


def config_text() -> str:
    """CONFIG for FASTGW_IR_SCENARIO, with FASTGW_IR_POLICIES native no-op policies on the route(s)
    (--policies N)."""
    n = int(os.environ.get("FASTGW_IR_POLICIES", "0"))
    scenario = os.environ.get("FASTGW_IR_SCENARIO", "get26")
    text = CONFIG
    policies = ["{type: noop}"] * n
    if scenario == "apikey":
        peers, scenarios = _harness()
        sc = scenarios.build(["apikey"])[0]
        policies = [json.dumps(p) for p in sc.fastgw_policies] + policies
        text += "".join(f"{k}: {json.dumps(v)}\n" for k, v in sc.fastgw_config.items())
    elif scenario == "gateway":
        peers, scenarios = _harness()
        routes = scenarios.gateway_routes(300)
        (mh, mv), (sh, sv) = peers.GATEWAY_MATCH_HEADER, peers.GATEWAY_SET_HEADER
        lines = [
            f"  - {{name: r{i}, match: {{hosts: ['{h}'], path: {{prefix: '{p}'}}, "
            f"headers: [{{name: {mh.lower()}, value: {mv}}}]}}, upstream: origin, "
            f"filters: {{request_headers: {{set: {{{sh.lower()}: {sv}}}}}}}}}"
            for i, (h, p) in enumerate(zip(routes.hosts, routes.prefixes, strict=True))
        ]
        text = text[: text.index("routes:\n") + 8] + "\n".join(lines) + "\n"
    elif scenario != "get26":
        raise SystemExit(f"unknown scenario {scenario!r} (get26, apikey, gateway)")
    if not policies:
        return text
    return text.replace("upstream: origin", f"upstream: origin, policies: [{', '.join(policies)}]")


def requests_of(path: str) -> list[bytes]:
    """The request heads of FASTGW_IR_SCENARIO, sent in rotation (as wrk formats them)."""
    scenario = os.environ.get("FASTGW_IR_SCENARIO", "get26")
    if scenario == "get26":
        return [REQUEST.replace(b"GET / ", b"GET %s " % path.encode(), 1)]
    peers, scenarios = _harness()
    reqs = scenarios.gateway_requests(scenarios.gateway_routes(300)) if scenario == "gateway" else (
        scenarios.build([scenario])[0].requests)
    out = []
    for r in reqs:
        headers = {"Host": "127.0.0.1:8080", **r.headers}
        out.append(f"{r.method} {r.path} HTTP/1.1\r\n".encode()
                   + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
    return out


# What wrk sends for the get26 scenario, and what the harness's nginx upstream answers.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 26\r\nConnection: keep-alive\r\n\r\n"
    b"abcdefghijklmnopqrstuvwxyz"
)


class CountingTransport:
    """The least an asyncio transport must do for the core, with builtins only (no Python frame per
    call, as uvloop's transports are C): what is written is kept in a one-slot deque, the last write."""

    def __init__(self, protocol, sockname, peername):
        self.protocol = protocol
        self.extra = {"sockname": sockname, "peername": peername}
        self.out = collections.deque(maxlen=1)
        self.write = self.out.append
        self.writelines = self.out.extend
        self.get_extra_info = self.extra.get
        self.pause_reading = self.resume_reading = bool  # bool() is False: a no-op call
        self.is_closing = bool
        self.get_write_buffer_size = int

    @property
    def last(self) -> bytes:
        return bytes(self.out[0]) if self.out else b""

    def close(self):
        raise AssertionError("the benchmark's connections must stay open")

    def abort(self):
        raise AssertionError("the benchmark's connections must stay open")


def run_cycles(n: int, path: str = "/") -> None:
    """The measured work: n keep-alive request/response cycles on one client connection."""
    requests = requests_of(path)
    request = requests[0]
    sys.path.insert(0, str(ROOT / "tests"))
    from support.fakeloop import FakeLoop

    from fastgw import _core
    from fastgw.config import loads_config
    from fastgw.runtime import compile_runtime

    loop = FakeLoop()
    worker = _core.Worker(loop, compile_runtime(loads_config(config_text(), "yaml")))
    client = worker()
    ct = CountingTransport(client, ("127.0.0.1", 8080), ("127.0.0.1", 40000))
    client.connection_made(ct)
    client.data_received(request)
    up = loop.connects[0][0]
    ut = CountingTransport(up, ("127.0.0.1", 50000), ("127.0.0.1", 9001))
    up.connection_made(ut)
    up.data_received(RESPONSE)
    client_data, up_data = client.data_received, up.data_received
    if len(requests) == 1:
        for _ in range(n - 1):
            client_data(request)
            up_data(RESPONSE)
    else:
        for i in range(1, n):
            request = requests[i % len(requests)]
            client_data(request)
            up_data(RESPONSE)
    if len(loop.connects) != 1:
        raise SystemExit(f"the upstream connection was not reused ({len(loop.connects)} connects)")
    if not ct.last.startswith(b"HTTP/1.1 200 OK\r\n") or not ct.last.endswith(b"xyz"):
        raise SystemExit(f"unexpected response: {ct.last!r}")
    if not ut.last.startswith(request[: request.index(b"\r\n") + 2]):
        raise SystemExit(f"unexpected upstream request: {ut.last!r}")


def callgrind(n: int, out: Path, path: str) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, __file__, "--cycles", str(n), "--path", path]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"callgrind run failed ({r.returncode})")
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*\S)\s*$")


def per_function(path: Path) -> dict[str, int]:
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", str(path)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        m = _ANNOTATE_LINE.match(line)
        if m and (":" in m.group(2) or "[" in m.group(2)) and not m.group(2).startswith("PROGRAM TOTALS"):
            name = re.sub(r"\s*\[[^]]*\]$", "", m.group(2))
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


def top(low: Path, high: Path, k: int) -> None:
    a, b = per_function(low), per_function(high)
    diff = {f: (b.get(f, 0) - a.get(f, 0)) / (HIGH - LOW) for f in set(a) | set(b)}
    print(f"top {k} functions, self instructions per request:")
    for name, v in sorted(diff.items(), key=lambda kv: -kv[1])[:k]:
        print(f"  {v:9.1f}  {name}")


def wrk(seconds: int) -> None:
    """A short real run (not deterministic, and the machine may be busy): fastgw in front of the bench
    harness's nginx upstream, through bench/run.py's own machinery."""
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--scenarios", "get26", "--peers", "fastgw",
           "--duration", str(seconds), "--rounds", "1", "--warmup", "1", "--open-loop", "0"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--top", type=int, default=0, metavar="K", help="the K costliest functions per request")
    ap.add_argument("--wrk", action="store_true", help="also a short real wrk run (bench/run.py, get26)")
    ap.add_argument("--path", default="/", help="the request's path (default /, as get26)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind files in DIR")
    ap.add_argument("--policies", type=int, default=0, metavar="N",
                    help="N native no-op policies on the route (the policies4 scenario: 4)")
    ap.add_argument("--scenario", default="get26", choices=["get26", "apikey", "gateway"],
                    help="the config and requests of that bench/run.py scenario (default get26)")
    args = ap.parse_args()
    if args.policies:
        os.environ["FASTGW_IR_POLICIES"] = str(args.policies)
    if args.scenario != "get26":      # the callgrind children get it from the environment
        os.environ["FASTGW_IR_SCENARIO"] = args.scenario
    if args.cycles:
        run_cycles(args.cycles, args.path)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    d = Path(args.keep or tempfile.mkdtemp(prefix="fastgw-ir-"))
    d.mkdir(parents=True, exist_ok=True)
    low, high = d / f"callgrind.{LOW}", d / f"callgrind.{HIGH}"
    ir_low, ir_high = callgrind(LOW, low, args.path), callgrind(HIGH, high, args.path)
    print(f"instructions/request: {round((ir_high - ir_low) / (HIGH - LOW))}")
    if args.top:
        top(low, high, args.top)
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    if args.wrk:
        wrk(5)


if __name__ == "__main__":
    main()
