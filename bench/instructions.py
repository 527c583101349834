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
    .venv/bin/python bench/instructions.py --rate-limit local    # the `ratelimit` scenario's route
    .venv/bin/python bench/instructions.py --rate-limit cluster  # the same limit through Redis
    .venv/bin/python bench/instructions.py --access-log --metrics --tracing 0.01   # issue 9's `observed`

With --access-log or --tracing, the work off the request path is counted too, per thread (callgrind
--separate-threads): the access log's writer thread (the whole file written before the run ends), and the
span export's encoding (fastgw.tracing.encode_spans over what the run queued), which in a worker runs on
the loop thread; here it runs on a thread of its own only so that it can be reported apart, and it is
added to the request's sum. Sampling is random, so the trace RNG is seeded (FASTGW_IR_SEED) and the
export is also given per sampled exchange and scaled by RATE ("normalized").

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



# --rate-limit: the `ratelimit` scenario's policy (a client-IP limit that admits everything), local
# or, for `cluster`, shared through Redis (its lease primed once; see prime_leases).
RATE_LIMIT = ("{type: rate_limit, headers: [], limits: [{rate: 10000000, key: [client_ip]%s}]}")
REDIS = "redis: {url: 'redis://127.0.0.1:9/0'}\n"


# --resilience: two targets (passive health is on by default from two), and with "all" also a
# retry policy (budget on), circuit breakers and route timeouts, none of them triggered.
RESILIENCE = {
    "targets": """targets: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}]""",
    "all": """targets: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}]
    circuit_breakers: {}""",
}
RESILIENT_ROUTE = "upstream: origin, retry: {attempts: 2, retry_on: [5xx]}"


def _harness():
    sys.path.insert(0, str(ROOT))
    from bench.harness import peers, scenarios

    return peers, scenarios


def scenario_text(text: str, policies: list[str]) -> tuple[str, list[str]]:
    """The config of FASTGW_IR_SCENARIO (--scenario) over CONFIG, and the policies it adds."""
    scenario = os.environ.get("FASTGW_IR_SCENARIO", "get26")
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
        start = text.index("routes:\n") + 8
        end = text.index("\n", text.index("  - {name: all", start)) + 1
        text = text[:start] + "\n".join(lines) + "\n" + text[end:]
    elif scenario != "get26":
        raise SystemExit(f"unknown scenario {scenario!r} (get26, apikey, gateway)")
    return text, policies


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


def config_text() -> str:
    """CONFIG, with FASTGW_IR_POLICIES native no-op policies on the route (--policies N), the rate limit
    of FASTGW_IR_RATE_LIMIT (--rate-limit local|cluster), the FASTGW_IR_RESILIENCE variant
    (--resilience targets|retry|all|timeouts), the access log (--access-log FORMAT:
    FASTGW_IR_ACCESS_LOG=FORMAT:PATH), metrics and tracing (--metrics, --tracing)."""
    text = CONFIG
    al = os.environ.get("FASTGW_IR_ACCESS_LOG")
    if al:
        fmt, path = al.split(":", 1)
        text = text.replace("access_log: {enabled: false}",
                            f"access_log: {{enabled: true, format: {fmt}, path: '{path}'}}")
    if os.environ.get("FASTGW_IR_METRICS"):
        text += "metrics: {enabled: true}\n"
    rate = os.environ.get("FASTGW_IR_TRACING")
    if rate:
        text += (f"tracing: {{enabled: true, sample_rate: {rate}, "
                 "otlp: {endpoint: 'http://127.0.0.1:9/v1/traces'}}\n")
    mode = os.environ.get("FASTGW_IR_RESILIENCE")
    if mode:
        text = text.replace("targets: [{address: 127.0.0.1:9001}]", RESILIENCE["targets" if mode == "targets"
                                                                              else "all"])
        if mode == "retry":
            text = text.replace("    circuit_breakers: {}\n", "")
        if mode != "targets":
            route = RESILIENT_ROUTE + (", timeouts: {request: 30s, backend_request: 10s}" if mode == "timeouts"
                                       else "")
            text = text.replace("upstream: origin}", route + "}")
    n = int(os.environ.get("FASTGW_IR_POLICIES", "0"))
    rl = os.environ.get("FASTGW_IR_RATE_LIMIT", "")
    policies = ["{type: noop}"] * n
    text, policies = scenario_text(text, policies)
    if rl:
        policies.append(RATE_LIMIT % (", scope: cluster" if rl == "cluster" else ""))
    if not policies:
        return text
    text = text.replace("upstream: origin", f"upstream: origin, policies: [{', '.join(policies)}]")
    return text + (REDIS if rl == "cluster" else "")


def prime_leases() -> None:
    """A cluster limit's first request of a key waits for a lease from Redis; there is none on the fake
    loop, so the first request's key gets a lease that never runs out, and every later request takes
    the steady-state path: spending from the lease. (The lease requests themselves are amortized:
    one per `ceil(rate * lease)` requests; bench/README.md has their cost.)"""
    from fastgw.ratelimit_cluster import ClusterLimit

    original = ClusterLimit.needs_lease

    def prime(self, h, cost):
        lease = self._lease(h)
        lease.tokens, lease.expires = 10**15, float("inf")
        ClusterLimit.needs_lease = original
        return original(self, h, cost)

    ClusterLimit.needs_lease = prime


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

    if os.environ.get("FASTGW_IR_RATE_LIMIT") == "cluster":
        prime_leases()

    class Loop(FakeLoop):
        def call_soon(self, cb, *args):     # the sink's flush once its buffer is full: at once
            cb(*args)

    loop = Loop()
    if os.environ.get("FASTGW_IR_RESILIENCE") == "timeouts":
        import uvloop

        loop.call_later = uvloop.new_event_loop().call_later    # route timeouts: uvloop's real timers
    cfg = loads_config(config_text(), "yaml")
    worker = _core.Worker(loop, compile_runtime(cfg))
    if os.environ.get("FASTGW_IR_ACCESS_LOG"):
        from fastgw import accesslog
        worker.access_log = accesslog.open_sink(loop, cfg)
    if os.environ.get("FASTGW_IR_TRACING"):
        worker.traces.max_queue = 1 << 30
        if hasattr(worker.traces, "seed"):        # (builds before it: unseeded)
            worker.traces.seed(int(os.environ.get("FASTGW_IR_SEED", "12345")))
    client = worker()
    ct = CountingTransport(client, ("127.0.0.1", 8080), ("127.0.0.1", 40000))
    client.connection_made(ct)
    client_data = client.data_received
    ups = []                          # one upstream connection per target, opened by the first cycles
    while True:
        client_data(request)
        if len(loop.connects) == len(ups):
            break                     # a pooled connection took it: every target has one
        up = loop.connects[-1][0]
        ut = CountingTransport(up, ("127.0.0.1", 50000 + len(ups)), ("127.0.0.1", 9001 + len(ups)))
        up.connection_made(ut)
        up.data_received(RESPONSE)
        ups.append(up.data_received)
    ups[0](RESPONSE)                  # round robin: the next cycle is the first target's again
    k = len(ups)
    if k == 1 and len(requests) > 1:      # a scenario's request shapes in rotation
        up_data = ups[0]
        for i in range(2, n):
            request = requests[i % len(requests)]
            client_data(request)
            up_data(RESPONSE)
    elif k == 1:
        up_data = ups[0]
        for _ in range(n - 2):
            client_data(request)
            up_data(RESPONSE)
    for i in range(n - k - 1 if k > 1 else 0):
        client_data(request)
        ups[(i + 1) % k](RESPONSE)
    if len(loop.connects) != len(ups):
        raise SystemExit(f"the upstream connections were not reused ({len(loop.connects)} connects)")
    if not ct.last.startswith(b"HTTP/1.1 200 OK\r\n") or not ct.last.endswith(b"xyz"):
        raise SystemExit(f"unexpected response: {ct.last!r}")
    if not ut.last.startswith(request[: request.index(b"\r\n") + 2]):
        raise SystemExit(f"unexpected upstream request: {ut.last!r}")
    stats = {}
    if os.environ.get("FASTGW_IR_TRACING"):
        import threading

        from fastgw.tracing import encode_spans
        records = worker.traces.take(1 << 30)
        stats["sampled"] = len(records)
        stats["spans"] = sum(r[0] for r in records)
        out = []

        def export():                         # a worker does this on its loop, 512 spans a batch
            for i in range(0, len(records), 256):
                out.append(encode_spans(records[i:i + 256], worker.traces.clock_offset, "fastgw"))

        # (before the writer is stopped: callgrind numbers threads by slot, and reuses a finished one's)
        t = threading.Thread(target=export, name="export")
        t.start()
        t.join()
        stats["export_bytes"] = sum(map(len, out))
    if worker.access_log is not None:
        sink = worker.access_log
        sink.close(3600.0)                    # the writer thread writes everything, inside the count
        stats["lines"], stats["dropped"] = sink.lines, sink.dropped
    if os.environ.get("FASTGW_IR_STATS"):
        Path(os.environ["FASTGW_IR_STATS"]).write_text(json.dumps(stats))


def _totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def callgrind(n: int, out: Path, path: str) -> tuple[list[int], dict]:
    """Ir per thread (thread 1: the loop; then in start order: the access log's writer, the export),
    and the run's stats (lines written, exchanges sampled)."""
    stats = out.with_suffix(".stats")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1", FASTGW_IR_STATS=str(stats))
    # the tree this script is in, not whichever fastgw the venv's (editable) install points at
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
           sys.executable, __file__, "--cycles", str(n), "--path", path]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"callgrind run failed ({r.returncode})")
    files = sorted(out.parent.glob(out.name + "-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return [_totals(f) for f in files], json.loads(stats.read_text()) if stats.exists() else {}


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
    a, b = collections.Counter(), collections.Counter()
    for f in low.parent.glob(low.name + "-*"):
        a.update(per_function(f))
    for f in high.parent.glob(high.name + "-*"):
        b.update(per_function(f))
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
    ap.add_argument("--rate-limit", choices=("local", "cluster"),
                    help="the ratelimit scenario's client-IP limit on the route: local, or through Redis")
    ap.add_argument("--resilience", choices=("targets", "retry", "all", "timeouts"),
                    help="two targets (passive health on); and a retry policy (retry); and circuit breakers "
                         "(all); all and route timeouts (timeouts): configured, never triggered")
    ap.add_argument("--access-log", nargs="?", const="json", choices=("json", "text"), metavar="FORMAT",
                    help="the access log on (json, the default, or text), to a file; its writer thread counted")
    ap.add_argument("--metrics", action="store_true", help="metrics on (metrics: {enabled: true})")
    ap.add_argument("--tracing", type=float, metavar="RATE",
                    help="tracing on at sample_rate RATE; the export's encoding of the sampled spans counted")
    args = ap.parse_args()
    if args.rate_limit:
        os.environ["FASTGW_IR_RATE_LIMIT"] = args.rate_limit
    if args.policies:
        os.environ["FASTGW_IR_POLICIES"] = str(args.policies)
    if args.scenario != "get26":      # the callgrind children get it from the environment
        os.environ["FASTGW_IR_SCENARIO"] = args.scenario
    if args.resilience:
        os.environ["FASTGW_IR_RESILIENCE"] = args.resilience
    if args.metrics:
        os.environ["FASTGW_IR_METRICS"] = "1"
    if args.tracing is not None:
        os.environ["FASTGW_IR_TRACING"] = repr(args.tracing)
    if args.cycles:
        run_cycles(args.cycles, args.path)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    d = Path(args.keep or tempfile.mkdtemp(prefix="fastgw-ir-"))
    d.mkdir(parents=True, exist_ok=True)
    low, high = d / f"callgrind.{LOW}", d / f"callgrind.{HIGH}"
    if args.access_log:
        os.environ["FASTGW_IR_ACCESS_LOG"] = f"{args.access_log}:{d / 'access.log'}"
    (ir_low, st_low), (ir_high, st_high) = callgrind(LOW, low, args.path), callgrind(HIGH, high, args.path)
    if len(ir_low) != len(ir_high):
        raise SystemExit(f"the runs had different threads: {len(ir_low)} and {len(ir_high)}")
    per = [(b - a) / (HIGH - LOW) for a, b in zip(ir_low, ir_high, strict=True)]
    print(f"instructions/request: {round(sum(per))}")
    names = ["loop"] + (["access log writer"] if args.access_log else []) + (["export"] if args.tracing else [])
    if len(per) != len(names):
        raise SystemExit(f"{len(per)} threads counted, {len(names)} expected: {names}")
    if len(per) > 1:
        for i, v in enumerate(per):
            print(f"  thread {i + 1} ({names[i] if i < len(names) else '?'}): {v:,.0f}")
    if args.tracing:
        sampled = st_high.get("sampled", 0) - st_low.get("sampled", 0)
        spans = st_high.get("spans", 0) - st_low.get("spans", 0)
        expected = args.tracing * (HIGH - LOW)
        print(f"  sampled exchanges in the window: {sampled} ({spans} spans; {expected:g} expected at this rate)")
        if sampled and len(per) > 1:
            each = per[-1] * (HIGH - LOW) / sampled
            print(f"  export per sampled exchange: {each:,.0f}; normalized to rate {args.tracing:g}: "
                  f"{each * args.tracing:,.0f}/request, sum {round(sum(per[:-1]) + each * args.tracing)}")
    if args.top:
        top(low, high, args.top)
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    if args.wrk:
        wrk(5)


if __name__ == "__main__":
    main()
