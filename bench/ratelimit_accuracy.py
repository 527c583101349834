#!/usr/bin/env python3
"""The Redis accuracy scenario (issue 11 section 3): 3 gateway processes share one cluster-wide limit of
R requests/s through Redis, driven unevenly (1, 2 and 4 keep-alive connections) far above R; the figure is
admitted / allowed over the steady state (after the first second). Goal: within -5% / +2%.

    .venv/bin/python bench/ratelimit_accuracy.py                       # R=200, 8 s, one Redis server, 3 runs
    .venv/bin/python bench/ratelimit_accuracy.py --topology cluster    # a 3-node Redis Cluster
    .venv/bin/python bench/ratelimit_accuracy.py --topology sentinel --rate 500 --seconds 10 --runs 5

The load and the measure are tests/e2e/ratelimit_accuracy.py's (the test asserts the bounds; this
repeats the run and reports each figure, the median and the spread)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=200, help="the limit, requests/s (burst: rate/10)")
    ap.add_argument("--seconds", type=float, default=8.0, help="one run's length")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--topology", choices=("server", "cluster", "sentinel"), default="server")
    args = ap.parse_args()
    from ratelimit_accuracy import main as run

    figures = [run(args.rate, args.seconds, args.topology) for _ in range(args.runs)]
    print(f"admitted/allowed, {args.runs} runs ({args.topology}): "
          + ", ".join(f"{f:.4f}" for f in figures)
          + f"; median {statistics.median(figures):.4f}, range {min(figures):.4f}..{max(figures):.4f}"
          + ("" if all(0.95 <= f <= 1.02 for f in figures) else "  (outside -5%/+2%)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
