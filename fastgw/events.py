"""The event log: lifecycle, reloads and upstream failures, one line each, JSON or text by
`logging.format` (the switch the access log follows too).

    emit("error", "upstream_failure", msg="upstream connection refused", upstream="users", ...)

A JSON line is `{"time", "level", "pid", "event", "msg", ...fields}`; a text line is
`<time> <level> fastgw: <msg> event=<event> pid=<pid> key=value ...`, with each of a list field's
items (a rejected reload's errors) on a line of its own below. `time` is RFC 3339 UTC with
milliseconds. The supervisor writes its lines directly; a worker hands them to a LineSink
(`use_sink`), so that a stderr nobody reads cannot stall its loop.
"""

from __future__ import annotations

import datetime
import os
import sys

import orjson

__all__ = ["LEVELS", "configure", "emit", "flush_sink", "open_worker_sink", "reopen", "use_sink"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# A worker's event lines waiting to be written; past this they are dropped (a stderr nobody reads).
SINK_MAX_PENDING = 1 << 20


class _State:
    format = "json"
    threshold = LEVELS["info"]
    path = "stderr"
    file = None        # an open file, when `path` is a file path
    sink = None        # a worker's LineSink


_state = _State()


def configure(logging_cfg=None, *, format: str | None = None, level: str | None = None,
              events: str | None = None) -> None:
    """Takes `logging:` from a config (or its parts as keywords)."""
    if logging_cfg is not None:
        format, level, events = logging_cfg.format, logging_cfg.level, logging_cfg.events
    if format is not None:
        _state.format = format
    if level is not None:
        _state.threshold = LEVELS[level]
    if events is not None and events != _state.path:
        if _state.sink is not None:
            _state.sink.configure(events, 0, 1.0, SINK_MAX_PENDING)
            _state.path = events
            return
        if _state.file is not None:
            _state.file.close()
            _state.file = None
        _state.path = events
        if events not in ("stdout", "stderr"):
            _state.file = open(events, "ab", buffering=0)  # noqa: SIM115 - kept open for the process


def use_sink(sink) -> None:
    """A worker's lines go through `sink` (a LineSink); None: written directly again."""
    _state.sink = sink


def open_worker_sink(loop) -> None:
    """In a worker: lines go through a LineSink on `loop`, handed to its writer as they come."""
    from ._core import LineSink
    use_sink(LineSink(loop, _state.path, 0, 1.0, SINK_MAX_PENDING))


def flush_sink(timeout: float = 1.0) -> None:
    """A worker's end: its queued lines are written (waiting at most `timeout`), later ones directly."""
    sink, _state.sink = _state.sink, None
    if sink is not None:
        sink.close(timeout)


def reopen() -> None:
    """SIGUSR1: the event file is opened anew by its name (logrotate)."""
    if _state.sink is not None:
        _state.sink.reopen()
    elif _state.file is not None:
        path, _state.path = _state.path, None
        configure(events=path)


def enabled(level: str) -> bool:
    return LEVELS[level] >= _state.threshold


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value) -> str:
    s = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if not s or any(c in s for c in ' "=\n\t'):
        return orjson.dumps(s).decode()
    return s


def format_line(level: str, event: str, fields: dict) -> bytes:
    msg = fields.pop("msg", None) or event.replace("_", " ")
    if _state.format == "json":
        record = {"time": _now(), "level": level, "pid": os.getpid(), "event": event, "msg": msg}
        record.update(fields)
        return orjson.dumps(record, default=str) + b"\n"
    lists = {k: v for k, v in fields.items() if isinstance(v, list)}
    pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if k not in lists and v is not None)
    line = f"{_now()} {level} fastgw: {msg} event={event} pid={os.getpid()}" + (f" {pairs}" if pairs else "")
    for items in lists.values():
        line += "".join(f"\n  {item}" for item in items)
    return line.encode("utf-8", "replace") + b"\n"


def emit(level: str, event: str, **fields) -> None:
    """One event line, if `level` passes `logging.level`. `msg` is the human sentence (default: the
    event's name); every other field is written as given."""
    if LEVELS[level] < _state.threshold:
        return
    line = format_line(level, event, fields)
    sink = _state.sink
    if sink is not None:
        sink.write_line(line)     # or dropped and counted, when the sink is behind
        return
    if _state.file is not None:
        _state.file.write(line)
        return
    stream = sys.stdout if _state.path == "stdout" else sys.stderr
    stream.buffer.write(line)
    stream.flush()
