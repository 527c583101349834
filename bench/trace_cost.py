"""Instructions per request that tracing adds, counted by callgrind on the sans-socket request path
(tests/support/fakeloop.py: a real Worker, ClientConn, Exchange and UpstreamConn on fake transports).

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*data_received*' \\
        --callgrind-out-file=/tmp/cg.%p .venv/bin/python bench/trace_cost.py MODE [N]
    callgrind_annotate /tmp/cg.<pid> | head          # "PROGRAM TOTALS" / N = Ir per request

MODE: off (no `tracing:`), rate0 (tracing on, nothing sampled: parse, ids, the upstream header),
rate1pct (the gateway starts every trace, 1% sampled), sampled (every exchange sampled and queued).
Only the protocol callbacks are counted, where the request path runs; the exporter's encoding runs
later on the loop, off that path: `bench/trace_cost.py --encode R` encodes 900 sampled exchanges R times
(callgrind totals of R=1 and R=3, without --collect-atstart=no, differ by two encodings).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fakeloop import CONFIG, Harness, ok_head  # noqa: E402

MODES = {
    "off": "",
    "rate0": "tracing: {enabled: true, sample_rate: 0}\n",
    "rate1pct": "tracing: {enabled: true, sample_rate: 0.01}\n",
    "sampled": "tracing: {enabled: true, sample_rate: 1}\n",
}
REQUEST = b"GET /api/users HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = ok_head(26) + b"x" * 26


def run(mode: str, n: int) -> Harness:
    """n + 1 requests on one client and one upstream connection: n below both keep-alive limits
    (max_requests_per_connection and keepalive.max_requests, 1000), or the fake upstream stalls."""
    h = Harness(CONFIG + MODES[mode])
    if hasattr(h.worker, "traces"):
        h.worker.traces.max_queue = n * 4 + 16
    h.client.data_received(REQUEST)
    up, ut = h.upstream(0)
    up.data_received(RESPONSE)
    for _ in range(n):
        h.client.data_received(REQUEST)
        up.data_received(RESPONSE)
        h.ct.drain()
        h.ct.written.clear()
        ut.written.clear()
    return h


def encode_cost(repeat: int, n: int = 900) -> None:
    """Encodes the spans of n sampled exchanges `repeat` times (the first also imports and warms up:
    callgrind totals of two repeat counts differ by the encoding alone)."""
    from fastgw.tracing import encode_spans
    h = run("sampled", n)
    records = h.worker.traces.take(10**9)
    spans = sum(r[0] for r in records)
    for _ in range(repeat):
        t0 = time.perf_counter()
        encode_spans(records, h.worker.traces.clock_offset, "bench")
        print(f"encode: {(time.perf_counter() - t0) / spans * 1e6:.2f} us/span over {spans} spans")


if __name__ == "__main__":
    if sys.argv[1] == "--encode":
        encode_cost(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    else:
        run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 900)
