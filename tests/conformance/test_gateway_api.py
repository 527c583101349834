"""Gateway API HTTPRoute conformance, run against fastgw.

For each suite of `../shared/conformance/gateway-api-cases.json` (beside the repository): the suite's
Gateways and HTTPRoutes, plus a Service and an EndpointSlice per echo backend, are written as Kubernetes
manifests, loaded through `fastgw.gatewayapi` (listener ports remapped to free local ports), printed as
a native config and served by `fastgw run`. One test per case. Cases listed in known_failures.txt are
strict xfails: when one starts passing, take it off the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastgw.config import load_config
from fastgw.gatewayapi import config_to_dict, load_manifests

from .harness import (
    CaseRunner,
    EchoBackends,
    GatewayProcess,
    SuitePlan,
    in_ci,
    load_data,
    load_known_failures,
    missing_data_message,
    plan_suite,
)

HERE = Path(__file__).resolve().parent
DATA = load_data()
KNOWN = load_known_failures(HERE / "known_failures.txt")


def _no_data() -> None:
    """Without the data: under CI the suite fails (it must not pass by skipping); elsewhere it skips."""
    if in_ci():
        pytest.fail(f"{missing_data_message()}; CI is set, so the conformance suite fails rather than skips",
                    pytrace=False)
    pytest.skip(missing_data_message())


def _params() -> list[Any]:
    if DATA is None:
        return [pytest.param(None, None, id="no-data")]
    out = []
    for suite in DATA["suites"]:
        for case in suite["cases"]:
            marks = []
            if case["id"] in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[case["id"]]))
            out.append(pytest.param(suite["name"], case["id"], id=case["id"], marks=marks))
    return out


def test_known_failures_are_real_cases() -> None:
    if DATA is None:
        _no_data()
    ids = {c["id"] for s in DATA["suites"] for c in s["cases"]}
    assert sorted(set(KNOWN) - ids) == []


class _Suites:
    """One gateway at a time: the suite of the current case; the previous one is stopped."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.backends = EchoBackends().start()
        self.current: tuple[str, CaseRunner | BaseException, GatewayProcess | None] | None = None

    def runner(self, name: str) -> CaseRunner:
        if self.current is None or self.current[0] != name:
            self.stop_current()
            self.current = (name, *self._start(name))
        _, runner, _ = self.current
        if isinstance(runner, BaseException):
            raise AssertionError(f"suite {name} could not be set up: {runner}")
        return runner

    def _start(self, name: str) -> tuple[CaseRunner | BaseException, GatewayProcess | None]:
        assert DATA is not None
        suite = next(s for s in DATA["suites"] if s["name"] == name)
        plan: SuitePlan = plan_suite(suite, self.backends.ports)
        manifests = self.tmp / f"{name}.manifests.yaml"
        manifests.write_text(plan.manifests)
        try:
            cfg = load_manifests(plan.manifests, str(manifests), host="127.0.0.1", port_map=plan.port_map)
            native = config_to_dict(cfg)
            native["server"] = {"drain_timeout": 0.5}
            native_path = self.tmp / f"{name}.native.yaml"
            import yaml

            native_path.write_text(yaml.safe_dump(native, sort_keys=False))
            loaded = load_config(native_path)
            assert loaded.listeners == cfg.listeners and loaded.routes == cfg.routes
            gw = GatewayProcess(native_path, {(lst.host, lst.port) for lst in cfg.listeners})
            gw.start()
        except Exception as e:  # reported by every case of the suite
            return e, None
        return CaseRunner(plan), gw

    def stop_current(self) -> None:
        if self.current is not None and self.current[2] is not None:
            self.current[2].stop()
        self.current = None

    def close(self) -> None:
        self.stop_current()
        self.backends.stop()


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory):
    s = _Suites(tmp_path_factory.mktemp("conformance"))
    yield s
    s.close()


@pytest.mark.parametrize(("suite_name", "case_id"), _params())
def test_case(suite_name: str, case_id: str, suites: _Suites) -> None:
    if DATA is None:
        _no_data()
    assert DATA is not None
    suite = next(s for s in DATA["suites"] if s["name"] == suite_name)
    case = next(c for c in suite["cases"] if c["id"] == case_id)
    suites.runner(suite_name).check(case)
