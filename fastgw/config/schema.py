"""The config schema: msgspec Structs.

Every Struct derives from `Base`, which refuses unknown fields, freezes instances and makes fields
keyword-only. Types and `Meta` constraints are checked while decoding (first problem only); the checks
that need more context (addresses, host patterns, paths, uniqueness, cross references) live in
`fastgw.config.validate` and report every problem at once.

Durations are written as strings (`5s`, `250ms`) or numbers of seconds and decoded to plain floats.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .values import DURATION_PATTERN, Duration, PositiveDuration, parse_address, parse_duration

__all__ = [
    "Base",
    "GatewayConfig",
    "Keepalive",
    "Limits",
    "Listener",
    "Match",
    "PathMatch",
    "Route",
    "Server",
    "Target",
    "Timeouts",
    "Upstream",
    "dec_hook",
    "json_schema",
]

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="A name: letters, digits, '_', '.', '-'; not starting with '.' or '-'.",
    ),
]
Address = Annotated[
    str,
    Meta(
        min_length=1,
        description="host:port; host is an IPv4 address, [IPv6] in brackets, or a hostname.",
        examples=["0.0.0.0:8080", "[::1]:8080", "users.default.svc.cluster.local:8000"],
    ),
]
PositiveInt = Annotated[int, Meta(ge=1)]
ByteLimit = Annotated[int, Meta(ge=0)]


class Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Common policy of every config Struct.

    `forbid_unknown_fields` and `frozen` are inherited; msgspec applies `kw_only` only to the fields of
    the class that sets it, so every subclass repeats `kw_only=True`.
    """

    def __post_init__(self) -> None:
        # Duration fields are decoded to Duration instances (msgspec checks the dec_hook's result
        # type); hand the runtime plain floats.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Duration):
                msgspec.structs.force_setattr(self, name, float(value))


class Listener(Base, kw_only=True):
    """An address the gateway accepts connections on."""

    address: Address
    """host:port to bind; port 0 picks a free port."""

    @property
    def host(self) -> str:
        return parse_address(self.address, allow_port_zero=True)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address, allow_port_zero=True)[1]


class Target(Base, kw_only=True):
    """One upstream server."""

    address: Address
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]


class Timeouts(Base, kw_only=True):
    """Timeouts towards an upstream target, in seconds."""

    connect: PositiveDuration = 5.0
    response_header: PositiveDuration = 60.0
    body_idle: PositiveDuration = 60.0


class Keepalive(Base, kw_only=True):
    """Pool of idle keep-alive connections per upstream target."""

    max_idle: Annotated[int, Meta(ge=0)] = 64
    idle_timeout: PositiveDuration = 60.0
    max_requests: PositiveInt = 1000


class Upstream(Base, kw_only=True):
    """A set of targets that share load by smooth weighted round robin. An empty list is valid
    (a service scaled to zero): its routes answer 503."""

    targets: list[Target]
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    keepalive: Keepalive = msgspec.field(default_factory=Keepalive)


class PathMatch(Base, kw_only=True):
    """Exactly one of `prefix` or `exact`."""

    prefix: str | None = None
    exact: str | None = None


def _default_path() -> PathMatch:
    return PathMatch(prefix="/")


class Match(Base, kw_only=True):
    """What a request must look like to take a route."""

    hosts: Annotated[list[str], Meta(min_length=1)] | None = None
    """Host patterns (exact or `*.suffix`); None matches any host. Lowercased on load."""
    path: PathMatch = msgspec.field(default_factory=_default_path)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hosts is not None:
            msgspec.structs.force_setattr(self, "hosts", [h.lower() for h in self.hosts])


class Route(Base, kw_only=True):
    """A named route from a match to an upstream."""

    name: Name
    match: Match = msgspec.field(default_factory=Match)
    upstream: Name
    max_body_bytes: ByteLimit | None = None
    """Request body limit for this route (413 above it); None: use `limits.max_body_bytes`."""

    @property
    def hosts(self) -> list[str] | None:
        return self.match.hosts

    @property
    def path_prefix(self) -> str | None:
        return self.match.path.prefix

    @property
    def path_exact(self) -> str | None:
        return self.match.path.exact


class Limits(Base, kw_only=True):
    """Limits on downstream (client) requests and connections."""

    max_request_line_bytes: PositiveInt = 8192
    max_header_bytes: PositiveInt = 65536
    max_headers: PositiveInt = 100
    max_body_bytes: ByteLimit | None = None
    header_timeout: PositiveDuration = 10.0
    keepalive_timeout: PositiveDuration = 60.0
    max_requests_per_connection: PositiveInt = 1000
    underscores_in_headers: Literal["reject", "drop"] = "reject"


class Server(Base, kw_only=True):
    """Process-wide settings."""

    drain_timeout: Duration = 30.0


class GatewayConfig(Base, kw_only=True):
    """fastgw configuration."""

    listeners: Annotated[list[Listener], Meta(min_length=1)]
    upstreams: dict[Name, Upstream] = msgspec.field(default_factory=dict)
    routes: list[Route] = msgspec.field(default_factory=list)
    limits: Limits = msgspec.field(default_factory=Limits)
    server: Server = msgspec.field(default_factory=Server)

    def route_max_body_bytes(self, route: Route) -> int | None:
        """The body limit that applies to `route`: its own, else the global one (None: unlimited)."""
        if route.max_body_bytes is not None:
            return route.max_body_bytes
        return self.limits.max_body_bytes


def dec_hook(type_: type, value: Any) -> Any:
    """msgspec dec_hook: decodes Duration fields."""
    if isinstance(type_, type) and issubclass(type_, Duration):
        seconds = parse_duration(value)
        if type_ is PositiveDuration and seconds <= 0:
            raise ValueError(f"duration must be greater than zero, got {value!r}")
        return type_(seconds)
    raise NotImplementedError(f"unsupported type {type_!r}")


def _schema_hook(type_: type) -> dict[str, Any]:
    if isinstance(type_, type) and issubclass(type_, Duration):
        positive = type_ is PositiveDuration
        number: dict[str, Any] = {"type": "number"}
        number["exclusiveMinimum" if positive else "minimum"] = 0
        return {
            "title": "PositiveDuration" if positive else "Duration",
            "description": (
                "A duration: a string such as '250ms', '5s', '1.5s', '1m', '1h', '1m30s', or a number of "
                "seconds" + (" (greater than zero)." if positive else " (zero or more).")
            ),
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, number],
        }
    raise NotImplementedError(f"unsupported type {type_!r}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config file."""
    schema = msgspec.json.schema(GatewayConfig, schema_hook=_schema_hook)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
