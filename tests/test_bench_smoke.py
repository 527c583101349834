"""Smoke test of the macro benchmark harness (bench/run.py): a few seconds of every scenario with the
direct baseline and whichever peers are available, checking that it runs and writes well-formed results.

No timing assertion: the figures are only checked to be present and numeric.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import load, report  # noqa: E402
from harness.tools import which  # noqa: E402

WRK_TEXT = """Running 1s test @ http://127.0.0.1:8080
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  300.12us   9.10ms   91.00%
    Req/Sec    60.12k     2.01k   63.00k    80.00%
  Latency Distribution
     50%  750.00us
     75%  850.00us
     90%    1.02ms
     99%    2.50ms
  60500 requests in 1.00s, 9.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  60432.10
Transfer/sec:      9.10MB
"""

HTTPERF_TEXT = """Connection lifetime histogram (time in ms):
             0.5 980
             1.5 15
             2.5 4
             7.5 1

Total: connections 1000 requests 1000 replies 1000 test-duration 1.000 s
Connection time [ms]: min 0.1 avg 0.2 max 7.6 median 0.5 stddev 0.3
Request rate: 999.8 req/s (1.0 ms/req)
Reply status: 1xx=0 2xx=990 3xx=0 4xx=6 5xx=4
Errors: total 3 client-timo 0 socket-timo 0 connrefused 0 connreset 3
"""


def test_parse_wrk_text():
    r = load.parse_wrk(WRK_TEXT)
    assert r["requests"] == 60500
    assert r["rps"] == pytest.approx(60432.10)
    assert r["p50_ms"] == pytest.approx(0.75)
    assert r["p90_ms"] == pytest.approx(1.02)
    assert r["p99_ms"] == pytest.approx(2.5)
    assert r["errors"] == 3
    assert r["non_2xx"] == 7


def test_parse_wrk_json_line_wins():
    line = (
        'WRKJSON {"requests": 1000, "duration_us": 2000000, "bytes": 5, "connect": 1, "read": 0, "write": 0, '
        '"status": 4, "timeout": 2, "p50_us": 500.0, "p90_us": 900.0, "p99_us": 1500.0, "max_us": 3000.0, '
        '"mean_us": 600.0}'
    )
    r = load.parse_wrk(WRK_TEXT + line + "\n")
    assert r["rps"] == pytest.approx(500.0)
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == pytest.approx((0.5, 0.9, 1.5))
    assert (r["errors"], r["non_2xx"]) == (3, 4)


def test_parse_httperf():
    r = load.parse_httperf(HTTPERF_TEXT)
    assert r["rate"] == pytest.approx(999.8)
    assert r["p50_ms"] == 1.0  # upper edge of the 0-1 ms bin
    assert r["p99_ms"] == 2.0  # 980 + 15 = 995 >= 990
    assert r["non_2xx"] == 10
    assert r["errors"] == 3


def test_wrk_script_escapes_and_rotates():
    reqs = [load.Request("GET", "/a?x=1", {"Host": 'h"1'}), load.Request("POST", "/b", {}, b"x" * 10)]
    s = load.wrk_script(reqs)
    assert "\\034" in s and 'string.rep("x", 10)' in s and "request = function()" in s
    assert "done = function" in load.wrk_script(reqs[:1])


def _numeric(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.timeout(180)
def test_harness_runs_and_writes_well_formed_results(tmp_path: Path):
    if not which("wrk") or not which("nginx"):
        pytest.fail(
            "the bench smoke test needs wrk and nginx (.ci/run installs them: apt-get install wrk nginx httperf)"
        )
    peers = ["direct", "fastgw", "nginx"] + (["haproxy"] if which("haproxy") else [])
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--no-install",
        "--duration=1",
        "--rounds=1",
        "--warmup=0",
        "--open-loop=0.2",
        "--open-loop-max-rate=500",
        "--routes=40",
        f"--peers={','.join(peers)}",
        f"--out={tmp_path}",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env, cwd=ROOT)
    assert r.returncode == 0, f"bench/run.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "| scenario | peer |" in r.stdout

    files = sorted(p for p in tmp_path.glob("bench-*.json"))
    assert len(files) == 1 and (tmp_path / "latest.json").exists()
    doc = json.loads(files[0].read_text())
    for key in (
        "date",
        "machine",
        "versions",
        "settings",
        "peers",
        "skipped",
        "gateway_features",
        "results",
        "ratios",
    ):
        assert key in doc, key
    assert doc["machine"]["cpus"] >= 1 and doc["versions"]["wrk"] and doc["versions"]["nginx"]
    tls_scenarios = {"https", "handshake-ecdsa", "handshake-rsa"}    # fastgw and nginx only, no direct
    assert set(doc["results"]) == {"get26", "get64k", "post4k", "c1000", "gateway", "policies4", "plugin",
                                   "accesslog", "observed"} | tls_scenarios
    ran = set(doc["peers"])
    assert "direct" in ran and "nginx" in ran
    for name in peers:
        assert name in ran or name in doc["skipped"], f"{name} neither ran nor was reported skipped"
    for scen, by_peer in doc["results"].items():
        assert set(by_peer) <= ran and ("direct" in by_peer) != (scen in tls_scenarios), scen
        for peer, res in by_peer.items():
            for fig in [res["median"], *res["rounds"]]:
                for key in report.FIGURES:
                    assert key in fig, f"{scen}/{peer}: {key} missing"
                    assert _numeric(fig[key]), f"{scen}/{peer}: {key} = {fig[key]!r}"
            m = res["median"]
            assert m["requests"] > 0 and m["rps"] > 0, f"{scen}/{peer}: no requests completed"
            assert m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"], f"{scen}/{peer}: percentiles out of order"
            if peer != "direct":
                assert m["peak_rss_mib"] > 0, f"{scen}/{peer}: no RSS sampled"
    for scen, pairs in doc["ratios"].items():
        for name, vals in pairs.items():
            assert set(vals) == {"rps", "cpu_us_per_req", "p99_ms", "peak_rss_mib"}, (scen, name)
