"""Shared by the routing / traffic-management end-to-end tests: one scenario, two front ends.

A scenario is written once as a native config (docs/config.md). `to_manifests` writes the same scenario
as Kubernetes Gateway API objects (one Gateway on 127.0.0.1 whose listeners use port 0, one HTTPRoute
per native route with increasing creationTimestamps so list order is kept, a Service plus one
EndpointSlice per target for every upstream). `start_front` serves either form with `fastgw run -c`,
so the manifests go through the gateway's own front end (fastgw/gatewayapi), not through a test-side
conversion. The translation is deliberately literal and refuses what Gateway API cannot say
(`NativeOnly`): those scenarios are tested in the native modules only.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import yaml
from support.client import RawConn
from support.gateway import Gateway
from support.upstreams import EchoServer

GW_NAME = "gw"
SVC_PORT = 80
MISSING_SERVICE = "no-such-service"  # a backendRef to it is invalid: Gateway API answers 500


class NativeOnly(ValueError):
    """A native feature without a Gateway API equivalent."""


# --- upstreams --------------------------------------------------------------------------------------------


Echo = EchoServer

# --- launching --------------------------------------------------------------------------------------------


class ConfigGateway(Gateway):
    """`fastgw run -c` on a config given as text (native YAML or manifests).

    The launcher counts one `listening on` line per listener; listeners sharing an address print one,
    so the count of distinct addresses is passed in instead.
    """

    def __init__(self, text: str, workdir: Path, n_addresses: int = 1, **kw):
        super().__init__({"listeners": [{} for _ in range(n_addresses)]}, workdir, **kw)
        self.text = text

    def write_config(self, config) -> None:
        super().write_config(self.text)

    def describe(self) -> str:
        rc = self.proc.poll() if self.proc else None
        return (f"--- gateway (pid {self.proc.pid if self.proc else '-'}, rc {rc}) config:\n{self.text}\n"
                f"--- stderr:\n{self.stderr}\n--- stdout:\n{self.stdout}")


def config_text(front: str, native: dict) -> str:
    if front == "native":
        return yaml.safe_dump(native, sort_keys=False)
    if front == "gatewayapi":
        return yaml.safe_dump_all(to_manifests(native), sort_keys=False)
    raise ValueError(front)


def start_front(front: str, native: dict, workdir: Path) -> ConfigGateway:
    n = len({lst["address"] for lst in native["listeners"]})
    gw = ConfigGateway(config_text(front, native), workdir, n_addresses=n)
    return gw.start()


# --- native config builders -------------------------------------------------------------------------------


def listener(name: str | None = None, hostname: str | None = None) -> dict:
    out: dict[str, Any] = {"address": "127.0.0.1:0"}
    if name:
        out["name"] = name
    if hostname:
        out["hostname"] = hostname
    return out


def upstreams(**servers) -> dict:
    """upstreams(echo=EchoServer, dead=ClosedPort, empty=None) -> native `upstreams` (None: no targets)."""
    return {name: {"targets": [] if s is None else [{"address": s.address}]} for name, s in servers.items()}


def route(name: str, *, match: dict | None = None, matches: list | None = None, upstream: str | None = "echo",
          backends: list | None = None, filters: dict | None = None, tag: bool = True, **extra) -> dict:
    """A native route. tag: the route sets `X-Route: <name>` on the upstream request (which the echo
    reflects), so a test can tell which route served it."""
    r: dict[str, Any] = {"name": name}
    if matches is not None:
        r["matches"] = matches
    elif match is not None:
        r["match"] = match
    if backends is not None:
        r["backends"] = backends
    elif upstream is not None:
        r["upstream"] = upstream
    f = copy.deepcopy(filters) if filters else {}
    if tag and "redirect" not in f:
        f.setdefault("request_headers", {}).setdefault("set", {})["X-Route"] = name
    if f:
        r["filters"] = f
    r.update(extra)
    return r


def native_config(routes: list, ups: dict, listeners: list | None = None) -> dict:
    return {"listeners": listeners or [listener()], "upstreams": ups, "routes": routes}


# --- the same scenario as Gateway API manifests ----------------------------------------------------------


def _hp(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _conds(items: list | None, what: str) -> list:
    out = []
    for c in items or ():
        if "value" in c:
            out.append({"type": "Exact", "name": c["name"], "value": c["value"]})
        elif "regex" in c:
            out.append({"type": "RegularExpression", "name": c["name"], "value": c["regex"]})
        else:
            raise NativeOnly(f"{what} condition {c}")
    return out


def _path_mod(p: dict) -> dict:
    if "full" in p:
        return {"type": "ReplaceFullPath", "replaceFullPath": p["full"]}
    return {"type": "ReplacePrefixMatch", "replacePrefixMatch": p["prefix"]}


def _header_mod(kind: str, edits: dict) -> dict:
    body: dict[str, Any] = {}
    for op in ("set", "add"):
        if edits.get(op):
            body[op] = [{"name": k, "value": v} for k, v in edits[op].items()]
    if edits.get("remove"):
        body["remove"] = list(edits["remove"])
    key = "requestHeaderModifier" if kind == "RequestHeaderModifier" else "responseHeaderModifier"
    return {"type": kind, key: body}


def _filters(f: dict | None) -> list:
    out: list = []
    for key, value in (f or {}).items():
        if key == "request_headers":
            out.append(_header_mod("RequestHeaderModifier", value))
        elif key == "response_headers":
            out.append(_header_mod("ResponseHeaderModifier", value))
        elif key == "redirect":
            rd = {k2: value[k1] for k1, k2 in (("scheme", "scheme"), ("hostname", "hostname"), ("port", "port"),
                                               ("status", "statusCode")) if k1 in value}
            if "path" in value:
                rd["path"] = _path_mod(value["path"])
            out.append({"type": "RequestRedirect", "requestRedirect": rd})
        elif key == "rewrite":
            rw = {"hostname": value["hostname"]} if "hostname" in value else {}
            if "path" in value:
                rw["path"] = _path_mod(value["path"])
            out.append({"type": "URLRewrite", "urlRewrite": rw})
        elif key == "mirror":
            m: dict[str, Any] = {"backendRef": {"name": value["upstream"], "port": SVC_PORT}}
            if "percent" in value:
                m["percent"] = value["percent"]
            out.append({"type": "RequestMirror", "requestMirror": m})
        else:
            raise NativeOnly(f"filter {key}")
    return out


def _backend_ref(name: str | None, weight: int | None = None, filters: dict | None = None) -> dict:
    ref: dict[str, Any] = {"name": name or MISSING_SERVICE, "port": SVC_PORT}
    if weight is not None:
        ref["weight"] = weight
    if filters:
        ref["filters"] = _filters(filters)
    return ref


def to_manifests(cfg: dict) -> list[dict]:
    """The native scenario `cfg` as Gateway API objects (see the module docstring)."""
    docs: list[dict] = []
    bind = {_hp(lst["address"])[0] for lst in cfg["listeners"]}
    assert len(bind) == 1, "one Gateway, one bind address"
    gl = []
    for i, lst in enumerate(cfg["listeners"]):
        item: dict[str, Any] = {"name": lst.get("name", f"l{i}"), "port": _hp(lst["address"])[1], "protocol": "HTTP"}
        if lst.get("hostname"):
            item["hostname"] = lst["hostname"]
        gl.append(item)
    docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": GW_NAME},
                 "spec": {"gatewayClassName": "fastgw", "addresses": [{"type": "IPAddress", "value": bind.pop()}],
                          "listeners": gl}})
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for i, r in enumerate(cfg.get("routes", [])):
        matches = r.get("matches") or [r.get("match") or {}]
        hosts = {tuple(m.get("hosts") or ()) for m in matches}
        if len(hosts) != 1:
            raise NativeOnly("matches with different hosts (hostnames are per HTTPRoute)")
        gms = []
        for m in matches:
            (ptype, pval), = (m.get("path") or {"prefix": "/"}).items()
            if ptype == "template":
                raise NativeOnly("path template")
            base: dict[str, Any] = {"path": {"type": {"prefix": "PathPrefix", "exact": "Exact",
                                                      "regex": "RegularExpression"}[ptype], "value": pval}}
            if m.get("headers"):
                base["headers"] = _conds(m["headers"], "header")
            if m.get("query"):
                base["queryParams"] = _conds(m["query"], "query")
            for method in m.get("methods") or [None]:
                gm = dict(base)
                if method:
                    gm["method"] = method
                gms.append(gm)
        rule: dict[str, Any] = {"matches": gms}
        if r.get("filters"):
            rule["filters"] = _filters(r["filters"])
        if "upstream" in r:
            rule["backendRefs"] = [_backend_ref(r["upstream"])]
        elif "backends" in r:
            rule["backendRefs"] = [_backend_ref(b.get("upstream"), b.get("weight", 1), b.get("filters"))
                                   for b in r["backends"]]
        parents = [{"name": GW_NAME, "sectionName": n} for n in r["listeners"]] if r.get("listeners") \
            else [{"name": GW_NAME}]
        spec: dict[str, Any] = {"parentRefs": parents}
        if hosts != {()}:
            spec["hostnames"] = list(hosts.pop())
        spec["rules"] = [rule]
        ts = (t0 + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                     "metadata": {"name": r["name"], "creationTimestamp": ts}, "spec": spec})
    for name, up in cfg.get("upstreams", {}).items():
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                     "spec": {"ports": [{"name": "http", "port": SVC_PORT, "targetPort": 8080}]}})
        for j, t in enumerate(up["targets"]):
            if t.get("weight", 1) != 1:
                raise NativeOnly("target weights")
            host, port = _hp(t["address"])
            docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"{name}-{j}", "labels": {"kubernetes.io/service-name": name}},
                         "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                         "endpoints": [{"addresses": [host], "conditions": {"ready": True}}]})
    return docs


# --- client side ------------------------------------------------------------------------------------------


def request(gw: Gateway, method: str = "GET", target: str = "/", host: str = "test.local", headers=None,
            body: bytes | None = None, port_index: int = 0):
    with RawConn(gw.ports[port_index]) as c:
        return c.request(method, target, headers=headers, body=body, host=host)


def echoed(resp) -> dict:
    """The echo server's view of the request; fails with the response when it is not an echo."""
    assert resp.status == 200, f"expected the echo's 200, got {resp.status} {resp.headers} {resp.body[:300]!r}"
    return json.loads(resp.body)


def echoed_headers(resp) -> list[tuple[str, str]]:
    return [(k, v) for k, v in echoed(resp)["headers"]]


def header_values(pairs, name: str) -> list[str]:
    return [v for k, v in pairs if k.lower() == name.lower()]


def route_of(resp) -> str | None:
    """Which route served the request (its X-Route tag, reflected by the echo); the status otherwise."""
    if resp.status != 200:
        return f"status {resp.status}"
    tags = header_values(echoed_headers(resp), "x-route")
    assert len(tags) == 1, f"expected exactly one X-Route tag, got {tags}"
    return tags[0]
