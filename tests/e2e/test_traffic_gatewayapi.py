"""Routing and traffic management end to end, Gateway API front end.

The scenario classes of test_traffic.py run here unchanged; only `front` differs, so each scenario is
written as Gateway / HTTPRoute / Service / EndpointSlice manifests (traffic_support.to_manifests) and
served by `fastgw run -c manifests.yaml`. The assertions are the same: one implementation, two front ends.
Scenarios Gateway API cannot express (templates, `present`, `versioning`) are native only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from .test_traffic import (  # noqa: F401 - fixtures and test classes run again in this module
    SHARED,
    TestHeaderFilters,
    TestListeners,
    TestMatching,
    TestMirroring,
    TestNoRouteAndBrokenBackends,
    TestPrecedence,
    TestRedirects,
    TestRewrites,
    TestVersionRouting,
    TestWeightedBackends,
    errors,
    filters,
    listeners,
    matching,
    mirroring,
    precedence,
    redirects,
    rewrites,
    scenario,
    servers,
    versions,
    weighted,
)
from .traffic_support import NativeOnly, native_config, route, to_manifests


@pytest.fixture(scope="module")
def front() -> str:
    return "gatewayapi"


def test_every_shared_class_runs_here():
    assert [n for n in SHARED if n not in globals()] == []


def test_native_only_features_are_refused_by_the_translation():
    for r in (route("t", match={"path": {"template": "/u/{id}"}}),
              route("p", match={"headers": [{"name": "X", "present": True}]}),
              route("v", filters={"versioning": {"deprecated_at": "2026-01-01T00:00:00Z"}})):
        with pytest.raises(NativeOnly):
            to_manifests(native_config([r], {"echo": {"targets": []}}))


@pytest.mark.parametrize("where,bad", [
    ("RequestHeaderModifier.set", "a\r\nX-Injected: 1"),
    ("RequestHeaderModifier.add", "a\nb"),
    ("ResponseHeaderModifier.set", "a\rb"),
    ("ResponseHeaderModifier.add", "a\x00b"),
])
def test_header_value_control_characters_refused(tmp_path, where, bad):
    kind, op = where.split(".")
    native = native_config([route("r", filters={
        "request_headers" if kind.startswith("Request") else "response_headers": {op: {"X-Bad": bad}}}, tag=False)],
        {"echo": {"targets": [{"address": "127.0.0.1:9"}]}})
    docs = to_manifests(native)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    p = subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    index = next(i for i, d in enumerate(docs) if d["kind"] == "HTTPRoute")
    # reported at the manifest node, with the native path added
    assert f"$[{index}].spec.rules[0].filters[0]" in p.stderr, p.stderr
    native_kind = "request_headers" if kind.startswith("Request") else "response_headers"
    assert f"$.routes[0].filters.{native_kind}.{op}" in p.stderr, p.stderr
