"""Tunnels and stream listeners in the config: a route's `tunnel` (the HTTP/1.1 Upgrade protocols a
client may switch to, the tunnels' idle timeout) and the checks of `listeners[].protocol` `tcp`,
`tls-passthrough` and `tls` (TLS terminated, then TCP) and the routes attached to them (docs/tunnels.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base
from .values import Duration, check_host_pattern

if TYPE_CHECKING:
    from .positions import Token
    from .schema import GatewayConfig

__all__ = ["ListenerProtocol", "Tunnel", "check_streams"]

ListenerProtocol = Literal["http", "tcp", "tls-passthrough", "tls"]

UpgradeProtocol = Annotated[str, Meta(min_length=1, pattern=r"^(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")]


def _default_upgrades() -> list[str]:
    return ["websocket"]


class Tunnel(Base, kw_only=True):
    """A route's tunnels: WebSocket (and any HTTP/1.1 Upgrade listed here) after the upstream's 101,
    or every connection of a `tcp` / `tls-passthrough` listener."""

    upgrades: list[UpgradeProtocol] = msgspec.field(default_factory=_default_upgrades)
    """Protocols a client may switch to with `Upgrade` (names without version, case-insensitive);
    `"*"` allows any, `[]` none. A request asking for another is served as HTTP/1.1 without its
    `Upgrade`."""
    idle_timeout: Duration = 3600.0
    """A tunnel with no byte either way for this long is closed (0: never). Its own clock: the
    request timeouts do not apply to a tunnel."""

    def allowed(self) -> list[str] | None:
        """The protocols for the core, lowercase (None: any)."""
        if "*" in self.upgrades:
            return None
        return [u.lower() for u in self.upgrades]


def check_streams(cfg: GatewayConfig, out: list) -> None:
    """Stream listeners need a name (routes attach to them only by name); listeners sharing an address
    share the protocol; a route serves either HTTP listeners or stream listeners, and on a stream
    listener only its hosts (SNI, tls-passthrough) and backends mean anything."""
    by_address: dict[str, tuple[str, int]] = {}
    kinds: dict[str, str] = {}
    for i, listener in enumerate(cfg.listeners):
        path: list[Token] = ["listeners", i]
        protocol = listener.protocol
        first = by_address.setdefault(listener.address, (protocol, i))
        if first[0] != protocol and {first[0], protocol} != {"tls", "tls-passthrough"}:
            out.append(([*path, "protocol"], f"protocol {protocol!r} differs from {first[0]!r} of "
                        f"$.listeners[{first[1]}] on the same address"))
        if protocol == "http":
            if listener.name is not None:
                kinds[listener.name] = "http"
            continue
        if listener.name is None:
            out.append(([*path, "protocol"], f"a {protocol} listener needs a name: routes attach to it by name"))
        else:
            kinds[listener.name] = protocol
        if protocol == "tcp" and listener.hostname is not None:
            out.append(([*path, "hostname"], "a tcp listener has no hostname (TCP carries none)"))
        if protocol == "tls" and listener.tls is None:
            out.append(([*path, "tls"], "a tls listener terminates TLS: it needs 'tls' with its certificates "
                        "(for TLS passed through untouched, use protocol tls-passthrough)"))
        elif protocol in ("tcp", "tls-passthrough") and listener.tls is not None:
            out.append(([*path, "tls"], f"a {protocol} listener does not terminate TLS: use protocol tls "
                        "for a stream listener that does"))
    stream_names = {n for n, k in kinds.items() if k != "http"}
    tcp_taken: dict[str, int] = {}
    for i, route in enumerate(cfg.routes):
        base: list[Token] = ["routes", i]
        named = set(route.listeners or ())
        streams = named & stream_names
        if not streams:
            continue
        if named - stream_names:
            out.append(([*base, "listeners"], "a route serves either HTTP listeners or tcp / tls-passthrough / "
                        "tls listeners, not both"))
            continue
        for j, m in enumerate(route.all_matches):
            where = [*base, "matches", j] if route.matches is not None else [*base, "match"]
            if m.path.prefix != "/" or m.path.exact or m.path.template or m.path.regex or m.methods \
                    or m.headers or m.query:
                out.append((where, "a route on a tcp, tls-passthrough or tls listener matches by hosts (SNI) only"))
            if m.hosts is not None:
                if any(kinds.get(n) == "tcp" for n in streams):
                    out.append(([*where, "hosts"], "a tcp listener has no host to match (TCP carries none)"))
                for k, h in enumerate(m.hosts):
                    try:
                        check_host_pattern(h)
                    except ValueError as e:
                        out.append(([*where, "hosts", k], str(e)))
        if route.filters is not None or any(b.filters is not None for b in route.backends or ()):
            out.append(([*base, "filters"], "filters are HTTP's: a tcp, tls-passthrough or tls route has none"))
        if route.policies:
            out.append(([*base, "policies"], "policies are HTTP's: a tcp, tls-passthrough or tls route has none"))
        for name in streams:
            if kinds[name] == "tcp":
                if name in tcp_taken:
                    out.append(([*base, "listeners"], f"tcp listener {name!r} already has a route "
                                f"($.routes[{tcp_taken[name]}]): a TCP connection carries nothing to choose by"))
                tcp_taken.setdefault(name, i)
