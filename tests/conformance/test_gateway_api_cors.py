"""The HTTPRouteCORS suite of `../shared/conformance/gateway-api-extended.json` (beside the
repository), run as test_gateway_api.py runs the core suites: manifests through `fastgw.gatewayapi`,
the native config served by `fastgw run`, one test per case. The extended data's expectations that
the core runner does not read (accepted header values, answers that must not come from the backend,
whitespace-insensitive comparison) are read here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastgw.config import load_config
from fastgw.gatewayapi import config_to_dict, load_manifests

from .harness import CaseRunner, EchoBackends, GatewayProcess, _joined, data_path, in_ci, plan_suite

SUITES = ("HTTPRouteCORS",)


def _data() -> dict[str, Any] | None:
    path = data_path().with_name("gateway-api-extended.json")
    return json.loads(path.read_text()) if path.is_file() else None


DATA = _data()


def _cases() -> list[Any]:
    if DATA is None:
        return [pytest.param(None, None, id="no-data")]
    return [pytest.param(s["name"], c["id"], id=c["id"]) for s in DATA["suites"] if s["name"] in SUITES
            for c in s["cases"]]


class ExtendedRunner(CaseRunner):
    def check_response(self, case: dict[str, Any], resp, host: str):
        exp = case["expect"]
        squeeze = (lambda s: s.replace(" ", "")) if exp.get("ignore_whitespace_in_response_headers") else (lambda s: s)
        allowed = exp.get("status_any_of") or [exp["status"]]
        assert resp.status in allowed, f"status {resp.status}, expected {allowed}; body: {resp.body[:300]!r}"
        for name, accepted in (exp.get("response_headers_any_of") or {}).items():
            got = resp.header_values(name)
            assert got, f"response header {name} missing; got {resp.headers}"
            assert squeeze(_joined(got)) in {squeeze(a) for a in accepted}, f"{name}: {got}, expected one of {accepted}"
        for name in exp.get("absent_response_headers") or []:
            assert not resp.header_values(name), f"response header {name} should be absent"
        if exp.get("not_forwarded_to_backend"):
            try:
                body = json.loads(resp.body)
            except ValueError:
                return None
            assert not (isinstance(body, dict) and "pod" in body), f"answered by the backend: {body}"
            return None
        return super().check_response(case, resp, host)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("conformance-cors")
    backends = EchoBackends().start()
    running: dict[str, tuple[ExtendedRunner, GatewayProcess]] = {}

    def runner(name: str) -> ExtendedRunner:
        if name not in running:
            assert DATA is not None
            suite = next(s for s in DATA["suites"] if s["name"] == name)
            plan = plan_suite(suite, backends.ports)
            manifests = tmp / f"{name}.manifests.yaml"
            manifests.write_text(plan.manifests)
            cfg = load_manifests(plan.manifests, str(manifests), host="127.0.0.1", port_map=plan.port_map)
            native = config_to_dict(cfg)
            native["server"] = {"drain_timeout": 0.5}
            import yaml

            native_path = tmp / f"{name}.native.yaml"
            native_path.write_text(yaml.safe_dump(native, sort_keys=False))
            load_config(native_path)
            gw = GatewayProcess(native_path, {(lst.host, lst.port) for lst in cfg.listeners})
            gw.start()
            running[name] = (ExtendedRunner(plan), gw)
        return running[name][0]

    yield runner
    for _, gw in running.values():
        gw.stop()
    backends.stop()


@pytest.mark.parametrize(("suite_name", "case_id"), _cases())
def test_case(suite_name: str, case_id: str, gateways) -> None:
    if DATA is None:
        if in_ci():
            pytest.fail(f"{data_path().with_name('gateway-api-extended.json')} not found", pytrace=False)
        pytest.skip("gateway-api-extended.json not found beside the repository")
    suite = next(s for s in DATA["suites"] if s["name"] == suite_name)
    case = next(c for c in suite["cases"] if c["id"] == case_id)
    gateways(suite_name).check(case)


def test_the_suite_is_there() -> None:
    if DATA is None:
        pytest.skip("no data")
    assert {s["name"] for s in DATA["suites"]} >= set(SUITES)
    assert Path(__file__).name
