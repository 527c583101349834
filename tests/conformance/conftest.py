"""Per-suite summary of the Gateway API conformance cases, printed at the end of the session."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

_RESULTS: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
_ID = re.compile(r"test_case\[([^/\]]+)/(\d+)\]$")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    m = _ID.search(report.nodeid)
    if m is None:
        return
    suite, case = m.group(1), f"{m.group(1)}/{m.group(2)}"
    if report.when == "call" or report.outcome != "passed":
        if report.skipped and hasattr(report, "wasxfail"):
            outcome = "known failure"
        elif report.skipped:
            outcome = "skipped"
        elif report.failed:
            outcome = "failed"
        else:
            outcome = "passed"
        bucket = _RESULTS[suite]
        for o in list(bucket):
            bucket[o].discard(case)
        bucket[outcome].add(case)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not _RESULTS:
        return
    tr = terminalreporter
    cols = ("passed", "failed", "known failure", "skipped")
    tr.write_sep("=", "Gateway API conformance by suite")
    width = max(len(s) for s in _RESULTS) + 2
    tr.write_line(f"{'suite':<{width}}" + "".join(f"{c:>15}" for c in cols))
    totals = dict.fromkeys(cols, 0)
    for suite in sorted(_RESULTS):
        counts = {c: len(_RESULTS[suite].get(c, ())) for c in cols}
        for c in cols:
            totals[c] += counts[c]
        tr.write_line(f"{suite:<{width}}" + "".join(f"{counts[c]:>15}" for c in cols))
    tr.write_line(f"{'total':<{width}}" + "".join(f"{totals[c]:>15}" for c in cols))
