"""Gateway API manifests -> the native config.

`manifests_to_native` maps Gateways, HTTPRoutes, Services and EndpointSlices to a plain native config
dict; `load_manifests` also decodes and validates it with the native loader, translating any problem
the native checks find back to the manifest node it came from. Every issue is a `ConfigIssue` whose
path is `$[<document index>].<object path>` with the YAML line of that node.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
from collections.abc import Mapping
from typing import Any

from ..config.decode import decode_document
from ..config.errors import ConfigError, ConfigIssue
from ..config.positions import Token, format_path, parse_path
from ..config.schema import GatewayConfig
from .manifests import Issues, Obj, read_manifest_files, read_manifests
from .streams import ROUTE_PROTOCOL, STREAM_ROUTE_VERSIONS, listener_protocol, map_stream_routes
from .traffic_policy import API_VERSION as _BTP_VERSION
from .traffic_policy import map_traffic_policies

__all__ = ["GATEWAY_GROUP", "PortMap", "load_manifests", "manifests_to_native"]

GATEWAY_GROUP = "gateway.networking.k8s.io"
_GATEWAY_VERSIONS = (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1")
_SLICE_LABEL = "kubernetes.io/service-name"

#: Listener port remapping: keys are a Gateway listener port (every Gateway), or
#: `(gateway, port)` / `("namespace/gateway", port)` for one Gateway; values are the port to bind.
PortMap = Mapping[int | tuple[str, int], int]

_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
    "ExtensionRef": "extensionRef",
}
_UNSUPPORTED_FILTERS = {
    "ExtensionRef": "ExtensionRef filters",
}
_NATIVE_FILTER_KEY = {
    "RequestHeaderModifier": "request_headers",
    "ResponseHeaderModifier": "response_headers",
    "RequestRedirect": "redirect",
    "URLRewrite": "rewrite",
    "RequestMirror": "mirror",
    "CORS": "cors",           # not a native filter: the rule's route gets a `cors` policy (see _rule)
    "ExternalAuth": "external_auth",    # likewise: an `external_auth` policy, after the cors one
}
_POLICY_FILTERS = ("cors", "external_auth")     # in this order on the rule's route


def load_manifests(text: str, file: str = "<manifests>", *, host: str | None = None,
                   port_map: PortMap | None = None) -> GatewayConfig:
    """Load Kubernetes Gateway API manifests (a multi-document YAML stream) as a native config.

    `host` overrides the bind host of every listener (default: the Gateway's first IPAddress in
    `spec.addresses`, else `0.0.0.0`); `port_map` remaps listener ports (see `PortMap`).
    Raises ConfigError listing every problem, with paths and lines in the manifests.
    """
    native, origins, issues = _build(text, file, host, port_map)
    return _decode(native, origins, issues)


def manifests_to_native(text: str, file: str = "<manifests>", *, host: str | None = None,
                        port_map: PortMap | None = None) -> dict[str, Any]:
    """The native config (a plain dict, as `fastgw convert` prints it) of the manifests, validated."""
    native, origins, issues = _build(text, file, host, port_map)
    _decode(native, origins, issues)
    return native


# -- origins: native path -> manifest node ---------------------------------------------------------

Origin = tuple[Obj, list[Token]]


def _decode(native: dict[str, Any], origins: dict[tuple[Token, ...], Origin], issues: Issues) -> GatewayConfig:
    issues.raise_if_any()

    def report(tokens: list[Token], message: str) -> None:
        shown = format_path(tokens)
        for n in range(len(tokens), -1, -1):
            origin = origins.get(tuple(tokens[:n]))
            if origin is not None:
                obj, mtokens = origin
                issues.add(obj, mtokens, f"{message} (native config: {shown})")
                return
        issues.issues.append(ConfigIssue(issues.file, "$", f"{message} (native config: {shown})"))

    try:
        return decode_document(native, None, [], issues.file)
    except ConfigError as e:
        for issue in e.errors:
            report(parse_path(issue.path) or [], issue.message)
        issues.raise_if_any()
        raise


# -- the mapping -----------------------------------------------------------------------------------


def manifest_files_to_native(sources: list[tuple[str, str]], where: str) -> dict[str, Any]:
    """The native config of several manifest files read as one stream ((text, file) pairs, in
    order), validated; errors name the file each object came from."""
    objs, issues = read_manifest_files(sources, where)
    native, origins, issues = _map(objs, issues, None, None)
    _decode(native, origins, issues)
    return native


def _build(text: str, file: str, host: str | None, port_map: PortMap | None
           ) -> tuple[dict[str, Any], dict[tuple[Token, ...], Origin], Issues]:
    objs, issues = read_manifests(text, file)
    return _map(objs, issues, host, port_map)


def _map(objs: list[Obj], issues: Issues, host: str | None, port_map: PortMap | None
         ) -> tuple[dict[str, Any], dict[tuple[Token, ...], Origin], Issues]:
    b = _Builder(issues, host, dict(port_map or {}))
    b.collect(objs)
    b.map_gateways()
    b.map_routes()
    map_traffic_policies(b)
    map_stream_routes(b)
    return b.native, b.origins, issues


def _host_intersects(a: str, b: str) -> bool:
    """Two hostnames (exact or `*.suffix`) have a host in common."""
    if a == b:
        return True
    if a.startswith("*.") and b.endswith(a[1:]):
        return True
    return b.startswith("*.") and a.endswith(b[1:])


def _timestamp(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=datetime.UTC)


class _Listener:
    __slots__ = ("gateway", "name", "native", "port", "hostname", "from_", "kinds", "protocol")

    def __init__(self, gateway: Obj, name: str, native: str, port: int, hostname: str | None,
                 from_: str, kinds: list[tuple[str, str]] | None, protocol: str = "http"):
        self.gateway, self.name, self.native, self.port = gateway, name, native, port
        self.hostname, self.from_, self.kinds = hostname, from_, kinds
        self.protocol = protocol


class _Builder:
    def __init__(self, issues: Issues, host: str | None, port_map: dict[Any, int]):
        self.issues = issues
        self.host = host
        self.port_map = port_map
        self.native: dict[str, Any] = {"listeners": [], "upstreams": {}, "routes": []}
        self.origins: dict[tuple[Token, ...], Origin] = {}
        self.gateways: dict[str, Obj] = {}
        self.routes: list[Obj] = []
        self.stream_routes: list[Obj] = []      # TCPRoutes and TLSRoutes (streams.py)
        self.services: dict[str, Obj] = {}
        self.slices: dict[str, list[Obj]] = {}
        self.secrets: dict[str, Obj] = {}       # kubernetes.io/tls Secrets for HTTPS listeners
        self.configmaps: dict[str, Obj] = {}    # CA bundles (key ca.crt) of BackendTLSPolicies
        self.backend_tls: list[Obj] = []        # BackendTLSPolicies
        self.traffic_policies: list[Obj] = []   # Envoy Gateway BackendTrafficPolicies (traffic_policy.py)
        self.route_natives: dict[str, list[int]] = {}   # HTTPRoute key -> its native routes' indexes
        self.backend_lb: list[Obj] = []         # BackendLBPolicies (sessionPersistence)
        self.listeners: dict[str, list[_Listener]] = {}   # gateway key -> listeners

    # -- reporting and typed access ----------------------------------------------------------------

    def err(self, obj: Obj, tokens: list[Token], message: str) -> None:
        self.issues.add(obj, tokens, message)

    def fields(self, obj: Obj, tokens: list[Token], node: Any, known: dict[str, str | None]) -> dict[str, Any]:
        """`node` as a mapping; keys outside `known` are reported; a key whose `known` value is a
        message is reported as unsupported with that message."""
        if not isinstance(node, dict):
            if node is not None:
                self.err(obj, tokens, f"expected a mapping, got {type(node).__name__}")
            return {}
        for key in node:
            if key not in known:
                expected = ", ".join(k for k, v in known.items() if v is None)
                self.err(obj, [*tokens, key], f"unknown field (expected one of: {expected})")
            elif known[key] is not None:
                self.err(obj, [*tokens, key], str(known[key]))
        return node

    def typed(self, obj: Obj, tokens: list[Token], value: Any, types: type | tuple[type, ...],
              what: str) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.err(obj, tokens, f"expected {what}, got {value!r}")
            return None
        if not isinstance(value, types):
            self.err(obj, tokens, f"expected {what}, got {value!r}")
            return None
        return value

    def string(self, obj: Obj, tokens: list[Token], node: dict[str, Any], key: str,
               required: bool = False) -> str | None:
        value = self.typed(obj, [*tokens, key], node.get(key), str, "a string")
        if value is None and required and key not in node:
            self.err(obj, tokens, f"missing required field '{key}'")
        return value

    def integer(self, obj: Obj, tokens: list[Token], node: dict[str, Any], key: str,
                required: bool = False) -> int | None:
        value = self.typed(obj, [*tokens, key], node.get(key), int, "an integer")
        if value is None and required and key not in node:
            self.err(obj, tokens, f"missing required field '{key}'")
        return value

    def items(self, obj: Obj, tokens: list[Token], node: dict[str, Any], key: str) -> list[Any]:
        value = self.typed(obj, [*tokens, key], node.get(key), list, "a list")
        return value or []

    # -- objects -----------------------------------------------------------------------------------

    def collect(self, objs: list[Obj]) -> None:
        seen: dict[tuple[str, str], Obj] = {}
        for obj in objs:
            kind, api = obj.body.get("kind"), obj.body.get("apiVersion")
            if not isinstance(kind, str) or not isinstance(api, str):
                self.err(obj, [], "a Kubernetes object needs string 'apiVersion' and 'kind' fields")
                continue
            expected = {"Gateway": _GATEWAY_VERSIONS, "HTTPRoute": _GATEWAY_VERSIONS,
                        "GRPCRoute": (f"{GATEWAY_GROUP}/v1",),
                        "GatewayClass": _GATEWAY_VERSIONS, "Service": ("v1",),
                        "EndpointSlice": ("discovery.k8s.io/v1",), "Secret": ("v1",), "ConfigMap": ("v1",),
                        "BackendTLSPolicy": (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1alpha3"),
                        "BackendTrafficPolicy": (_BTP_VERSION,),
                        "BackendLBPolicy": (f"{GATEWAY_GROUP}/v1alpha2",),
                        **STREAM_ROUTE_VERSIONS}.get(kind)
            if expected is None:
                self.err(obj, ["kind"], f"unsupported kind {kind!r} ({api}); supported: Gateway, HTTPRoute "
                         f"({GATEWAY_GROUP}/v1 or v1beta1), GRPCRoute ({GATEWAY_GROUP}/v1), TCPRoute, TLSRoute, Service (v1), EndpointSlice "
                         f"(discovery.k8s.io/v1), Secret (v1, kubernetes.io/tls), ConfigMap (v1), BackendTLSPolicy "
                         f"({GATEWAY_GROUP}/v1), BackendTrafficPolicy ({_BTP_VERSION}, its rateLimit), "
                         f"BackendLBPolicy ({GATEWAY_GROUP}/v1alpha2)")
                continue
            if api not in expected:
                self.err(obj, ["apiVersion"], f"unsupported apiVersion {api!r} for {kind} "
                         f"(expected {' or '.join(expected)})")
                continue
            meta = obj.body.get("metadata")
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
                self.err(obj, ["metadata", "name"] if isinstance(meta, dict) else ["metadata"],
                         "metadata.name is required")
                continue
            if "namespace" in meta and not isinstance(meta["namespace"], str):
                self.err(obj, ["metadata", "namespace"], "expected a string")
                continue
            first = seen.get((kind, obj.key))
            if first is not None:
                self.err(obj, ["metadata", "name"], f"duplicate {kind} {obj.key!r} (first in document {first.doc})")
                continue
            seen[(kind, obj.key)] = obj
            if kind == "Gateway":
                self.gateways[obj.key] = obj
            elif kind in ("HTTPRoute", "GRPCRoute"):
                self.routes.append(obj)
            elif kind in STREAM_ROUTE_VERSIONS:
                self.stream_routes.append(obj)
            elif kind == "Service":
                self.services[obj.key] = obj
            elif kind == "Secret":
                self.secrets[obj.key] = obj
            elif kind == "ConfigMap":
                self.configmaps[obj.key] = obj
            elif kind == "BackendTLSPolicy":
                self.backend_tls.append(obj)
            elif kind == "BackendTrafficPolicy":
                self.traffic_policies.append(obj)
            elif kind == "BackendLBPolicy":
                self.backend_lb.append(obj)
            elif kind == "EndpointSlice":
                labels = obj.metadata.get("labels")
                svc = labels.get(_SLICE_LABEL) if isinstance(labels, dict) else None
                if not isinstance(svc, str):
                    self.err(obj, ["metadata", "labels"], f"an EndpointSlice needs the label {_SLICE_LABEL!r}")
                    continue
                self.slices.setdefault(f"{obj.namespace}/{svc}", []).append(obj)
            # GatewayClass: accepted; it has no data-plane meaning here.

    def _qualified(self, objs: list[Obj]) -> dict[str, str]:
        """Native name prefix per object key: the name, or `namespace.name` where names clash."""
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.name] = counts.get(o.name, 0) + 1
        return {o.key: o.name if counts[o.name] == 1 else f"{o.namespace}.{o.name}" for o in objs}

    # -- Gateways ----------------------------------------------------------------------------------

    def _port(self, gw: Obj, port: int) -> int:
        for key in ((gw.key, port), (gw.name, port), port):
            if key in self.port_map:
                return self.port_map[key]
        return port

    def _bind_host(self, gw: Obj, spec: dict[str, Any]) -> str:
        if self.host is not None:
            return self.host
        for i, addr in enumerate(self.items(gw, ["spec"], spec, "addresses")):
            a = self.fields(gw, ["spec", "addresses", i], addr, {"type": None, "value": None})
            kind = a.get("type", "IPAddress")
            if kind != "IPAddress":
                self.err(gw, ["spec", "addresses", i, "type"], f"not supported: address type {kind!r} "
                         "(only IPAddress, used as the bind address)")
                continue
            value = self.string(gw, ["spec", "addresses", i], a, "value", required=True)
            if value is not None:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    self.err(gw, ["spec", "addresses", i, "value"], f"not an IP address: {value!r}")
                    continue
                return value
        return "0.0.0.0"

    def map_gateways(self) -> None:
        names = self._qualified(list(self.gateways.values()))
        for gw in self.gateways.values():
            self.fields(gw, [], gw.body, {"apiVersion": None, "kind": None, "metadata": None, "spec": None,
                                          "status": None})
            spec = self.fields(gw, ["spec"], gw.body.get("spec"), {
                "gatewayClassName": None, "listeners": None, "addresses": None, "infrastructure": None,
                "allowedListeners": "not supported: ListenerSets",
                "tls": "not supported: Gateway-level TLS settings (spec.tls)",
                "defaultScope": "not supported: default Gateways",
            })
            host = self._bind_host(gw, spec)
            shown_host = f"[{host}]" if ":" in host else host
            out: list[_Listener] = []
            for i, item in enumerate(self.items(gw, ["spec"], spec, "listeners")):
                at: list[Token] = ["spec", "listeners", i]
                li = self.fields(gw, at, item, {"name": None, "hostname": None, "port": None, "protocol": None,
                                                "tls": None, "allowedRoutes": None})
                name = self.string(gw, at, li, "name", required=True)
                port = self.integer(gw, at, li, "port", required=True)
                hostname = self.string(gw, at, li, "hostname")
                protocol = self.string(gw, at, li, "protocol", required=True)
                native_protocol = "http" if protocol == "HTTPS" else listener_protocol(li)
                if protocol is not None and native_protocol is None:
                    reason = ("a TLS listener's tls.mode is Passthrough or Terminate"
                              if protocol == "TLS" else "only HTTP, HTTPS, TCP and TLS listeners are supported")
                    self.err(gw, [*at, "protocol"], f"not supported: protocol {protocol!r} ({reason})")
                    continue
                tls = None
                if protocol == "HTTPS" or native_protocol == "tls":
                    tls = self._listener_tls(gw, at, li)
                    if tls is None:
                        continue
                elif "tls" in li and native_protocol != "tls-passthrough":
                    self.err(gw, [*at, "tls"], "'tls' is for HTTPS and TLS Passthrough listeners only")
                from_, kinds = self._allowed_routes(gw, [*at, "allowedRoutes"], li.get("allowedRoutes"))
                if name is None or port is None or protocol is None:
                    continue
                native_name = f"{names[gw.key]}.{name}"
                listener: dict[str, Any] = {"name": native_name,
                                            "address": f"{shown_host}:{self._port(gw, port)}"}
                if hostname is not None:
                    listener["hostname"] = hostname
                if tls is not None:
                    listener["tls"] = tls
                if native_protocol != "http":
                    listener["protocol"] = native_protocol
                index = len(self.native["listeners"])
                self.native["listeners"].append(listener)
                self.origins[("listeners", index)] = (gw, at)
                self.origins[("listeners", index, "address")] = (gw, [*at, "port"])
                self.origins[("listeners", index, "hostname")] = (gw, [*at, "hostname"])
                self.origins[("listeners", index, "name")] = (gw, [*at, "name"])
                if tls is not None:
                    self.origins[("listeners", index, "tls")] = (gw, [*at, "tls"])
                    for k in range(len(tls["certificates"])):
                        self.origins[("listeners", index, "tls", "certificates", k)] = (
                            gw, [*at, "tls", "certificateRefs", k])
                out.append(_Listener(gw, name, native_name, port, hostname.lower() if hostname else None,
                                     from_, kinds, native_protocol or "http"))
            self.listeners[gw.key] = out

    def _listener_tls(self, gw: Obj, at: list[Token], li: dict[str, Any]) -> dict[str, Any] | None:
        """An HTTPS (or TLS Terminate) listener's `tls`: the certificates of its kubernetes.io/tls Secrets."""
        if "tls" not in li:
            self.err(gw, at, "an HTTPS listener needs tls.certificateRefs")
            return None
        tat = [*at, "tls"]
        tls = self.fields(gw, tat, li["tls"], {"mode": None, "certificateRefs": None, "options": None,
                                              "frontendValidation": "not supported: frontendValidation"})
        mode = tls.get("mode", "Terminate")
        if mode != "Terminate":
            self.err(gw, [*tat, "mode"], f"not supported: mode {mode!r} on an HTTPS listener (Terminate only; "
                     "Passthrough is a TLS listener's)")
            return None
        certs = []
        for j, ref in enumerate(self.items(gw, tat, tls, "certificateRefs")):
            rat = [*tat, "certificateRefs", j]
            r = self.fields(gw, rat, ref, {"group": None, "kind": None, "name": None, "namespace": None})
            group, kind = r.get("group", ""), r.get("kind", "Secret")
            if (group, kind) != ("", "Secret"):
                self.err(gw, rat, f"not supported: a certificateRef of kind {kind!r} in group {group!r} "
                         "(only core Secrets)")
                continue
            name = self.string(gw, rat, r, "name", required=True)
            if name is None:
                continue
            key = f"{r.get('namespace') or gw.namespace}/{name}"
            secret = self.secrets.get(key)
            if secret is None:
                self.err(gw, [*rat, "name"], f"Secret {key!r} not found in the manifests")
                continue
            pair = self._tls_secret(secret)
            if pair is not None:
                certs.append({"cert_pem": pair[0], "key_pem": pair[1]})
        if not certs:
            if not tls.get("certificateRefs"):
                self.err(gw, tat, "an HTTPS listener needs at least one certificateRef")
            return None
        return {"certificates": certs}

    def _tls_secret(self, secret: Obj) -> tuple[str, str] | None:
        body = secret.body
        if body.get("type") != "kubernetes.io/tls":
            self.err(secret, ["type"], "a certificate Secret must be of type kubernetes.io/tls")
            return None
        out = []
        for k in ("tls.crt", "tls.key"):
            string_data = body.get("stringData") if isinstance(body.get("stringData"), dict) else {}
            data = body.get("data") if isinstance(body.get("data"), dict) else {}
            if isinstance(string_data.get(k), str):
                out.append(string_data[k])
            elif isinstance(data.get(k), str):
                try:
                    out.append(base64.b64decode(data[k], validate=True).decode("ascii"))
                except (binascii.Error, UnicodeDecodeError):
                    self.err(secret, ["data", k], "not base64 of a PEM text")
                    return None
            else:
                self.err(secret, ["data"], f"a kubernetes.io/tls Secret needs data[{k!r}]")
                return None
        return out[0], out[1]

    def _allowed_routes(self, gw: Obj, at: list[Token], node: Any) -> tuple[str, list[tuple[str, str]] | None]:
        ar = self.fields(gw, at, node, {"namespaces": None, "kinds": None})
        ns = self.fields(gw, [*at, "namespaces"], ar.get("namespaces"),
                         {"from": None, "selector": "not supported: namespace selectors"})
        from_ = ns.get("from", "Same")
        if from_ not in ("Same", "All"):
            if from_ != "Selector":
                self.err(gw, [*at, "namespaces", "from"], f"expected Same, All or Selector, got {from_!r}")
            from_ = "Same"
        kinds = None
        if "kinds" in ar:
            kinds = []
            for j, k in enumerate(self.items(gw, at, ar, "kinds")):
                kk = self.fields(gw, [*at, "kinds", j], k, {"group": None, "kind": None})
                kinds.append((kk.get("group", GATEWAY_GROUP), kk.get("kind")))
        return from_, kinds

    # -- HTTPRoutes --------------------------------------------------------------------------------

    def _attach(self, route: Obj, spec: dict[str, Any], hostnames: list[str],
                route_kind: str = "HTTPRoute") -> list[str]:
        """Native listener names the route attaches to, in parentRefs order."""
        out: list[str] = []
        for i, item in enumerate(self.items(route, ["spec"], spec, "parentRefs")):
            at: list[Token] = ["spec", "parentRefs", i]
            ref = self.fields(route, at, item, {"group": None, "kind": None, "namespace": None, "name": None,
                                                "sectionName": None, "port": None})
            group, kind = ref.get("group", GATEWAY_GROUP), ref.get("kind", "Gateway")
            if (group, kind) != (GATEWAY_GROUP, "Gateway"):
                self.err(route, at, f"not supported: a parent of kind {kind!r} in group {group!r} "
                         "(only Gateways)")
                continue
            name = self.string(route, at, ref, "name", required=True)
            ns = self.string(route, at, ref, "namespace") or route.namespace
            section = self.string(route, at, ref, "sectionName")
            port = self.integer(route, at, ref, "port")
            if name is None:
                continue
            if f"{ns}/{name}" not in self.gateways:
                self.err(route, [*at, "name"], f"no Gateway {ns}/{name} in these manifests")
                continue
            for li in self.listeners.get(f"{ns}/{name}", []):
                if section is not None and li.name != section:
                    continue
                if port is not None and li.port != port:
                    continue
                if li.from_ == "Same" and li.gateway.namespace != route.namespace:
                    continue
                if li.kinds is not None and (GATEWAY_GROUP, route_kind) not in li.kinds:
                    continue
                if li.protocol not in ROUTE_PROTOCOL[route_kind]:
                    continue
                if li.hostname is not None and hostnames and not any(
                        _host_intersects(li.hostname, h) for h in hostnames):
                    continue
                if li.native not in out:
                    out.append(li.native)
        return out

    def map_routes(self) -> None:
        names = self._qualified(self.routes)
        far_future = datetime.datetime.max.replace(tzinfo=datetime.UTC)

        def order(r: Obj) -> tuple[datetime.datetime, str]:
            return _timestamp(r.metadata.get("creationTimestamp")) or far_future, r.key

        for route in sorted(self.routes, key=order):
            self.fields(route, [], route.body, {"apiVersion": None, "kind": None, "metadata": None,
                                                "spec": None, "status": None})
            spec = self.fields(route, ["spec"], route.body.get("spec"), {
                "parentRefs": None, "hostnames": None, "rules": None,
                "useDefaultGateways": "not supported: default Gateways",
            })
            hostnames: list[str] = []
            for i, h in enumerate(self.items(route, ["spec"], spec, "hostnames")):
                h = self.typed(route, ["spec", "hostnames", i], h, str, "a hostname")
                if h is not None:
                    hostnames.append(h.lower())
            listeners = self._attach(route, spec, hostnames, route.body.get("kind", "HTTPRoute"))
            rules = self.items(route, ["spec"], spec, "rules") if "rules" in spec else [{}]
            for i, rule in enumerate(rules):
                built = self._rule(route, ["spec", "rules", i] if "rules" in spec else ["spec"], rule, hostnames)
                if built is None or not listeners:
                    continue
                native, origins = built
                native = {"name": f"{names[route.key]}.r{i}", **native, "listeners": listeners}
                index = len(self.native["routes"])
                self.native["routes"].append(native)
                self.route_natives.setdefault(route.key, []).append(index)
                for tokens, origin in origins.items():
                    self.origins[("routes", index, *tokens)] = origin
                self.origins[("routes", index, "listeners")] = (route, ["spec", "parentRefs"])
                self.origins[("routes", index, "name")] = (route, ["metadata", "name"])

    def _rule(self, route: Obj, at: list[Token], rule: Any, hostnames: list[str]
              ) -> tuple[dict[str, Any], dict[tuple[Token, ...], Origin]] | None:
        r = self.fields(route, at, rule, {
            "name": None, "matches": None, "filters": None, "backendRefs": None,
            "timeouts": None, "retry": None, "sessionPersistence": None,
        })
        origins: dict[tuple[Token, ...], Origin] = {(): (route, at)}
        out: dict[str, Any] = {}
        matches = []
        grpc = route.body.get("kind") == "GRPCRoute"
        raw = self.items(route, at, r, "matches") if r.get("matches") else [{}]
        for j, m in enumerate(raw):
            mat = [*at, "matches", j] if r.get("matches") else at
            origins[("matches", j)] = (route, mat)
            if grpc:
                matches.append(self._grpc_match(route, mat, m, hostnames, origins, ("matches", j)))
            else:
                matches.append(self._match(route, mat, m, hostnames, origins, ("matches", j)))
        out["matches"] = matches
        filters, forigins = self._filters(route, at, r.get("filters"), rule_level=True)
        for kind in _POLICY_FILTERS:
            policy = filters.pop(kind, None)
            if policy is None:
                continue
            n = len(out.setdefault("policies", []))
            out["policies"].append(policy)
            origins[("policies", n)] = forigins.pop((kind,))
            for tokens in [t for t in forigins if t[:1] == (kind,)]:
                origins[("policies", n, *tokens[1:])] = forigins.pop(tokens)
        if filters:
            out["filters"] = filters
            for tokens, origin in forigins.items():
                origins[("filters", *tokens)] = origin
        refs = self.items(route, at, r, "backendRefs")
        if filters.get("redirect") is not None:
            if refs:
                self.err(route, [*at, "backendRefs"], "a RequestRedirect filter must not be used together "
                         "with backendRefs")
            return out, origins
        backends = []
        for j, ref in enumerate(refs):
            bat = [*at, "backendRefs", j]
            origins[("backends", j)] = (route, bat)
            b = self.fields(route, bat, ref, {"group": None, "kind": None, "name": None, "namespace": None,
                                              "port": None, "weight": None, "filters": None})
            backend: dict[str, Any] = {"upstream": self._resolve(route, bat, b, h2c=grpc)}
            weight = self.integer(route, bat, b, "weight")
            if weight is not None:
                backend["weight"] = weight
                origins[("backends", j, "weight")] = (route, [*bat, "weight"])
            bfilters, borigins = self._filters(route, bat, b.get("filters"), rule_level=False)
            if bfilters:
                backend["filters"] = bfilters
                for tokens, origin in borigins.items():
                    origins[("backends", j, "filters", *tokens)] = origin
            backends.append(backend)
        out["backends"] = backends
        self._timeouts_and_retry(route, at, r, out, origins)
        if "sessionPersistence" in r:
            sticky = self._session_persistence(route, [*at, "sessionPersistence"], r["sessionPersistence"])
            if sticky is not None:
                for b in backends:
                    if b["upstream"] is not None:
                        b["upstream"] = self._sticky_upstream(b["upstream"], sticky, route,
                                                              [*at, "sessionPersistence"])
        return out, origins

    # -- timeouts, retries, session persistence (docs/retries.md, docs/load-balancing.md) ---------------

    def _timeouts_and_retry(self, route: Obj, at: list[Token], r: dict[str, Any], out: dict[str, Any],
                            origins: dict[tuple[Token, ...], Origin]) -> None:
        """`timeouts.request` / `backendRequest` and `retry` (GEP-1731) -> the route's `timeouts` and
        `retry`: `attempts` counts retries after the first try; `codes` are the statuses retried;
        connection errors, resets and backend timeouts are always retried; `backoff` is the base of
        the jittered exponential backoff."""
        t = self.fields(route, [*at, "timeouts"], r.get("timeouts"), {"request": None, "backendRequest": None})
        timeouts: dict[str, Any] = {}
        for key, native in (("request", "request"), ("backendRequest", "backend_request")):
            value = self.string(route, [*at, "timeouts"], t, key)
            if value is not None:
                timeouts[native] = value
                origins[("timeouts", native)] = (route, [*at, "timeouts", key])
        if timeouts:
            out["timeouts"] = timeouts
            origins[("timeouts",)] = (route, [*at, "timeouts"])
        if "retry" not in r:
            return
        rt = self.fields(route, [*at, "retry"], r.get("retry"), {"codes": None, "attempts": None, "backoff": None})
        retry: dict[str, Any] = {"retry_on": ["connect-failure", "reset", "timeout"]}
        origins[("retry",)] = (route, [*at, "retry"])
        attempts = self.integer(route, [*at, "retry"], rt, "attempts")
        if attempts is not None:
            retry["attempts"] = attempts
            origins[("retry", "attempts")] = (route, [*at, "retry", "attempts"])
        codes = []
        for k, code in enumerate(self.items(route, [*at, "retry"], rt, "codes")):
            code = self.typed(route, [*at, "retry", "codes", k], code, int, "a status code")
            if code is not None:
                origins[("retry", "statuses", len(codes))] = (route, [*at, "retry", "codes", k])
                codes.append(code)
        if codes:
            retry["statuses"] = codes
        backoff = self.string(route, [*at, "retry"], rt, "backoff")
        if backoff is not None:
            retry["backoff"] = {"base": backoff}
            origins[("retry", "backoff", "base")] = (route, [*at, "retry", "backoff"])
        out["retry"] = retry

    def _session_persistence(self, obj: Obj, at: list[Token], node: Any) -> dict[str, Any] | None:
        """GEP-1619 `sessionPersistence` -> the native `sticky` (a cookie the gateway sets naming the
        target): `sessionName` is the cookie's name; `cookieConfig.lifetimeType: Permanent` gives it
        `absoluteTimeout` as Max-Age, `Session` (the default) a session cookie."""
        sp = self.fields(obj, at, node, {
            "sessionName": None, "absoluteTimeout": None, "type": None, "cookieConfig": None,
            "idleTimeout": "not supported: idleTimeout (the cookie is not renewed on use)",
        })
        kind = sp.get("type", "Cookie")
        if kind != "Cookie":
            self.err(obj, [*at, "type"], f"not supported: session persistence of type {kind!r} (Cookie only)")
            return None
        cc = self.fields(obj, [*at, "cookieConfig"], sp.get("cookieConfig"), {"lifetimeType": None})
        lifetime = cc.get("lifetimeType", "Session")
        sticky: dict[str, Any] = {}
        name = self.string(obj, at, sp, "sessionName")
        if name is not None:
            sticky["cookie"] = name
        timeout = self.string(obj, at, sp, "absoluteTimeout")
        if lifetime == "Permanent":
            if timeout is None:
                self.err(obj, at, "absoluteTimeout is required with cookieConfig.lifetimeType Permanent")
                return None
            sticky["ttl"] = timeout
        elif lifetime != "Session":
            self.err(obj, [*at, "cookieConfig", "lifetimeType"], f"expected Permanent or Session, got {lifetime!r}")
            return None
        elif timeout is not None:
            self.err(obj, [*at, "absoluteTimeout"], "not supported: absoluteTimeout on a Session cookie (the "
                     "cookie carries no expiry; use cookieConfig.lifetimeType: Permanent)")
            return None
        return sticky

    def _sticky_upstream(self, name: str, sticky: dict[str, Any], obj: Obj, at: list[Token]) -> str:
        """The upstream of `name`'s targets with these sticky settings: its own copy, so rules that
        share a Service but not its session persistence keep theirs apart (pools and health stay per
        target address)."""
        import hashlib
        import json

        tag = hashlib.sha256(json.dumps(sticky, sort_keys=True).encode()).hexdigest()[:8]
        sticky_name = f"{name}.session-{tag}"
        ups = self.native["upstreams"]
        if sticky_name not in ups:
            ups[sticky_name] = {**ups[name], "sticky": sticky}
            for tokens, origin in list(self.origins.items()):
                if tokens[:2] == ("upstreams", name):
                    self.origins[("upstreams", sticky_name, *tokens[2:])] = origin
            self.origins[("upstreams", sticky_name, "sticky")] = (obj, at)
            for key in sticky:
                self.origins[("upstreams", sticky_name, "sticky", key)] = (obj, at)
        return sticky_name

    def _grpc_match(self, route: Obj, at: list[Token], node: Any, hostnames: list[str],
                    origins: dict[tuple[Token, ...], Origin], prefix: tuple[Token, ...]) -> dict[str, Any]:
        """A GRPCRouteMatch: `method` (service and method, Exact or RegularExpression) becomes the native
        `grpc` match; `headers` as HTTPRoute's."""
        m = self.fields(route, at, node, {"method": None, "headers": None})
        out = self._match(route, at, {"headers": m["headers"]} if "headers" in m else {}, hostnames, origins,
                          prefix)
        if "method" in m:
            mat = [*at, "method"]
            mm = self.fields(route, mat, m["method"], {"type": None, "service": None, "method": None})
            mtype = mm.get("type", "Exact")
            if mtype not in ("Exact", "RegularExpression"):
                self.err(route, [*mat, "type"], f"expected Exact or RegularExpression, got {mtype!r}")
                mtype = "Exact"
            grpc: dict[str, Any] = {"type": mtype}
            for key in ("service", "method"):
                value = self.string(route, mat, mm, key)
                if value is not None:
                    grpc[key] = value
            del out["path"]
            origins.pop((*prefix, "path"), None)
            out["grpc"] = grpc
            origins[(*prefix, "grpc")] = (route, mat)
        return out

    def _match(self, route: Obj, at: list[Token], node: Any, hostnames: list[str],
               origins: dict[tuple[Token, ...], Origin], prefix: tuple[Token, ...]) -> dict[str, Any]:
        m = self.fields(route, at, node, {"path": None, "headers": None, "queryParams": None, "method": None})
        out: dict[str, Any] = {}
        if hostnames:
            out["hosts"] = list(hostnames)
            origins[(*prefix, "hosts")] = (route, ["spec", "hostnames"])
            for k in range(len(hostnames)):
                origins[(*prefix, "hosts", k)] = (route, ["spec", "hostnames", k])
        p = self.fields(route, [*at, "path"], m.get("path"), {"type": None, "value": None})
        ptype = p.get("type", "PathPrefix")
        value = self.string(route, [*at, "path"], p, "value")
        value = "/" if value is None else value
        key = {"PathPrefix": "prefix", "Exact": "exact", "RegularExpression": "regex"}.get(ptype)
        if key is None:
            self.err(route, [*at, "path", "type"], f"expected PathPrefix, Exact or RegularExpression, got {ptype!r}")
            key = "prefix"
        out["path"] = {key: value}
        origins[(*prefix, "path")] = (route, [*at, "path"])
        method = self.string(route, at, m, "method")
        if method is not None:
            out["methods"] = [method]
            origins[(*prefix, "methods")] = (route, [*at, "method"])
        for field, native, fold in (("headers", "headers", True), ("queryParams", "query", False)):
            conds: list[dict[str, Any]] = []
            seen: set[str] = set()
            for k, c in enumerate(self.items(route, at, m, field)):
                cat = [*at, field, k]
                cc = self.fields(route, cat, c, {"type": None, "name": None, "value": None})
                name = self.string(route, cat, cc, "name", required=True)
                val = self.string(route, cat, cc, "value", required=True)
                ctype = cc.get("type", "Exact")
                if ctype not in ("Exact", "RegularExpression"):
                    self.err(route, [*cat, "type"], f"expected Exact or RegularExpression, got {ctype!r}")
                    continue
                if name is None or val is None:
                    continue
                # Gateway API: of several conditions on one name, only the first counts.
                ident = name.lower() if fold else name
                if ident in seen:
                    continue
                seen.add(ident)
                origins[(*prefix, native, len(conds))] = (route, cat)
                conds.append({"name": name, "value" if ctype == "Exact" else "regex": val})
            if conds:
                out[native] = conds
        return out

    # -- filters -----------------------------------------------------------------------------------

    def _filters(self, route: Obj, at: list[Token], node: Any, rule_level: bool
                 ) -> tuple[dict[str, Any], dict[tuple[Token, ...], Origin]]:
        out: dict[str, Any] = {}
        origins: dict[tuple[Token, ...], Origin] = {}
        if node is None:
            return out, origins
        items = self.typed(route, [*at, "filters"], node, list, "a list") or []
        for i, item in enumerate(items):
            fat: list[Token] = [*at, "filters", i]
            f = self.fields(route, fat, item, {"type": None, **{v: None for v in _FILTER_FIELDS.values()}})
            ftype = self.string(route, fat, f, "type", required=True)
            if ftype is None:
                continue
            if ftype in _UNSUPPORTED_FILTERS:
                self.err(route, [*fat, "type"], f"not supported: {_UNSUPPORTED_FILTERS[ftype]}")
                continue
            field = _FILTER_FIELDS.get(ftype)
            if field is None:
                self.err(route, [*fat, "type"], f"unknown filter type {ftype!r} (expected one of: "
                         f"{', '.join(_FILTER_FIELDS)})")
                continue
            for other in _FILTER_FIELDS.values():
                if other != field and other in f:
                    self.err(route, [*fat, other], f"does not belong to a filter of type {ftype}")
            if field not in f:
                self.err(route, fat, f"missing required field '{field}' for type {ftype}")
                continue
            key = _NATIVE_FILTER_KEY[ftype]
            if key in out:
                self.err(route, [*fat, "type"], "not supported: more than one RequestMirror filter"
                         if key == "mirror" else f"the {ftype} filter cannot be repeated")
                continue
            sat = [*fat, field]
            spec = f[field]
            if key in _POLICY_FILTERS and not rule_level:
                self.err(route, [*fat, "type"], f"not supported: {'an' if ftype[0] in 'AEIOU' else 'a'} {ftype} "
                         "filter on a backendRef")
                continue
            if key == "cors":
                value = self._cors(route, sat, spec, origins)
            elif key == "external_auth":
                value = self._external_auth(route, sat, spec, origins)
                if value is None:
                    continue
            elif key in ("request_headers", "response_headers"):
                value = self._header_filter(route, sat, spec, origins, (key,))
            elif key == "redirect":
                value = self._redirect(route, sat, spec)
            elif key == "rewrite":
                value = self._rewrite(route, sat, spec)
            else:
                value = self._mirror(route, sat, spec)
                if value is None:
                    continue
            out[key] = value
            origins[(key,)] = (route, sat)
        return out, origins

    def _cors(self, route: Obj, at: list[Token], node: Any,
              origins: dict[tuple[Token, ...], Origin]) -> dict[str, Any]:
        """HTTPCORSFilter as the native `cors` policy (docs/cors.md, same semantics)."""
        c = self.fields(route, at, node, {"allowOrigins": None, "allowCredentials": None, "allowMethods": None,
                                          "allowHeaders": None, "exposeHeaders": None, "maxAge": None})
        out: dict[str, Any] = {"type": "cors"}
        credentials = c.get("allowCredentials")
        if credentials is not None:
            credentials = self.typed(route, [*at, "allowCredentials"], credentials, bool, "true or false")
            if credentials is not None:
                out["allow_credentials"] = credentials
                origins[("cors", "allow_credentials")] = (route, [*at, "allowCredentials"])
        for src, dst in (("allowOrigins", "allow_origins"), ("allowMethods", "allow_methods"),
                         ("allowHeaders", "allow_headers"), ("exposeHeaders", "expose_headers")):
            values = []
            for i, v in enumerate(self.items(route, at, c, src)):
                v = self.typed(route, [*at, src, i], v, str, "a string")
                if v is not None:
                    origins[("cors", dst, len(values))] = (route, [*at, src, i])
                    values.append(v)
            if values:
                out[dst] = values
                origins[("cors", dst)] = (route, [*at, src])
        if credentials and out.get("allow_origins") == ["*"]:
            # the filter echoes any Origin with credentials; the native config makes that explicit
            del out["allow_origins"]
            out["allow_origin_regex"] = [".*"]
            origins[("cors", "allow_origin_regex", 0)] = (route, [*at, "allowOrigins", 0])
        max_age = self.integer(route, at, c, "maxAge")
        if max_age is not None:
            out["max_age"] = max_age
            origins[("cors", "max_age")] = (route, [*at, "maxAge"])
        return out

    def _external_auth(self, route: Obj, at: list[Token], node: Any,
                       origins: dict[tuple[Token, ...], Origin]) -> dict[str, Any] | None:
        """HTTPExternalAuthFilter (GEP-1494) as the native `external_auth` policy (docs/gateway-api.md):
        protocol HTTP only; the auth service is the backendRef Service's first ready endpoint. A
        backendRef that does not resolve (or has no endpoint) becomes a `respond` 500 (503): fail closed."""
        e = self.fields(route, at, node, {"protocol": None, "backendRef": None, "grpc": None, "http": None,
                                          "forwardBody": None})
        protocol = self.string(route, at, e, "protocol", required=True)
        if protocol == "GRPC":
            self.err(route, [*at, "protocol"], "not supported: protocol GRPC (fastgw's external_auth speaks "
                     "HTTP to the auth service; use protocol HTTP)")
            return None
        if protocol is not None and protocol != "HTTP":
            self.err(route, [*at, "protocol"], f"expected HTTP or GRPC, got {protocol!r}")
            return None
        if "grpc" in e:
            self.err(route, [*at, "grpc"], "does not belong to an ExternalAuth filter of protocol HTTP")
        body = self.fields(route, [*at, "forwardBody"], e.get("forwardBody"), {"maxSize": None})
        size = self.integer(route, [*at, "forwardBody"], body, "maxSize")
        if size:
            self.err(route, [*at, "forwardBody", "maxSize"], "not supported: forwarding the request body to "
                     "the auth service (fastgw sends it the request's head only; leave maxSize 0 or unset)")
        if "backendRef" not in e:
            self.err(route, at, "missing required field 'backendRef'")
            return None
        bat = [*at, "backendRef"]
        ref = self.fields(route, bat, e["backendRef"],
                          {"group": None, "kind": None, "name": None, "namespace": None, "port": None})
        known = set(self.native["upstreams"])
        upstream = self._resolve(route, bat, ref)
        spec = self.native["upstreams"][upstream] if upstream is not None else None
        if upstream is not None and upstream not in known:
            # the auth service is called by URL, not proxied to: no upstream of its own
            del self.native["upstreams"][upstream]
            for tokens in [t for t in self.origins if t[:2] == ("upstreams", upstream)]:
                del self.origins[tokens]
        if spec is None or not spec["targets"]:
            # Gateway API: a filter whose backendRef does not resolve fails closed, as a backend
            # without endpoints cannot authorize anything: the rule's requests are refused
            status, why = (500, "cannot be resolved") if spec is None else (503, "has no ready endpoint")
            origins[("external_auth", "status")] = (route, bat)
            return {"type": "respond", "status": status, "headers": {"Content-Type": "application/json"},
                    "body": f'{{"error":"the auth service\'s backend {why}"}}'}
        if spec.get("tls") is not None:
            self.err(route, bat, "not supported: a BackendTLSPolicy on the auth service's backend")
            return None
        h = self.fields(route, [*at, "http"], e.get("http"), {"path": None, "allowedHeaders": None,
                                                              "allowedResponseHeaders": None})
        prefix = self.string(route, [*at, "http"], h, "path") or ""
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        if "?" in prefix or "#" in prefix:
            self.err(route, [*at, "http", "path"], "a path, without query or fragment")
            prefix = ""
        # a refusal reaches the client as the auth service made it, its headers included
        out: dict[str, Any] = {"type": "external_auth",
                               "url": f"http://{spec['targets'][0]['address']}{prefix.rstrip('/')}",
                               "client_headers": ["*"]}
        origins[("external_auth", "url")] = (route, bat)
        for src, dst in (("allowedHeaders", "request_headers"), ("allowedResponseHeaders", "upstream_headers")):
            values = []
            for i, v in enumerate(self.items(route, [*at, "http"], h, src)):
                v = self.typed(route, [*at, "http", src, i], v, str, "a string")
                if v is not None:
                    origins[("external_auth", dst, len(values))] = (route, [*at, "http", src, i])
                    values.append(v)
            # Gateway API: an empty list sends (copies) every header
            out[dst] = values or ["*"]
            origins[("external_auth", dst)] = (route, [*at, "http", src] if values else [*at, "http"])
        return out

    def _header_filter(self, route: Obj, at: list[Token], node: Any,
                       origins: dict[tuple[Token, ...], Origin], prefix: tuple[Token, ...]) -> dict[str, Any]:
        h = self.fields(route, at, node, {"set": None, "add": None, "remove": None})
        out: dict[str, Any] = {}
        for op in ("set", "add"):
            entries: dict[str, str] = {}
            for i, e in enumerate(self.items(route, at, h, op)):
                ee = self.fields(route, [*at, op, i], e, {"name": None, "value": None})
                name = self.string(route, [*at, op, i], ee, "name", required=True)
                value = self.string(route, [*at, op, i], ee, "value", required=True)
                if name is None or value is None:
                    continue
                if any(n.lower() == name.lower() for n in entries):
                    self.err(route, [*at, op, i, "name"], f"header {name!r} is listed twice")
                    continue
                entries[name] = value
                origins[(*prefix, op, name)] = (route, [*at, op, i, "name"])
            if entries:
                out[op] = entries
        remove = []
        for i, name in enumerate(self.items(route, at, h, "remove")):
            name = self.typed(route, [*at, "remove", i], name, str, "a header name")
            if name is not None:
                origins[(*prefix, "remove", len(remove))] = (route, [*at, "remove", i])
                remove.append(name)
        if remove:
            out["remove"] = remove
        return out

    def _path_modifier(self, route: Obj, at: list[Token], node: Any) -> dict[str, Any] | None:
        p = self.fields(route, at, node, {"type": None, "replaceFullPath": None, "replacePrefixMatch": None})
        ptype = self.string(route, at, p, "type", required=True)
        field = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}.get(ptype or "")
        if field is None:
            if ptype is not None:
                self.err(route, [*at, "type"], f"expected ReplaceFullPath or ReplacePrefixMatch, got {ptype!r}")
            return None
        other = "replacePrefixMatch" if field == "replaceFullPath" else "replaceFullPath"
        if other in p:
            self.err(route, [*at, other], f"does not belong to a path modifier of type {ptype}")
        value = self.string(route, at, p, field, required=True)
        if value is None:
            return None
        return {"full": value} if field == "replaceFullPath" else {"prefix": value}

    def _redirect(self, route: Obj, at: list[Token], node: Any) -> dict[str, Any]:
        r = self.fields(route, at, node, {"scheme": None, "hostname": None, "path": None, "port": None,
                                          "statusCode": None})
        out: dict[str, Any] = {}
        for src, dst in (("scheme", "scheme"), ("hostname", "hostname")):
            value = self.string(route, at, r, src)
            if value is not None:
                out[dst] = value
        for src, dst in (("port", "port"), ("statusCode", "status")):
            value = self.integer(route, at, r, src)
            if value is not None:
                out[dst] = value
        if "path" in r:
            path = self._path_modifier(route, [*at, "path"], r["path"])
            if path is not None:
                out["path"] = path
        return out

    def _rewrite(self, route: Obj, at: list[Token], node: Any) -> dict[str, Any]:
        r = self.fields(route, at, node, {"hostname": None, "path": None})
        out: dict[str, Any] = {}
        hostname = self.string(route, at, r, "hostname")
        if hostname is not None:
            out["hostname"] = hostname
        if "path" in r:
            path = self._path_modifier(route, [*at, "path"], r["path"])
            if path is not None:
                out["path"] = path
        return out

    def _mirror(self, route: Obj, at: list[Token], node: Any) -> dict[str, Any] | None:
        m = self.fields(route, at, node, {"backendRef": None, "percent": None, "fraction": None})
        if "backendRef" not in m:
            self.err(route, at, "missing required field 'backendRef'")
            return None
        ref = self.fields(route, [*at, "backendRef"], m["backendRef"],
                          {"group": None, "kind": None, "name": None, "namespace": None, "port": None})
        upstream = self._resolve(route, [*at, "backendRef"], ref)
        percent: float = 100.0
        if "percent" in m and "fraction" in m:
            self.err(route, [*at, "fraction"], "'percent' and 'fraction' cannot both be set")
        if "percent" in m:
            p = self.integer(route, at, m, "percent")
            if p is None or not 0 <= p <= 100:
                self.err(route, [*at, "percent"], "expected an integer from 0 to 100")
                return None
            percent = float(p)
        elif "fraction" in m:
            fr = self.fields(route, [*at, "fraction"], m["fraction"], {"numerator": None, "denominator": None})
            num = self.integer(route, [*at, "fraction"], fr, "numerator", required=True)
            den = self.integer(route, [*at, "fraction"], fr, "denominator")
            den = 100 if den is None else den
            if num is None or den <= 0 or not 0 <= num <= den:
                self.err(route, [*at, "fraction"], "expected 0 <= numerator <= denominator and denominator > 0")
                return None
            percent = 100.0 * num / den
        if upstream is None:
            self.err(route, [*at, "backendRef"], "the mirror's backend cannot be resolved (it must be a Service "
                     "in these manifests, in the route's namespace, with that port)")
            return None
        if percent == 0:
            return None
        return {"upstream": upstream, "percent": percent}

    # -- backends ----------------------------------------------------------------------------------

    def _resolve(self, route: Obj, at: list[Token], ref: dict[str, Any], h2c: bool = False) -> str | None:
        """The native upstream of a backendRef, or None where it cannot be resolved (the route answers
        500 for it, as Gateway API asks)."""
        name = self.string(route, at, ref, "name", required=True)
        port = self.integer(route, at, ref, "port")
        ns = self.string(route, at, ref, "namespace") or route.namespace
        group, kind = ref.get("group", ""), ref.get("kind", "Service")
        if name is None or (group, kind) != ("", "Service"):
            return None
        if port is None:
            self.err(route, at, "missing required field 'port' (a Service backendRef needs a port)")
            return None
        if ns != route.namespace:
            return None   # cross-namespace references need a ReferenceGrant, which is not supported
        svc = self.services.get(f"{ns}/{name}")
        if svc is None:
            return None
        spec = svc.body.get("spec") if isinstance(svc.body.get("spec"), dict) else {}
        for i, sp in enumerate(spec.get("ports") or []):
            if isinstance(sp, dict) and sp.get("port") == port:
                return self._upstream(svc, spec, i, sp, h2c)
        return None

    def _upstream(self, svc: Obj, spec: dict[str, Any], index: int, sp: dict[str, Any],
                  h2c: bool = False) -> str | None:
        """The native upstream of a Service port. HTTP/2 cleartext (h2c) when the port's appProtocol
        is kubernetes.io/h2c, or for a GRPCRoute's backend (`h2c`; a port other routes reach over
        HTTP/1.1 is then another upstream, named with `.grpc`)."""
        app = sp.get("appProtocol")
        h2c = h2c or app == "kubernetes.io/h2c"
        name = f"{svc.namespace}.{svc.name}.{sp['port']}"
        if h2c and app != "kubernetes.io/h2c":
            name += ".grpc"
        if name in self.native["upstreams"]:
            return name
        at: list[Token] = ["spec", "ports", index]
        if app == "kubernetes.io/h2c":
            app = None
        tls = self._backend_tls(svc, sp)
        if tls == "invalid":
            return None    # Gateway API: a backend whose BackendTLSPolicy cannot be honoured answers 500
        if tls is not None and app in ("https", "HTTPS", "kubernetes.io/https"):
            app = None
        if app not in (None, "http", "HTTP", "kubernetes.io/http"):
            self.err(svc, [*at, "appProtocol"], f"not supported: appProtocol {app!r} (supported: http, "
                     "kubernetes.io/h2c, and https with a BackendTLSPolicy)")
        if sp.get("protocol", "TCP") != "TCP":
            self.err(svc, [*at, "protocol"], f"not supported: protocol {sp.get('protocol')!r} (TCP only)")
        targets: list[dict[str, Any]] = []
        origins: dict[tuple[Token, ...], Origin] = {("upstreams", name): (svc, at)}
        if spec.get("type") == "ExternalName":
            host = spec.get("externalName")
            target_port = sp.get("targetPort")
            if not isinstance(target_port, int):
                target_port = sp["port"]
            if isinstance(host, str):
                origins[("upstreams", name, "targets", 0)] = (svc, ["spec", "externalName"])
                targets.append({"address": f"{host}:{target_port}"})
        else:
            seen: set[str] = set()
            for sl in self.slices.get(svc.key, []):
                port = self._slice_port(sl, sp)
                if port is None:
                    continue
                for e, ep in enumerate(sl.body.get("endpoints") or []):
                    if not isinstance(ep, dict):
                        continue
                    conditions = ep.get("conditions") if isinstance(ep.get("conditions"), dict) else {}
                    if conditions.get("ready") is False:
                        continue
                    for a, addr in enumerate(ep.get("addresses") or []):
                        if not isinstance(addr, str):
                            continue
                        shown = f"[{addr}]" if ":" in addr else addr
                        address = f"{shown}:{port}"
                        if address in seen:
                            continue
                        seen.add(address)
                        origins[("upstreams", name, "targets", len(targets))] = (sl, ["endpoints", e, "addresses", a])
                        targets.append({"address": address})
        self.native["upstreams"][name] = {"targets": targets}
        if tls is not None:
            self.native["upstreams"][name]["tls"] = tls
        lb = self._backend_lb(svc)
        if lb is not None:
            self.native["upstreams"][name]["sticky"], origins[("upstreams", name, "sticky")] = lb
        if h2c:
            self.native["upstreams"][name]["protocol"] = "h2" if tls is not None else "h2c"
        self.origins.update(origins)
        return name

    def _backend_lb(self, svc: Obj) -> tuple[dict[str, Any], Origin] | None:
        """The sticky settings a BackendLBPolicy's `sessionPersistence` gives a Service (the oldest
        policy naming it wins, then by name); a rule's own sessionPersistence takes precedence."""
        found = []
        for pol in self.backend_lb:
            spec = pol.body.get("spec") if isinstance(pol.body.get("spec"), dict) else {}
            for ref in spec.get("targetRefs") or []:
                if (isinstance(ref, dict) and (ref.get("group", ""), ref.get("kind")) == ("", "Service")
                        and pol.namespace == svc.namespace and ref.get("name") == svc.name):
                    ts = _timestamp(pol.metadata.get("creationTimestamp")) or datetime.datetime.max.replace(
                        tzinfo=datetime.UTC)
                    found.append((ts, pol.name, pol, spec))
        if not found:
            return None
        *_, pol, spec = min(found, key=lambda f: f[:2])
        self.fields(pol, ["spec"], spec, {"targetRefs": None, "sessionPersistence": None})
        if "sessionPersistence" not in spec:
            return None
        sticky = self._session_persistence(pol, ["spec", "sessionPersistence"], spec["sessionPersistence"])
        return None if sticky is None else (sticky, (pol, ["spec", "sessionPersistence"]))

    def _backend_tls(self, svc: Obj, sp: dict[str, Any]) -> dict[str, Any] | str | None:
        """The upstream `tls` a BackendTLSPolicy asks for this Service port: None (no policy), or
        "invalid" (a CA reference that does not resolve to a PEM bundle). A policy naming the port
        (sectionName) beats one for the whole Service; then the oldest, then by name, wins."""
        found = []
        for pol in self.backend_tls:
            spec = pol.body.get("spec") if isinstance(pol.body.get("spec"), dict) else {}
            for ref in spec.get("targetRefs") or []:
                if not isinstance(ref, dict) or (ref.get("group", ""), ref.get("kind")) != ("", "Service"):
                    continue
                if pol.namespace != svc.namespace or ref.get("name") != svc.name:
                    continue
                section = ref.get("sectionName")
                if section is not None and section != sp.get("name"):
                    continue
                ts = _timestamp(pol.metadata.get("creationTimestamp")) or datetime.datetime.max.replace(
                    tzinfo=datetime.UTC)
                found.append((section is None, ts, pol.name, pol, spec))
        if not found:
            return None
        *_, pol, spec = min(found, key=lambda f: f[:3])
        v = spec.get("validation") if isinstance(spec.get("validation"), dict) else {}
        at: list[Token] = ["spec", "validation"]
        hostname = v.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            self.err(pol, at, "validation.hostname is required (the SNI and the name verified)")
            return "invalid"
        tls: dict[str, Any] = {"server_name": hostname}
        sans = []
        for k, san in enumerate(v.get("subjectAltNames") or []):
            kind = san.get("type") if isinstance(san, dict) else None
            if kind == "Hostname" and isinstance(san.get("hostname"), str):
                sans.append({"hostname": san["hostname"]})
            elif kind == "URI" and isinstance(san.get("uri"), str):
                sans.append({"uri": san["uri"]})
            else:
                self.err(pol, [*at, "subjectAltNames", k], "expected {type: Hostname, hostname} or {type: URI, uri}")
        if sans:
            tls["subject_alt_names"] = sans
        if v.get("wellKnownCACertificates") == "System":
            return tls
        bundle = []
        for ref in v.get("caCertificateRefs") or []:
            if not isinstance(ref, dict) or (ref.get("group", ""), ref.get("kind")) != ("", "ConfigMap"):
                return "invalid"
            cm = self.configmaps.get(f"{pol.namespace}/{ref.get('name')}")
            data = cm.body.get("data") if cm is not None and isinstance(cm.body.get("data"), dict) else {}
            pem = data.get("ca.crt")
            if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
                return "invalid"
            bundle.append(pem)
        if not bundle:
            return "invalid"
        tls["ca_pem"] = "\n".join(bundle)
        return tls

    @staticmethod
    def _slice_port(sl: Obj, sp: dict[str, Any]) -> int | None:
        """The EndpointSlice port for a Service port: the one with the same name (both unnamed: ''),
        else the one whose number is the Service port's numeric targetPort."""
        want = sp.get("name") or ""
        ports = [p for p in (sl.body.get("ports") or []) if isinstance(p, dict) and isinstance(p.get("port"), int)]
        for p in ports:
            if (p.get("name") or "") == want:
                return p["port"]
        target = sp.get("targetPort")
        if isinstance(target, int):
            for p in ports:
                if p["port"] == target:
                    return target
            if not ports:
                return target
        return None
