"""`python bench/run.py`: the macro benchmark. See bench/README.md for the method."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import load, peers, report, scenarios
from .procs import TreeSampler
from .tools import ensure, log, version

BENCH_DIR = Path(__file__).resolve().parent.parent
PEER_NAMES = ["direct", "fastgw", "nginx", "haproxy"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    ap.add_argument(
        "--quick", action="store_true", help="about a minute: 2 rounds of 1 s, 1 s warm-up, 0.5 s open loop"
    )
    ap.add_argument(
        "--scenarios", default=",".join(scenarios.SCENARIO_NAMES), help="comma-separated (default: all)"
    )
    ap.add_argument("--peers", default=",".join(PEER_NAMES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 8; quick 1)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 5; quick 2)")
    ap.add_argument(
        "--warmup", type=int, help="seconds of unmeasured wrk per peer and scenario (default 2; quick 1)"
    )
    ap.add_argument(
        "--open-loop", type=float, help="seconds of httperf per peer and scenario (default 5; quick 0.5)"
    )
    ap.add_argument(
        "--open-loop-max-rate",
        type=float,
        default=5000,
        help="cap on httperf's rate: it opens one connection per request (default %(default)s/s)",
    )
    ap.add_argument(
        "--routes", type=int, default=300, help="routes in the gateway scenario (default %(default)s)"
    )
    ap.add_argument(
        "--gateway-features",
        choices=["common", "each"],
        default="common",
        help="common: every proxy does only what all of them can (same work); each: every proxy does all it can",
    )
    ap.add_argument("--load-cpus", help="CPUs for the upstream and the load generators (default 0)")
    ap.add_argument("--proxy-cpus", help="CPUs for the proxy under test (default 1)")
    ap.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results", help="results folder (default bench/results)"
    )
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools")
    ap.add_argument("--update-readme", action="store_true", help="write the table into bench/README.md")
    ap.add_argument(
        "--serve",
        action="store_true",
        help="instead of benchmarking, run the upstream and fastgw for bench/locustfile.py until Ctrl-C",
    )
    ap.add_argument(
        "--serve-port", type=int, default=8080, help="the gateway's port with --serve (default %(default)s)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the temp dir with the generated configs and logs"
    )
    a = ap.parse_args(argv)
    q = a.quick
    a.duration = a.duration or (1 if q else 8)
    a.rounds = a.rounds or (2 if q else 5)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 2)
    a.open_loop = a.open_loop if a.open_loop is not None else (0.5 if q else 5.0)
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.peers = [p for p in a.peers.split(",") if p]
    bad = [p for p in a.peers if p not in PEER_NAMES]
    if bad:
        ap.error(f"unknown peer(s) {bad}; known: {', '.join(PEER_NAMES)}")
    return a


def pinning(a: argparse.Namespace) -> tuple[str | None, str | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if a.load_cpus or a.proxy_cpus:
        return a.load_cpus, a.proxy_cpus
    if len(cpus) < 2:
        log("only one CPU: running without pinning")
        return None, None
    return str(cpus[0]), str(cpus[1])


def machine() -> dict:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def run(a: argparse.Namespace) -> dict:
    started = time.monotonic()
    load_cpus, proxy_cpus = pinning(a)
    if load_cpus:
        # The harness itself (and its sampling thread) stays off the proxy's CPU.
        os.sched_setaffinity(0, {int(c) for c in load_cpus.replace("-", ",").split(",") if c})
    need = ["wrk", "nginx", "httperf", "taskset"]
    if "haproxy" in a.peers:
        need.append("haproxy")
    tools = ensure(need, install=not a.no_install)
    if not tools["wrk"]:
        raise SystemExit("bench: wrk is required and could not be found or installed")
    if not tools["nginx"]:
        raise SystemExit("bench: nginx is required (it is the upstream) and could not be found or installed")
    if not tools["taskset"]:
        load_cpus = proxy_cpus = None
        log("taskset is missing: running without pinning")
    if not tools["httperf"]:
        log("httperf is missing: skipping the open-loop figures (they will read 0)")
    versions = {k: version(k, v) for k, v in tools.items() if v and k != "taskset"}

    candidates: dict[str, peers.Peer] = {
        "direct": peers.Direct(),
        "fastgw": peers.Fastgw(),
        "nginx": peers.Nginx(tools.get("nginx"), versions.get("nginx", "")),
        "haproxy": peers.HAProxy(tools.get("haproxy"), versions.get("haproxy", "")),
    }
    active: list[peers.Peer] = []
    skipped: dict[str, str] = {}
    for name in a.peers:
        why = candidates[name].available()
        if why:
            log(f"skipping peer {name}: {why}")
            skipped[name] = why
        else:
            active.append(candidates[name])
    if "fastgw" in [p.name for p in active]:
        versions["fastgw"] = candidates["fastgw"].version

    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    log(f"work dir {tmp}; pinning: load on CPU {load_cpus}, proxy on CPU {proxy_cpus}")
    if "fastgw" in [p.name for p in active]:
        candidates["fastgw"].probe(tmp)
    proxies = [p for p in active if p.name != "direct"]
    if a.gateway_features == "common":
        common = frozenset(peers.ALL_FEATURES)
        for p in proxies:
            common &= p.features
        features = {p.name: common for p in active}
    else:
        features = {p.name: p.features for p in active}
    features["direct"] = frozenset()  # the upstream does no routing work

    upstream = peers.start_upstream(tools["nginx"], load_cpus, tmp)
    results: dict[str, dict] = {}
    scen_meta: dict[str, dict] = {}
    try:
        for scen in scenarios.build(a.scenarios, a.routes):
            results[scen.name] = run_scenario(
                a, scen, active, features, upstream, tools, load_cpus, proxy_cpus, tmp
            )
            scen_meta[scen.name] = {
                "description": scen.description,
                "connections": scen.connections,
                "request_shapes": len(scen.requests),
                "routes": len(scen.routes.hosts) if scen.routes else 1,
                "fastgw_policies": scen.fastgw_policies,
                "access_log": scen.access_log,
                "fastgw_config": scen.fastgw_config,
            }
    finally:
        upstream.stop()
        if not a.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")

    doc = {
        "schema": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "settings": {
            "quick": a.quick,
            "rounds": a.rounds,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "open_loop_s": a.open_loop,
            "open_loop_max_rate": a.open_loop_max_rate,
            "routes": a.routes,
            "gateway_features_mode": a.gateway_features,
            "load_cpus": load_cpus,
            "proxy_cpus": proxy_cpus,
            "wrk_threads": 1,
        },
        "peers": [p.name for p in active],
        "skipped": skipped,
        "gateway_features": {p.name: sorted(features[p.name]) for p in active},
        "figures": list(report.FIGURES),
        "scenarios": scen_meta,
        "results": results,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    doc["ratios"] = report.ratios(results)
    return doc


def run_scenario(a, scen, active, features, upstream, tools, load_cpus, proxy_cpus, tmp) -> dict:
    log(f"scenario {scen.name}: {scen.description}")
    procs: dict[str, peers.Proc | None] = {}
    ports: dict[str, int] = {}
    live: list[peers.Peer] = []
    sdir = tmp / scen.name
    sdir.mkdir()
    tls = peers.make_certificate(sdir / "certs", scen.tls) if scen.tls else None
    try:
        for p in active:
            cfg = peers.PeerConfig(upstream.port, scen.routes, features[p.name], scen.fastgw_policies,
                                   scen.access_log, scen.fastgw_config, tls, scen.tls_resumption,
                                   scen.nginx_http, scen.nginx_location, scen.ip_rate_limit)
            if p.name == "direct" and tls is not None:
                continue        # the upstream speaks plain HTTP: no baseline for a TLS scenario
            if p.name == "direct":
                procs[p.name], ports[p.name] = None, upstream.port
                live.append(p)
                continue
            try:
                proc = p.start(cfg, proxy_cpus, sdir)
                host = scen.requests[0].headers.get("Host", "127.0.0.1")
                peers.wait_ready(proc, host=host)
            except (RuntimeError, OSError) as e:
                log(f"skipping peer {p.name} in {scen.name}: it failed to start: {e}")
                continue
            procs[p.name], ports[p.name] = proc, proc.port
            live.append(p)
        # Every request shape must get a 2xx through every peer before anything is measured.
        for p in live:
            bad = []
            for r in scen.requests:
                try:
                    st = peers.http_status(ports[p.name], r.method, r.path, r.headers, r.body or None,
                                           tls=tls is not None)
                except OSError as e:
                    st = str(e)
                if not (isinstance(st, int) and 200 <= st < 300):
                    bad.append(f"{r.method} {r.headers.get('Host', '')}{r.path} -> {st}")
            if bad:
                log(
                    f"warning: {p.name} answers {len(bad)} of {len(scen.requests)} request shapes badly, e.g. {bad[0]}"
                )
        if a.warmup:
            for p in live:
                load.run_wrk(
                    tools["wrk"],
                    _url(ports[p.name], scen.tls is not None),
                    scen.requests,
                    scen.connections,
                    a.warmup,
                    load_cpus,
                    sdir,
                )
        rounds: dict[str, list[dict]] = {p.name: [] for p in live}
        for r in range(a.rounds):
            for p in live:  # A B C A B C ...: each peer in turn, same load
                fig = measure(
                    tools, scen, ports[p.name], procs[p.name], upstream, a.duration, load_cpus, sdir
                )
                rounds[p.name].append(fig)
                log(
                    f"  round {r + 1}/{a.rounds} {p.name:8s} {fig['rps']:10.0f} req/s  p99 {fig['p99_ms']:7.2f} ms  "
                    f"cpu {fig['cpu_us_per_req']:6.1f} µs/req  errors {fig['errors']} non-2xx {fig['non_2xx']}"
                )
        # Open loop: every peer at the same rate, half the lowest median maximum among the proxies.
        medians = {n: report.aggregate(rs) for n, rs in rounds.items()}
        basis = [m["rps"] for n, m in medians.items() if n != "direct"] or [
            m["rps"] for m in medians.values()
        ]
        rate = min(a.open_loop_max_rate, 0.5 * min(basis)) if basis else 0.0
        out: dict[str, dict] = {}
        for p in live:
            ol = {"rate": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": 0, "non_2xx": 0, "offered_rate": rate}
            if tools.get("httperf") and rate > 0 and a.open_loop > 0:
                ol, raw = load.run_httperf(
                    tools["httperf"], ports[p.name], scen.open_loop, rate, a.open_loop, load_cpus, sdir,
                    tls=scen.tls is not None)
                (sdir / f"httperf-{p.name}.txt").write_text(raw)
                log(
                    f"  open loop {p.name:8s} {ol['rate']:8.0f} req/s offered {rate:.0f}  p99 {ol['p99_ms']:.1f} ms  errors {ol['errors']}"
                )
            for fig in rounds[p.name]:
                fig["open_loop_rate"] = ol["rate"]
                fig["open_loop_p50_ms"] = ol["p50_ms"]
                fig["open_loop_p99_ms"] = ol["p99_ms"]
                fig["open_loop_errors"] = ol["errors"] + ol["non_2xx"]
            out[p.name] = {
                "features": sorted(features[p.name]),
                "rounds": rounds[p.name],
                "median": report.aggregate(rounds[p.name]),
                "open_loop": ol,
            }
        return out
    finally:
        peers.stop_all([pr for pr in procs.values() if pr is not None])


def _url(port: int, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def measure(tools, scen, port, proc, upstream, duration, load_cpus, sdir) -> dict:
    roots = [upstream.pid] + ([proc.pid] if proc else [])
    with TreeSampler(roots) as s:
        w, _raw, wrk_cpu = load.run_wrk(
            tools["wrk"], _url(port, scen.tls is not None), scen.requests, scen.connections, duration, load_cpus,
            sdir
        )
    n = max(1, w["requests"])
    proxy_cpu = s.cpu_s[proc.pid] if proc else 0.0
    return {
        "rps": w["rps"],
        "p50_ms": w["p50_ms"],
        "p90_ms": w["p90_ms"],
        "p99_ms": w["p99_ms"],
        "cpu_us_per_req": proxy_cpu * 1e6 / n,
        "peak_rss_mib": (s.peak_kib[proc.pid] / 1024) if proc else 0.0,
        "errors": w["errors"],
        "non_2xx": w["non_2xx"],
        "requests": w["requests"],
        "proxy_cpu_util": proxy_cpu / w["duration_s"] if w["duration_s"] else 0.0,
        "upstream_cpu_us_per_req": s.cpu_s[upstream.pid] * 1e6 / n,
        "loadgen_cpu_us_per_req": wrk_cpu * 1e6 / n,
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.serve:
        from .serve import serve

        load_cpus, proxy_cpus = pinning(a)
        return serve(a.serve_port, load_cpus, proxy_cpus, install=not a.no_install)
    doc = run(a)
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = doc["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = a.out / f"bench-{stamp}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    (a.out / "latest.json").write_text(path.read_text())
    print()
    print(report.header(doc))
    print()
    print(report.table(doc))
    print()
    print(f"results: {path}")
    if a.update_readme:
        if report.update_readme(BENCH_DIR / "README.md", doc):
            print("updated bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
