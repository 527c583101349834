"""Gateway API TCPRoute and TLSRoute (Passthrough and Terminate) -> native stream routes (docs/tunnels.md).

A Gateway listener with protocol `TCP` becomes a native `tcp` listener, one with protocol `TLS` and
`tls.mode: Passthrough` a `tls-passthrough` listener, and one in `Terminate` mode a `tls` listener
with the certificates of its certificateRefs. A TCPRoute's rule becomes a route of weighted
backends on the tcp listeners it attaches to; when several TCPRoutes attach to one tcp listener only
the oldest (creationTimestamp, then namespace/name) carries its traffic, as the spec's conflict rule
and the TCPRouteMultipleRoutesAttachment conformance test ask. A TLSRoute's hostnames become the
route's SNI hosts.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.positions import Token
    from .frontend import _Builder

__all__ = ["ROUTE_PROTOCOL", "STREAM_ROUTE_VERSIONS", "listener_protocol", "map_stream_routes", "passthrough",
           "terminate"]

GROUP = "gateway.networking.k8s.io"
STREAM_ROUTE_VERSIONS = {
    "TCPRoute": (f"{GROUP}/v1alpha2",),
    "TLSRoute": (f"{GROUP}/v1alpha2", f"{GROUP}/v1alpha3", f"{GROUP}/v1"),
}
#: the native listener protocols each route kind attaches to
ROUTE_PROTOCOL = {"HTTPRoute": ("http",), "GRPCRoute": ("http",), "TCPRoute": ("tcp",),
                  "TLSRoute": ("tls-passthrough", "tls")}


def passthrough(item: Any) -> bool:
    """A Gateway listener of protocol TLS in Passthrough mode."""
    if not isinstance(item, dict) or item.get("protocol") != "TLS":
        return False
    tls = item.get("tls")
    return isinstance(tls, dict) and tls.get("mode") == "Passthrough" and set(tls) <= {"mode"}


def terminate(item: Any) -> bool:
    """A Gateway listener of protocol TLS in Terminate mode (TLSRoute; the gateway holds the key)."""
    if not isinstance(item, dict) or item.get("protocol") != "TLS":
        return False
    tls = item.get("tls")
    return isinstance(tls, dict) and tls.get("mode", "Terminate") == "Terminate"


def listener_protocol(item: Any) -> str | None:
    """The native protocol of a Gateway listener, or None when it is not one of these."""
    protocol = item.get("protocol") if isinstance(item, dict) else None
    if protocol == "HTTP":
        return "http"
    if protocol == "TCP":
        return "tcp"
    if passthrough(item):
        return "tls-passthrough"
    if terminate(item):
        return "tls"
    return None


def map_stream_routes(b: _Builder) -> None:
    names = b._qualified(b.stream_routes)
    far_future = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    from .frontend import _timestamp

    def order(r):
        return _timestamp(r.metadata.get("creationTimestamp")) or far_future, r.key

    taken: set[str] = set()          # tcp listeners that already carry a route
    for route in sorted(b.stream_routes, key=order):
        kind = route.body.get("kind")
        b.fields(route, [], route.body, {"apiVersion": None, "kind": None, "metadata": None, "spec": None,
                                         "status": None})
        known: dict[str, str | None] = {"parentRefs": None, "rules": None,
                                        "useDefaultGateways": "not supported: default Gateways"}
        if kind == "TLSRoute":
            known["hostnames"] = None
        spec = b.fields(route, ["spec"], route.body.get("spec"), known)
        hostnames: list[str] = []
        for i, h in enumerate(b.items(route, ["spec"], spec, "hostnames") if kind == "TLSRoute" else ()):
            h = b.typed(route, ["spec", "hostnames", i], h, str, "a hostname")
            if h is not None:
                hostnames.append(h.lower())
        listeners = b._attach(route, spec, hostnames, kind)
        if kind == "TCPRoute":
            listeners = [n for n in listeners if n not in taken]
            taken.update(listeners)
        rules = b.items(route, ["spec"], spec, "rules")
        if not rules:
            b.err(route, ["spec", "rules"], "a route needs a rule")
            continue
        if len(rules) > 1:
            b.err(route, ["spec", "rules", 1], f"not supported: more than one rule in a {kind} "
                  "(a connection carries nothing to choose a rule by)")
        at: list[Token] = ["spec", "rules", 0]
        rule = b.fields(route, at, rules[0], {"name": None, "backendRefs": None})
        backends = []
        origins: dict[tuple, Any] = {}
        for j, ref in enumerate(b.items(route, at, rule, "backendRefs")):
            bat = [*at, "backendRefs", j]
            ref = b.fields(route, bat, ref, {"group": None, "kind": None, "name": None, "namespace": None,
                                             "port": None, "weight": None})
            backend: dict[str, Any] = {"upstream": b._resolve(route, bat, ref)}
            weight = b.integer(route, bat, ref, "weight")
            if weight is not None:
                backend["weight"] = weight
                origins[("backends", j, "weight")] = (route, [*bat, "weight"])
            origins[("backends", j)] = (route, bat)
            backends.append(backend)
        if not listeners:
            continue
        native: dict[str, Any] = {"name": f"{names[route.key]}.r0", "listeners": listeners, "backends": backends}
        if hostnames:
            native["match"] = {"hosts": hostnames}
            origins[("match", "hosts")] = (route, ["spec", "hostnames"])
        index = len(b.native["routes"])
        b.native["routes"].append(native)
        for tokens, origin in origins.items():
            b.origins[("routes", index, *tokens)] = origin
        b.origins[("routes", index)] = (route, [])
        b.origins[("routes", index, "listeners")] = (route, ["spec", "parentRefs"])
        b.origins[("routes", index, "name")] = (route, ["metadata", "name"])
