"""The conformance suite must not pass by skipping: with CI set and no data, it fails naming the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FASTGW_CONFORMANCE_DATA=str(tmp_path / "absent" / "gateway-api-cases.json"))
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
         "tests/conformance/test_gateway_api.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_data_fails_under_ci(tmp_path: Path, ci: str) -> None:
    proc = _run_suite(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed" in out and "passed" not in out and "skipped" not in out, out
    assert f"Gateway API conformance data not found: expected {tmp_path / 'absent' / 'gateway-api-cases.json'}" \
        in out, out
    assert "CI is set, so the conformance suite fails rather than skips" in out, out


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_missing_data_skips_outside_ci(tmp_path: Path, ci: str | None) -> None:
    proc = _run_suite(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 skipped" in out and "failed" not in out, out
    assert "Gateway API conformance data not found" in out, out
