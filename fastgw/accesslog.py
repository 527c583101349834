"""The access log's compile step and its sink: per route, a native AccessLogPolicy (or none, when the
route's lines are off) for the log phase; per worker, one LineSink that the policies write into.
"""

from __future__ import annotations

from . import _core, events
from .auth.build import with_credentials_redacted
from .config import GatewayConfig
from .config.logs import parse_template, route_access_log
from .config.schema import Route


def _json_ops() -> tuple[list[tuple[bytes, str]], bytes]:
    ops = []
    for i, name in enumerate(_core.ACCESS_LOG_JSON_FIELDS):
        ops.append((("{" if i == 0 else ",").encode() + b'"%s":' % name.encode(), name))
    return ops, b"}\n"


def _text_ops(template: str) -> tuple[list[tuple[bytes, str]], bytes]:
    ops, tail = parse_template(template)
    return [(lit.encode(), name) for lit, name in ops], tail.encode() + b"\n"


def access_log_policy(cfg: GatewayConfig, route: Route | None) -> _core.AccessLogPolicy | None:
    """The access log step of `route`'s chain (route None: the chain of exchanges no route took)."""
    al = cfg.access_log
    own = route_access_log(route.access_log if route is not None else None)
    sample = own.sample if own.sample is not None else al.sample
    if not (al.enabled and own.enabled) or sample <= 0:
        return None
    json = (al.format or cfg.logging.format) == "json"
    ops, tail = _json_ops() if json else _text_ops(al.template)
    key = f"access_log/{route.name}" if route is not None else "access_log"
    query, redact = with_credentials_redacted(cfg, al.query, al.redact_params)
    return _core.AccessLogPolicy(key, json, ops, tail, sample, query, redact, al)


def _report_drops(dropped: int, total: int) -> None:
    events.emit("warning", "access_log_dropped", msg=f"access log behind: {dropped} lines dropped",
                dropped=dropped, dropped_total=total)


def open_sink(loop, cfg: GatewayConfig) -> _core.LineSink | None:
    al = cfg.access_log
    if not al.enabled:
        return None
    sink = _core.LineSink(loop, al.path, al.buffer_bytes, al.flush_interval, al.max_pending_bytes)
    sink.on_drop = _report_drops
    return sink


def check_sink(cfg: GatewayConfig) -> None:
    """Raises OSError when the access log's file cannot be opened for appending (a reload is
    refused then, rather than dropping every line)."""
    al = cfg.access_log
    if al.enabled and al.path not in ("stdout", "stderr"):
        with open(al.path, "ab"):
            pass


def apply(worker: _core.Worker, loop, cfg: GatewayConfig) -> None:
    """The worker's sink for `cfg` (at start and on each reload): made, reconfigured, or closed."""
    sink = worker.access_log
    al = cfg.access_log
    if sink is None:
        worker.access_log = open_sink(loop, cfg)
    elif not al.enabled:
        worker.access_log = None
        sink.close()
    else:
        sink.configure(al.path, al.buffer_bytes, al.flush_interval, al.max_pending_bytes)
