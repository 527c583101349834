"""Gateway API GRPCRoute conformance cases from gateway-api-extended.json (issue 14 §3): each suite's
Gateways, GRPCRoutes and Services become manifests, `load_manifests` maps them to the native config (the
backends are h2c: `appProtocol: kubernetes.io/h2c`, and GRPCRoute backends), a real gateway serves it,
and grpcio servers stand in for echo-grpc (service GrpcEcho: Echo and EchoTwo answer with the pod,
the method and the metadata they saw as JSON; EchoThree is unimplemented).

The Go suite's client speaks gRPC over h2c to the gateway; until the gateway serves HTTP/2 downstream,
each call here is the same gRPC call carried over HTTP/1.1 (`content-type: application/grpc`,
`TE: trailers`, the length-prefixed message, grpc-status read from the chunked trailers or, for the
gateway's own trailers-only answers, from the head), which exercises everything the cases check:
GRPCRoute matching and precedence, listener hostnames, header modifiers, weights, and the gateway's
UNIMPLEMENTED for no route. BackendTLSPolicyGRPCRoute needs gRPC backends behind TLS and the h2
downstream's h2c client; it is skipped with that reason."""

from __future__ import annotations

import datetime
import json
import socket
import struct
import time
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastgw.config import load_config
from fastgw.gatewayapi import load_manifests
from fastgw.gatewayapi.convert import config_to_dict

from .harness import NAMESPACE, GatewayProcess, data_path, free_port, in_ci

grpc = pytest.importorskip("grpc")

EXTENDED = data_path().with_name("gateway-api-extended.json")
DATA = json.loads(EXTENDED.read_text()) if EXTENDED.is_file() else None
SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
CODES = {0: "OK", 12: "Unimplemented", 14: "Unavailable", 4: "DeadlineExceeded", 13: "Internal", 2: "Unknown"}
SKIPPED_SUITES = {
    "BackendTLSPolicyGRPCRoute": "gRPC backends behind TLS (BackendTLSPolicy) with the Go suite's h2c client: "
                                 "needs the HTTP/2 downstream (h2c) and TLS gRPC echo backends, not in this runner",
}


def _grpc_suites() -> list[dict[str, Any]]:
    if DATA is None:
        return []
    return [s for s in DATA["suites"] if any(r["kind"] == "GRPCRoute" for r in s.get("routes", []))]


def _params() -> list[Any]:
    if DATA is None:
        if in_ci():
            raise RuntimeError(f"conformance data not found: {EXTENDED}")
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no {EXTENDED}"))]
    out = []
    for s in _grpc_suites():
        for c in s["cases"]:
            marks = []
            if s["name"] in SKIPPED_SUITES:
                marks.append(pytest.mark.skip(reason=SKIPPED_SUITES[s["name"]]))
            out.append(pytest.param(s["name"], c["id"], id=c["id"], marks=marks))
    return out


class EchoGrpc:
    """echo-grpc for one Deployment: a grpcio server answering Echo and EchoTwo with JSON."""

    def __init__(self, pod: str):
        self.pod = pod
        self.server = grpc.server(futures.ThreadPoolExecutor(8))

        def handler(method: str):
            def answer(request: bytes, context) -> bytes:
                md: dict[str, list[str]] = {}
                for k, v in context.invocation_metadata():
                    md.setdefault(k, []).append(v)
                return json.dumps({"pod": self.pod, "method": f"/{SERVICE}/{method}",
                                   "metadata": {k: ",".join(v) for k, v in md.items()}}).encode()
            return grpc.unary_unary_rpc_method_handler(answer)

        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Echo": handler("Echo"), "EchoTwo": handler("EchoTwo")}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


class World:
    def __init__(self, suite: dict[str, Any], tmp: Path):
        self.suite = suite
        self.backends: dict[str, EchoGrpc] = {}
        docs: list[dict[str, Any]] = []
        for b in suite["backends"]:
            be = EchoGrpc(f"{b['pods_of']}-7c9d-x2k4f")
            self.backends[b["name"]] = be
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": b["name"], "namespace": NAMESPACE},
                         "spec": {"ports": [{k: p[k] for k in ("name", "port", "appProtocol") if k in p}
                                            for p in b["ports"]]}})
            docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"{b['name']}-x", "namespace": NAMESPACE,
                                      "labels": {"kubernetes.io/service-name": b["name"]}},
                         "addressType": "IPv4",
                         "ports": [{**({"name": p["name"]} if "name" in p else {}), "port": be.port}
                                   for p in b["ports"]],
                         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})
        self.port_map: dict[tuple[str, int], int] = {}
        for gw in suite["gateways"]:
            listeners = []
            for li in gw["listeners"]:
                out = {k: li[k] for k in ("name", "port", "protocol", "hostname") if li.get(k) is not None}
                listeners.append(out)
                self.port_map.setdefault((gw["name"], li["port"]), free_port())
            docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                         "metadata": {"name": gw["name"], "namespace": NAMESPACE},
                         "spec": {"gatewayClassName": "fastgw", "listeners": listeners}})
        t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        for i, r in enumerate(suite["routes"]):
            parents = [{"name": p["gateway"], "namespace": NAMESPACE,
                        **{k: p[k] for k in ("sectionName", "port") if p.get(k) is not None}} for p in r["parents"]]
            spec: dict[str, Any] = {"parentRefs": parents, "rules": r["rules"]}
            if r.get("hostnames"):
                spec["hostnames"] = r["hostnames"]
            ts = (t0 + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            docs.append({"apiVersion": r["api_version"], "kind": r["kind"],
                         "metadata": {"name": r["name"], "namespace": NAMESPACE, "creationTimestamp": ts},
                         "spec": spec})
        text = yaml.safe_dump_all(docs, sort_keys=False)
        cfg = load_manifests(text, str(tmp / "manifests.yaml"), host="127.0.0.1", port_map=self.port_map)
        native = config_to_dict(cfg)
        native["server"] = {"drain_timeout": 0.5}
        path = tmp / "native.yaml"
        path.write_text(yaml.safe_dump(native, sort_keys=False))
        loaded = load_config(path)
        self.gw = GatewayProcess(path, {(lst.host, lst.port) for lst in loaded.listeners})
        self.gw.start()

    def call(self, case: dict[str, Any], metadata: dict[str, str] | None = None) -> tuple[int, dict | None]:
        """The case's gRPC call over HTTP/1.1: (grpc-status, the echo's JSON or None)."""
        req = case["request"]
        port = self.port_map[(case["gateway"], req["port"])]
        host = req["authority"] or f"127.0.0.1:{port}"
        body = b"\x00" + struct.pack(">I", 0)
        lines = [f"POST /{req['service']}/{req['method']} HTTP/1.1", f"Host: {host}",
                 "Content-Type: application/grpc", "TE: trailers", f"Content-Length: {len(body)}",
                 "Connection: close"]
        lines += [f"{k}: {v}" for k, v in {**req.get("metadata", {}), **(metadata or {})}.items()]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            out = b""
            while piece := s.recv(65536):
                out += piece
        head, _, rest = out.partition(b"\r\n\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (ln.partition(":") for ln in head.decode().split("\r\n")[1:])}
        assert head.startswith(b"HTTP/1.1 200"), out[:300]
        data, trailers = b"", {}
        if fields.get("transfer-encoding") == "chunked":
            while True:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                data, rest = data + rest[:n], rest[n + 2:]
            trailers = {k.strip().lower(): v.strip() for k, _, v in
                        (ln.partition(":") for ln in rest.decode().split("\r\n") if ln)}
        status = int(trailers.get("grpc-status", fields.get("grpc-status", "-1")))
        reply = json.loads(data[5:]) if status == 0 and len(data) > 5 else None
        return status, reply

    def close(self) -> None:
        self.gw.stop()
        for b in self.backends.values():
            b.close()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made: dict[str, World] = {}

    def get(name: str) -> World:
        if name not in made:
            for w in made.values():
                w.close()
            made.clear()
            suite = next(s for s in DATA["suites"] if s["name"] == name)
            made[name] = World(suite, tmp_path_factory.mktemp(name))
        return made[name]
    yield get
    for w in made.values():
        w.close()


def _deployment(pod: str) -> str:
    return pod.rsplit("-", 2)[0]


def _check_one(world: World, case: dict[str, Any]) -> None:
    expect = case["expect"]
    status, reply = world.call(case)
    if "code_not" in expect:
        assert CODES.get(status, str(status)) != expect["code_not"]
        return
    assert status == expect["code_number"], (status, reply)
    if status != 0:
        return
    assert reply is not None
    if expect.get("backend"):
        assert reply["pod"].startswith(expect["backend"]), reply
    if expect.get("fully_qualified_method_seen_by_backend"):
        assert reply["method"] == expect["fully_qualified_method_seen_by_backend"]
    implied = dict(expect.get("route_implied_metadata_at_backend") or {})
    absent = implied.pop("absent", [])
    for name, value in implied.items():
        assert reply["metadata"].get(name) == value, (name, reply["metadata"])
    for name in absent:
        assert name not in reply["metadata"], (name, reply["metadata"])


@pytest.mark.parametrize("suite_name,case_id", _params())
def test_grpcroute_case(suite_name, case_id, worlds):
    world = worlds(suite_name)
    case = next(c for c in world.suite["cases"] if c["id"] == case_id)
    if case["kind"] == "weighted_distribution":
        expect = case["expect"]
        seen: Counter[str] = Counter()
        for i in range(case["total_requests"]):
            status, reply = world.call(case, {"x-jitter": str(i)} if i % 2 else None)
            assert status == 0, status
            seen[_deployment(reply["pod"])] += 1
        for backend, share in expect["distribution"].items():
            assert abs(seen[backend] / case["total_requests"] - share) <= expect["tolerance_abs"], seen
            if share == 0:
                assert seen[backend] == 0
        return
    deadline = time.monotonic() + 10
    while True:
        try:
            _check_one(world, case)
            return
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
