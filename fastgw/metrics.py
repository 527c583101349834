"""Prometheus metrics: what a worker reports (`worker_snapshot`) and the exposition the supervisor
serves at the admin listener's `/metrics` (`render`), summed over the workers. docs/metrics.md.

A snapshot is plain data (msgspec and JSON encodable), so it crosses the supervisor's control
channel as it is:

    {"pid": 1234, "families": [family, ...]}
    family = {"name": "fastgw_requests_total", "type": "counter" | "gauge" | "histogram",
              "help": "...", "labels": ["route", ...],
              "samples": [[label values, value], ...]                # counter, gauge
              "bounds": [0.005, ...],                                # histogram only
              "samples": [[label values, [cumulative counts per bound and +Inf], sum], ...]}

Families come from collectors: functions of a worker returning a list of families. `register` adds
one (later series, rate limits, health checks, go through it); the request-path counters, the
connection gauges and the plugin hook statistics are the built-in ones.

`render(snapshots, process)` sums every sample with the same name and labels over the snapshots
(counters, gauges, histogram buckets alike). Workers in the middle of a reload may briefly disagree
on histogram bounds: the buckets rendered are then the bounds all of them have, whose cumulative
counts add up exactly. `process` is the supervisor's own: {"version": str, "workers": int,
"reloads_ok": int, "reloads_failed": int, "last_reload_timestamp": float (Unix time of the last
successful load, the start included) or None, "start_timestamp": float or None}; missing keys are
left out of the exposition.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

from . import _core

__all__ = ["CONTENT_TYPE", "Collector", "counter", "gauge", "histogram", "register", "render", "worker_snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Family = dict
Collector = Callable[[object], Iterable[Family]]


def counter(name: str, help_text: str, labels: list[str], samples: list) -> Family:
    return {"name": name, "type": "counter", "help": help_text, "labels": labels, "samples": samples}


def gauge(name: str, help_text: str, labels: list[str], samples: list) -> Family:
    return {"name": name, "type": "gauge", "help": help_text, "labels": labels, "samples": samples}


def histogram(name: str, help_text: str, labels: list[str], bounds: list[float], samples: list) -> Family:
    return {"name": name, "type": "histogram", "help": help_text, "labels": labels, "bounds": bounds,
            "samples": samples}


def _request_families(worker) -> list[Family]:
    metrics = worker.runtime.metrics
    if metrics is None:
        return []
    requests, nbytes_in, nbytes_out, durations, first_bytes = [], [], [], [], []
    for stats in metrics.requests.values():
        if not stats.requests:      # a pair's series appear with its first request
            continue
        labels = [stats.route, stats.upstream]
        for code, n in stats.statuses().items():
            requests.append([[*labels, code], n])
        nbytes_in.append([labels, stats.bytes_in])
        nbytes_out.append([labels, stats.bytes_out])
        counts, total = stats.duration_buckets()
        durations.append([labels, counts, total])
        counts, total = stats.first_byte_buckets()
        if counts[-1]:
            first_bytes.append([labels, counts, total])
    # every pair of one runtime has its bounds (compile_counters keeps only counters that fit them)
    bounds = list(metrics.unrouted.bounds)
    pair = ["route", "upstream"]
    return [
        counter("fastgw_requests_total", "Requests (exchanges) by route, upstream and status, as answered "
                "to the client; code \"0\" when no status was sent.", [*pair, "code"], requests),
        counter("fastgw_request_bytes_total", "Bytes received from clients (heads and bodies).", pair, nbytes_in),
        counter("fastgw_response_bytes_total", "Bytes sent to clients (heads and bodies).", pair, nbytes_out),
        histogram("fastgw_request_duration_seconds", "Time from the request head to the end of the response "
                  "(or of the exchange).", pair, bounds, durations),
        histogram("fastgw_upstream_latency_seconds", "Time from the upstream connection being ready (pooled "
                  "or new) to the response head's arrival.", pair, bounds, first_bytes),
    ]


def _upstream_families(worker) -> list[Family]:
    metrics = worker.runtime.metrics
    if metrics is None:
        return []
    failures, hits, misses, retries, overflows, exhausted = [], [], [], [], [], []
    for name, stats in metrics.upstreams.items():
        for kind, n in stats.failure_counts().items():
            failures.append([[name, kind], n])
        hits.append([[name], stats.pool_hits])
        misses.append([[name], stats.pool_misses])
        retries.append([[name], stats.retries])
        overflows.append([[name], stats.retry_overflows])
        exhausted.append([[name], stats.retries_exhausted])
    return [
        counter("fastgw_upstream_failures_total", "Failed upstream attempts by kind (a retried attempt counts "
                "too).", ["upstream", "kind"], failures),
        counter("fastgw_upstream_pool_hits_total", "Requests sent on a pooled keep-alive connection.",
                ["upstream"], hits),
        counter("fastgw_upstream_pool_misses_total", "Requests that needed a new upstream connection.",
                ["upstream"], misses),
        counter("fastgw_upstream_retries_total", "Tries sent again: fail-overs and route retries "
                "(docs/retries.md).", ["upstream"], retries),
        counter("fastgw_upstream_retry_overflows_total", "Retries not made because the retry budget or "
                "max_retries refused them (flag UOR).", ["upstream"], overflows),
        counter("fastgw_upstream_retries_exhausted_total", "Requests whose route's retries were used up "
                "(flag URX).", ["upstream"], exhausted),
    ]


def _connection_families(worker) -> list[Family]:
    clients, upstream_active, upstream_idle = _core.connection_counts(worker)
    return [
        gauge("fastgw_client_connections_active", "Open client connections.", [], [[[], clients]]),
        gauge("fastgw_upstream_connections_active", "Upstream connections connecting or carrying a request.",
              [], [[[], upstream_active]]),
        gauge("fastgw_upstream_connections_idle", "Upstream connections idle in a keep-alive pool.", [],
              [[[], upstream_idle]]),
    ]


def _plugin_families(worker) -> list[Family]:
    durations, errors, over_budget = [], [], []
    for (plugin, phase), st in sorted(worker.plugin_stats().items()):
        buckets = st.buckets()
        durations.append([[plugin, phase], [n for _, n in buckets], st.total_seconds])
        errors.append([[plugin, phase], st.errors])
        over_budget.append([[plugin, phase], st.over_budget])
    labels = ["plugin", "phase"]
    return [
        histogram("fastgw_plugin_duration_seconds", "Time spent in one plugin hook per call (its _count is "
                  "the calls).", labels, list(_core.DURATION_BUCKETS), durations),
        counter("fastgw_plugin_errors_total", "Plugin hook calls that raised or answered wrongly.", labels, errors),
        counter("fastgw_plugin_over_budget_total", "Plugin hook calls that took longer than the plugin's "
                "budget.", labels, over_budget),
    ]


def _dropped_families(worker) -> list[Family]:
    return [
        counter("fastgw_access_log_dropped_total", "Access log lines dropped because the sink could not keep "
                "up.", [], [[[], getattr(worker, "access_log_dropped", 0)]]),
        counter("fastgw_tracing_spans_dropped_total", "Spans dropped because the collector could not keep up "
                "or was unreachable.", [], [[[], getattr(worker, "spans_dropped", 0)]]),
    ]


_collectors: list[Collector] = [_request_families, _upstream_families, _connection_families, _plugin_families,
                                _dropped_families]


def register(collector: Collector) -> None:
    """Adds a collector: `collector(worker)` returns families (see the module docstring)."""
    _collectors.append(collector)


def worker_snapshot(worker) -> dict:
    """This worker's families. Runs on the worker's loop, off the request path."""
    families = []
    for collect in _collectors:
        families.extend(collect(worker))
    return {"pid": os.getpid(), "families": families}


# ---- exposition ------------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(names, values, extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Merged:
    def __init__(self, family: Family):
        self.name = family["name"]
        self.type = family["type"]
        self.help = family["help"]
        self.labels = list(family["labels"])
        self.bounds: list[float] | None = list(family["bounds"]) if self.type == "histogram" else None
        self.samples: dict[tuple, object] = {}

    def add(self, family: Family) -> None:
        if self.type != "histogram":
            for values, value in family["samples"]:
                key = tuple(values)
                self.samples[key] = self.samples.get(key, 0) + value
            return
        bounds = list(family["bounds"])
        if bounds != self.bounds:
            self._restrict(bounds)
        index = {b: i for i, b in enumerate(bounds)}
        for values, counts, total in family["samples"]:
            picked = [counts[index[b]] for b in self.bounds] + [counts[-1]]
            key = tuple(values)
            had = self.samples.get(key)
            if had is None:
                self.samples[key] = [picked, total]
            else:
                self.samples[key] = [[a + b for a, b in zip(had[0], picked, strict=True)], had[1] + total]

    def _restrict(self, bounds: list[float]) -> None:
        keep = [i for i, b in enumerate(self.bounds) if b in set(bounds)]
        self.bounds = [self.bounds[i] for i in keep]
        for key, (counts, total) in self.samples.items():
            self.samples[key] = [[counts[i] for i in keep] + [counts[-1]], total]

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for values in sorted(self.samples):
            value = self.samples[values]
            if self.type != "histogram":
                out.append(f"{self.name}{_labels(self.labels, values)} {_number(value)}")
                continue
            counts, total = value
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                le = f'le="{_number(float(bound))}"'
                out.append(f"{self.name}_bucket{_labels(self.labels, values, le)} {n}")
            out.append(f"{self.name}_sum{_labels(self.labels, values)} {_number(float(total))}")
            out.append(f"{self.name}_count{_labels(self.labels, values)} {counts[-1]}")
        return out


def _process_families(process: dict) -> list[Family]:
    out = []
    if "version" in process:
        out.append(gauge("fastgw_build_info", "Always 1; the labels say which fastgw runs.", ["version"],
                         [[[process["version"]], 1]]))
    if "workers" in process:
        out.append(gauge("fastgw_workers", "Worker processes the supervisor runs.", [],
                         [[[], process["workers"]]]))
    if "reloads_ok" in process or "reloads_failed" in process:
        out.append(counter("fastgw_config_reloads_total", "Configuration reloads by result.", ["result"],
                           [[["ok"], process.get("reloads_ok", 0)], [["failed"], process.get("reloads_failed", 0)]]))
    if process.get("last_reload_timestamp") is not None:
        out.append(gauge("fastgw_config_last_reload_success_timestamp_seconds", "Unix time of the last "
                         "configuration load that succeeded (the start included).", [],
                         [[[], process["last_reload_timestamp"]]]))
    if process.get("start_timestamp") is not None:
        out.append(gauge("fastgw_start_time_seconds", "Unix time the supervisor started.", [],
                         [[[], process["start_timestamp"]]]))
    return out


def render(snapshots: list[dict], process: dict) -> str:
    """The Prometheus text exposition (format 0.0.4) of the workers' snapshots, summed."""
    merged: dict[str, _Merged] = {}
    for family in [*_process_families(process), *(f for s in snapshots for f in s["families"])]:
        m = merged.get(family["name"])
        if m is None:
            m = merged[family["name"]] = _Merged(family)
        m.add(family)
    lines = []
    for name in sorted(merged):
        lines.extend(merged[name].lines())
    return "\n".join(lines) + "\n"


from . import tunnels as _tunnels  # noqa: E402,F401  (registers the tunnel and stream families)
