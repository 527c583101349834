"""Prometheus metrics: a stand-in until the metrics branch lands (docs/metrics.md there).

The contract (/work/obs-contract.md): `worker_snapshot(worker)` runs in a worker and returns plain
msgspec-encodable data; `render(snapshots, process)` runs in the supervisor over every worker's
snapshot and writes the text exposition format 0.0.4. `process` carries what only the supervisor
knows: `version`, `workers` (configured), `workers_ready`, `workers_unanswered` (no snapshot in
time), `reloads_ok`, `reloads_failed`, `last_reload_timestamp` (Unix time of the last load that
succeeded, the start included), `start_timestamp` and `generation`.
"""

from __future__ import annotations

__all__ = ["CONTENT_TYPE", "render", "worker_snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def worker_snapshot(worker) -> dict:
    return {"requests_total": worker.requests_total, "connections_active": worker.active_clients()}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(snapshots: list[dict], process: dict) -> str:
    requests = sum(s.get("requests_total", 0) for s in snapshots)
    lines = [
        "# HELP fastgw_build_info fastgw build information.",
        "# TYPE fastgw_build_info gauge",
        f'fastgw_build_info{{version="{_escape(str(process.get("version", "")))}"}} 1',
        "# HELP fastgw_workers Worker processes the supervisor runs.",
        "# TYPE fastgw_workers gauge",
        f"fastgw_workers {process.get('workers', 0)}",
        "# HELP fastgw_config_reloads_total Configuration reloads by result.",
        "# TYPE fastgw_config_reloads_total counter",
        f'fastgw_config_reloads_total{{result="ok"}} {process.get("reloads_ok", 0)}',
        f'fastgw_config_reloads_total{{result="failed"}} {process.get("reloads_failed", 0)}',
    ]
    if process.get("last_reload_timestamp") is not None:
        lines += ["# HELP fastgw_config_last_reload_success_timestamp_seconds Unix time of the last "
                  "configuration load that succeeded (the start included).",
                  "# TYPE fastgw_config_last_reload_success_timestamp_seconds gauge",
                  f"fastgw_config_last_reload_success_timestamp_seconds {process['last_reload_timestamp']}"]
    lines += ["# HELP fastgw_requests_total Requests the workers that answered have started.",
              "# TYPE fastgw_requests_total counter",
              f"fastgw_requests_total {requests}"]
    return "\n".join(lines) + "\n"
