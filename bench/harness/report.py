"""Aggregation (medians over rounds), the stdout table, the ratios and the README section."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

#: Figures per proxy and scenario, in the JSON; every one is a number.
FIGURES = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_us_per_req",
    "peak_rss_mib",
    "errors",
    "non_2xx",
    "requests",
    "proxy_cpu_util",
    "upstream_cpu_us_per_req",
    "loadgen_cpu_us_per_req",
    "open_loop_rate",
    "open_loop_p50_ms",
    "open_loop_p99_ms",
    "open_loop_errors",
)
_SUMMED = {"errors", "non_2xx", "requests"}
_MAXED = {"peak_rss_mib"}


def aggregate(rounds: list[dict]) -> dict:
    """Medians over rounds; errors, non-2xx and requests summed; peak RSS the largest."""
    out = {}
    for key in rounds[0]:
        vals = [r[key] for r in rounds]
        if key in _SUMMED:
            out[key] = sum(vals)
        elif key in _MAXED:
            out[key] = max(vals)
        else:
            out[key] = statistics.median(vals)
    return out


def ratios(results: dict) -> dict:
    """{scenario: {"fastgw/nginx": {...}, "fastgw/haproxy": {...}}} for rps, CPU per request and p99."""
    out: dict = {}
    for scen, peers in results.items():
        fg = peers.get("fastgw", {}).get("median")
        if not fg:
            continue
        for other in ("nginx", "haproxy"):
            ot = peers.get(other, {}).get("median")
            if not ot:
                continue
            out.setdefault(scen, {})[f"fastgw/{other}"] = {
                k: (fg[k] / ot[k] if ot[k] else None)
                for k in ("rps", "cpu_us_per_req", "p99_ms", "peak_rss_mib")
            }
    return out


def _fmt(v: float, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def table(doc: dict) -> str:
    """A markdown table, one row per scenario and peer, then the fastgw ratios."""
    lines = [
        "| scenario | peer | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req | peak RSS MiB | errors | non-2xx "
        "| open-loop req/s | open-loop p99 ms |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scen, peers in doc["results"].items():
        for peer, res in peers.items():
            m = res["median"]
            cpu = "-" if peer == "direct" else _fmt(m["cpu_us_per_req"])
            rss = "-" if peer == "direct" else _fmt(m["peak_rss_mib"])
            lines.append(
                f"| {scen} | {peer} | {_fmt(round(m['rps']))} | {_fmt(m['p50_ms'], 2)} | {_fmt(m['p90_ms'], 2)} "
                f"| {_fmt(m['p99_ms'], 2)} | {cpu} | {rss} | {m['errors']} | {m['non_2xx']} "
                f"| {_fmt(round(m['open_loop_rate']))} | {_fmt(m['open_loop_p99_ms'], 1)} |"
            )
    rat = doc.get("ratios") or {}
    if rat:
        lines += [
            "",
            "| scenario | ratio | req/s | CPU µs/req | p99 | peak RSS |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for scen, pairs in rat.items():
            for name, r in pairs.items():
                cells = " | ".join(
                    "-" if r[k] is None else f"{r[k]:.2f}"
                    for k in ("rps", "cpu_us_per_req", "p99_ms", "peak_rss_mib")
                )
                lines.append(f"| {scen} | {name} | {cells} |")
    return "\n".join(lines)


def header(doc: dict) -> str:
    m = doc["machine"]
    s = doc["settings"]
    v = doc["versions"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items())
    feats = "; ".join(f"{p}: {', '.join(f) or 'none'}" for p, f in doc["gateway_features"].items())
    skipped = "; ".join(f"{p}: {why}" for p, why in doc["skipped"].items()) or "none"
    return (
        f"- {doc['date']} on {m['hostname']} ({m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}); "
        f"{s['rounds']} round(s) of {s['duration_s']} s per peer and scenario, open loop {s['open_loop_s']} s; "
        f"pinning: upstream + load generators on CPU {s['load_cpus']}, proxy on CPU {s['proxy_cpus']}.\n"
        f"- Versions: {vers}.\n"
        f"- Gateway features exercised: {feats}.\n"
        f"- Skipped peers: {skipped}."
    )


README_BEGIN = "<!-- bench:latest:begin -->"
README_END = "<!-- bench:latest:end -->"


def update_readme(readme: Path, doc: dict) -> bool:
    text = readme.read_text()
    block = f"{README_BEGIN}\n{header(doc)}\n\n{table(doc)}\n{README_END}"
    new, n = re.subn(
        re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S
    )
    if n:
        readme.write_text(new)
    return bool(n)
