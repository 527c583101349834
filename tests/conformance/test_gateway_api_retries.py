"""The timeouts and retries suites of `../shared/conformance/gateway-api-extended.json` (beside the
repository), run as test_gateway_api_cors.py runs CORS: manifests through `fastgw.gatewayapi`, the
native config served by `fastgw run`, one test per case. The echo backends here add what these
suites ask of echo-basic: `?delay=` and the `/retry/` simulator (per-uuid `succeedAfter`,
`responseCode`, `delayRetry`; without a code, a TCP reset)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import struct
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fastgw.config import load_config
from fastgw.gatewayapi import config_to_dict, load_manifests

from .harness import NAMESPACE, CaseRunner, EchoBackends, GatewayProcess, data_path, in_ci, plan_suite

SUITES = ("HTTPRouteTimeoutRequest", "HTTPRouteTimeoutBackendRequest", "HTTPRouteRetry",
          "HTTPRouteRetryWithTimeouts", "HTTPRouteRetryConnectionError")


def _data() -> dict[str, Any] | None:
    path = data_path().with_name("gateway-api-extended.json")
    return json.loads(path.read_text()) if path.is_file() else None


DATA = _data()


def _cases() -> list[Any]:
    if DATA is None:
        return [pytest.param(None, None, id="no-data")]
    return [pytest.param(s["name"], c["id"], id=c["id"]) for s in DATA["suites"] if s["name"] in SUITES
            for c in s["cases"]]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def go_duration(text: str) -> float:
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in _DURATION.findall(text))


class SimulatorBackends(EchoBackends):
    """echo-basic's `?delay=` and `/retry/` simulator over the harness's echo backends."""

    attempts: dict[str, int] = {}

    @staticmethod
    async def _serve(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, proto = lines[0].split(" ", 2)
                headers: dict[str, list[str]] = {}
                host = ""
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "host":
                        host = v.strip()
                    else:
                        headers.setdefault("-".join(p.capitalize() for p in k.strip().split("-")), []).append(v.strip())
                url = urlsplit(target)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if "delay" in q:
                    await asyncio.sleep(go_duration(q["delay"]))
                if url.path.startswith("/retry/") and "uuid" in q:
                    n = SimulatorBackends.attempts.get(q["uuid"], 0) + 1
                    SimulatorBackends.attempts[q["uuid"]] = n
                    if n <= int(q.get("succeedAfter", "0")):
                        if "delayRetry" in q:
                            await asyncio.sleep(go_duration(q["delayRetry"]))
                        if "responseCode" not in q:
                            sock = writer.get_extra_info("socket")
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            writer.transport.abort()
                            return
                        code = int(q["responseCode"])
                        writer.write(f"HTTP/1.1 {code} Simulated\r\nContent-Length: 0\r\n\r\n".encode())
                        await writer.drain()
                        continue
                body = json.dumps({
                    "path": target, "host": host, "method": method, "proto": proto, "headers": headers,
                    "namespace": NAMESPACE, "ingress": "", "service": "", "pod": f"{name}-5d8f9c-x2k4p",
                }).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


class FreshUuidRunner(CaseRunner):
    def check(self, case: dict[str, Any]) -> None:
        """Each probe uses a fresh uuid, so the simulator's count starts at 0 (as the Go suite's
        assertConsistentRetryBehaviour does)."""
        fresh = uuid.uuid4().hex
        case = json.loads(json.dumps(case).replace("{uuid}", fresh))
        super().check(copy.deepcopy(case))


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("conformance-retries")
    backends = SimulatorBackends().start()
    running: dict[str, tuple[FreshUuidRunner, GatewayProcess]] = {}

    def runner(name: str) -> FreshUuidRunner:
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
            running[name] = (FreshUuidRunner(plan), gw)
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


def test_the_suites_are_there() -> None:
    if DATA is None:
        pytest.skip("no data")
    assert {s["name"] for s in DATA["suites"]} >= set(SUITES)
