"""fastgw.events: one line per event, JSON or text, filtered by level, written to a file sink."""

from __future__ import annotations

import json
import os

import pytest

from fastgw import events


@pytest.fixture
def sink(tmp_path):
    path = tmp_path / "events.log"
    events.configure(format="json", level="info", events=str(path))
    yield path
    events.configure(format="json", level="info", events="stderr")


def test_json_line_fields_in_order(sink):
    events.emit("error", "upstream_failure", msg="upstream connection refused", kind="refused", attempts=1)
    (line,) = sink.read_text().splitlines()
    rec = json.loads(line)
    assert list(rec) == ["time", "level", "pid", "event", "msg", "kind", "attempts"]
    assert (rec["level"], rec["pid"], rec["event"], rec["kind"]) == ("error", os.getpid(), "upstream_failure", "refused")
    assert rec["time"].endswith("Z") and len(rec["time"]) == len("2026-01-01T00:00:00.000Z")


def test_level_threshold(sink):
    events.configure(level="warning")
    events.emit("info", "listening", msg="listening")
    events.emit("debug", "noise")
    events.emit("warning", "access_log_dropped", dropped=3)
    assert [json.loads(x)["event"] for x in sink.read_text().splitlines()] == ["access_log_dropped"]


def test_text_line_with_list_items_below(sink):
    events.configure(format="text")
    events.emit("error", "reload_rejected", msg="reload refused", source="SIGHUP", note="two words",
                errors=["f.yaml:3: $.routes[0].upstream: unknown", "f.yaml:4: $.routes[1].upstream: unknown"])
    head, first, second = sink.read_text().splitlines()
    stamp, rest = head.split(" ", 1)
    assert stamp.endswith("Z")
    assert rest == f'error fastgw: reload refused event=reload_rejected pid={os.getpid()} source=SIGHUP note="two words"'
    assert (first, second) == ("  f.yaml:3: $.routes[0].upstream: unknown", "  f.yaml:4: $.routes[1].upstream: unknown")


def test_reopen_follows_a_rename(sink, tmp_path):
    events.emit("info", "one")
    sink.rename(tmp_path / "events.log.1")
    events.reopen()
    events.emit("info", "two")
    assert [json.loads(x)["event"] for x in sink.read_text().splitlines()] == ["two"]
