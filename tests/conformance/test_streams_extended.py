"""Gateway API TCPRoute and TLSRoute (Passthrough) conformance cases from gateway-api-extended.json (issue
13 §4): each suite's Gateways, routes and backends become manifests, `load_manifests` maps them to the
native config, a real gateway serves it, and every case runs over real sockets against echo-tcp-like
backends (a line with the pod name, then echo; the TLS ones terminate with a certificate for the
suite's names and answer HTTP for the `https` application). TLS listeners in Terminate mode get their
certificateRefs as kubernetes.io/tls Secrets and BackendTLSPolicies their CA as a ConfigMap, all made
from one self-signed certificate for every name of the suite (so it is also the CA that verifies)."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.threaded import ThreadedServer

from fastgw.config import load_config
from fastgw.gatewayapi import load_manifests
from fastgw.gatewayapi.convert import config_to_dict

from .harness import NAMESPACE, GatewayProcess, data_path, free_port, in_ci

EXTENDED = data_path().with_name("gateway-api-extended.json")
DATA = json.loads(EXTENDED.read_text()) if EXTENDED.is_file() else None
KINDS = {"tcp", "tls", "weighted_distribution", "repeated_invariant"}


def _stream_suites() -> list[dict[str, Any]]:
    if DATA is None:
        return []
    return [s for s in DATA["suites"] if any(r["kind"] in ("TCPRoute", "TLSRoute") for r in s.get("routes", []))]


def _params() -> list[Any]:
    if DATA is None:
        if in_ci():
            raise RuntimeError(f"conformance data not found: {EXTENDED}")
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no {EXTENDED}"))]
    out = []
    for s in _stream_suites():
        for c in s["cases"]:
            out.append(pytest.param(s["name"], c["id"], id=c["id"]))
    return out


class Backend(ThreadedServer):
    """echo-tcp: `<pod>\\n` on connect, then echo; with TLS, HTTP requests get a JSON echo answer."""

    def __init__(self, pod: str, ctx: ssl.SSLContext | None):
        self.pod, self.ctx = pod, ctx
        self.sni: list[str | None] = []
        super().__init__(128)

    def _serve(self, c: socket.socket) -> None:
        try:
            c.settimeout(10)
            if self.ctx is not None:
                c = self.ctx.wrap_socket(c, server_side=True)
                self.sni.append(getattr(c, "sni_seen", None))
                data = c.recv(65536)
                if data.startswith(b"GET "):
                    head = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
                    method, path, _ = head[0].split(" ")
                    hdrs = dict(line.split(": ", 1) for line in head[1:])
                    body = json.dumps({"pod": self.pod, "path": path, "method": method,
                                       "host": hdrs.get("Host"), "sni": self.sni[-1]}).encode()
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                              % (len(body), body))
                    return
                c.sendall(self.pod.encode() + b"\n" + data)
            else:
                c.sendall(self.pod.encode() + b"\n")
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()


class World:
    def __init__(self, suite: dict[str, Any], tmp: Path):
        self.suite = suite
        self.tmp = tmp
        names = {c["request"].get("sni") for c in suite["cases"]} - {None}
        names |= {n for cert in suite.get("certificates", []) for n in cert.get("dns_sans", [])}
        self.cert = tmp / "cert.pem"
        key = tmp / "key.pem"
        san = ",".join(f"DNS:{n}" for n in sorted(names) or ["example.com"])
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(self.cert), "-days", "2", "-subj", "/CN=conf",
                        "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)

        def note(sslobj, name, _ctx):
            sslobj.sni_seen = name
        ctx.sni_callback = note
        self.backends: dict[tuple[str, int], Backend] = {}
        docs: list[dict[str, Any]] = []
        for b in suite["backends"]:
            for p in b["ports"]:
                tls = p["port"] in (443, 8443) and (b.get("tls_certificate") or "tls" in p.get("name", ""))
                be = Backend(f"{b.get('pods_of') or b['name']}-pod", ctx if tls else None)
                self.backends[(b["name"], p["port"])] = be
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": b["name"], "namespace": NAMESPACE},
                         "spec": {"ports": [{"name": p.get("name", "p"), "port": p["port"], "protocol": "TCP"}
                                            for p in b["ports"]]}})
            docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"{b['name']}-x", "namespace": NAMESPACE,
                                      "labels": {"kubernetes.io/service-name": b["name"]}},
                         "addressType": "IPv4",
                         "ports": [{"name": p.get("name", "p"), "port": self.backends[(b["name"], p["port"])].port,
                                    "protocol": "TCP"} for p in b["ports"]],
                         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})
        cert_pem, key_pem = self.cert.read_text(), key.read_text()
        secrets: set[str] = set()
        self.port_map: dict[tuple[str, int], int] = {}
        for gw in suite["gateways"]:
            listeners = []
            for li in gw["listeners"]:
                out = {k: li[k] for k in ("name", "port", "protocol", "hostname", "tls") if li.get(k) is not None}
                refs = (li.get("tls") or {}).get("certificateRefs")
                if refs:
                    out["tls"] = {**li["tls"], "certificateRefs": [{"kind": "Secret", "name": r} for r in refs]}
                    secrets.update(refs)
                out["allowedRoutes"] = {"namespaces": {"from": "All"}}
                listeners.append(out)
                self.port_map.setdefault((gw["name"], li["port"]), free_port())
            docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                         "metadata": {"name": gw["name"], "namespace": NAMESPACE},
                         "spec": {"gatewayClassName": "fastgw", "listeners": listeners}})
        for name in sorted(secrets):
            docs.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                         "metadata": {"name": name, "namespace": NAMESPACE},
                         "stringData": {"tls.crt": cert_pem, "tls.key": key_pem}})
        for pol in suite.get("backend_tls_policies", []):
            for ref in pol["validation"].get("caCertificateRefs", []):
                docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": ref["name"], "namespace": NAMESPACE},
                             "data": {"ca.crt": cert_pem}})
            docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                         "metadata": {"name": pol["name"], "namespace": NAMESPACE},
                         "spec": {"targetRefs": pol["targetRefs"], "validation": pol["validation"]}})
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
        native["limits"] = {"header_timeout": "2s"}
        native["listeners"].append({"address": "127.0.0.1:0"})   # the harness waits for an HTTP line too
        path = tmp / "native.yaml"
        path.write_text(yaml.safe_dump(native, sort_keys=False))
        loaded = load_config(path)
        self.gw = GatewayProcess(path, {(lst.host, lst.port) for lst in loaded.listeners})
        self.gw.start()

    def port(self, case: dict[str, Any]) -> int:
        return self.port_map[(case["gateway"], case["request"]["port"])]

    def tcp_pod(self, case: dict[str, Any]) -> str:
        with socket.create_connection(("127.0.0.1", self.port(case)), timeout=5) as s:
            line = b""
            while not line.endswith(b"\n"):
                got = s.recv(100)
                if not got:
                    raise ConnectionError("closed before the welcome line")
                line += got
            s.sendall(b"TEST")
            echoed = b""
            while len(echoed) < 4:
                echoed += s.recv(100)
            assert echoed == b"TEST"
            return line.decode().strip()

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


@pytest.mark.parametrize("suite_name,case_id", _params())
def test_stream_case(suite_name, case_id, worlds):
    world = worlds(suite_name)
    case = next(c for c in world.suite["cases"] if c["id"] == case_id)
    expect = case["expect"]
    if case["kind"] == "tcp":
        deadline = time.monotonic() + 10
        while True:
            try:
                pod = world.tcp_pod(case)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if expect.get("backend"):
            assert pod.startswith(expect["backend"])
    elif case["kind"] == "repeated_invariant":
        for _ in range(case["repeat"]):
            pod = world.tcp_pod(case)
            assert pod.startswith(expect["backend"]) and not pod.startswith(expect["never_backend"])
    elif case["kind"] == "weighted_distribution":
        seen = Counter()
        for _ in range(case["total_requests"]):
            pod = world.tcp_pod(case)
            seen[next(b for b in expect["weights"] if pod.startswith(b))] += 1
        for b, share in expect["distribution"].items():
            assert abs(seen[b] / case["total_requests"] - share) <= expect["tolerance_abs"], seen
            if share == 0:
                assert seen[b] == 0
    else:
        _tls_case(world, case)


def _tls_case(world: World, case: dict[str, Any]) -> None:
    expect, req = case["expect"], case["request"]
    ctx = ssl.create_default_context(cafile=str(world.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", world.port(case)), timeout=5)
    if expect["connection"] == "rejected":
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname=req["sni"]) as s:
                s.sendall(b"x")
                if not s.recv(10):
                    raise ConnectionError("closed")
        return
    with ctx.wrap_socket(raw, server_hostname=req["sni"]) as s:
        if req.get("application") == "https":
            s.sendall(f"{req.get('method', 'GET')} {req.get('path', '/')} HTTP/1.1\r\nHost: {req['host']}\r\n\r\n"
                      .encode())
            data = b""
            while True:
                got = s.recv(65536)
                if not got:
                    break
                data += got
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % expect["status"])
            seen = json.loads(body)
            assert seen["pod"].startswith(expect["backend"])
            assert seen["host"] == expect["host_seen_by_backend"] and seen["path"] == expect["path_seen_by_backend"]
        else:
            s.sendall(b"TEST")
            data = b""
            while b"TEST" not in data:
                got = s.recv(100)
                assert got, "closed"
                data += got
            pod = data.split(b"\n")[0].decode()
            assert pod.startswith(expect["backend"])
            if expect.get("sni_seen_by_backend"):
                seen = [n for b in world.backends.values() if b.pod == pod for n in b.sni]
                assert expect["sni_seen_by_backend"] in seen
