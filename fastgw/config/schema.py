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

from .admin import Admin
from .balancing import Balancer, RoundRobin, StickySessions
from .base import Base, Name
from .breakers import CircuitBreakers
from .dns import Dns
from .health import Health
from .http2 import Http2Limits
from .logs import AccessLog, Logging, RouteAccessLog
from .metrics import Metrics
from .policies import Consumer, Policy
from .ratelimit import Redis
from .retry import RetryBudget, RetryPolicy, RouteTimeouts, SlowStart
from .tls import ListenerTls, UpstreamTls
from .tracing import Tracing
from .tunnels import ListenerProtocol, Tunnel
from .values import DURATION_PATTERN, Duration, PositiveDuration, parse_address, parse_duration

__all__ = [
    "Backend",
    "Base",
    "Filters",
    "GatewayConfig",
    "HeaderEdits",
    "HeaderMatch",
    "Keepalive",
    "Limits",
    "Listener",
    "Match",
    "Mirror",
    "PathMatch",
    "PathReplace",
    "QueryMatch",
    "Redirect",
    "Rewrite",
    "Route",
    "Server",
    "Target",
    "Timeouts",
    "Upstream",
    "Versioning",
    "dec_hook",
    "json_schema",
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


class Listener(Base, kw_only=True):
    """An address the gateway accepts connections on. Several listeners may share an address when
    their hostnames differ (Gateway API listeners): a request is served by the listener whose hostname
    matches its Host most specifically (exact, then the longest wildcard, then none)."""

    address: Address
    """host:port to bind; port 0 picks a free port."""
    name: Name | None = None
    """Routes attach to listeners by name (`routes[].listeners`); unnamed listeners take every route
    that does not name its listeners."""
    hostname: str | None = None
    """Only requests whose Host matches this (exact or `*.suffix`) are served by this listener, and a
    route's hosts are intersected with it."""
    tls: ListenerTls | None = None
    """TLS termination (HTTPS): certificates chosen by SNI, client certificates (docs/tls.md)."""
    protocol: ListenerProtocol = "http"
    """`tcp`: each connection is piped to its route's upstream; `tls-passthrough`: the ClientHello's
    SNI picks the route and the TLS bytes are piped, not terminated; `tls`: the SNI picks the route,
    the gateway terminates TLS with `tls` and pipes the decrypted bytes (docs/tunnels.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hostname is not None:
            msgspec.structs.force_setattr(self, "hostname", self.hostname.lower())

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


class Http2(Base, kw_only=True):
    """HTTP/2 to an upstream (`protocol: h2c` or `h2`): one connection per target carries many
    exchanges at once (docs/upstreams.md)."""

    max_concurrent_streams: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 100
    """Streams one connection carries at once: the lower of this and the upstream's
    SETTINGS_MAX_CONCURRENT_STREAMS. More exchanges open another connection."""


class Upstream(Base, kw_only=True):
    """A set of targets that share load (by smooth weighted round robin unless `balancer` says
    otherwise). An empty list is valid (a service scaled to zero): its routes answer 503."""

    targets: list[Target]
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    keepalive: Keepalive = msgspec.field(default_factory=Keepalive)
    balancer: Balancer = msgspec.field(default_factory=RoundRobin)
    """How requests are spread over the targets (docs/load-balancing.md)."""
    sticky: StickySessions | None = None
    """Session affinity by a cookie the gateway sets."""
    health: Health = msgspec.field(default_factory=Health)
    """Passive health (failing targets ejected for a while) and active checks (docs/health.md)."""
    failover: bool = True
    """An idempotent request without a body whose connection to a target fails before any response
    byte (refused, connect timeout, reset) is sent once to another target (nginx's default)."""
    tls: UpstreamTls | None = None
    """TLS to the targets (docs/tls.md); connections are pooled apart by these settings."""
    dns: Dns = msgspec.field(default_factory=Dns)
    """How targets given by name are resolved and refreshed (docs/health.md)."""
    circuit_breakers: CircuitBreakers | None = None
    """Limits on connections, pending, active requests and retries, per worker (docs/health.md)."""
    retry_budget: RetryBudget | None = None
    """Retries in flight at most a share of active requests (docs/retries.md); on with Envoy's
    defaults for an upstream a route with `retry` sends to."""
    slow_start: SlowStart | None = None
    """A returning or new target's weight ramps up over a window (docs/retries.md)."""
    protocol: Literal["http1", "h2c", "h2"] = "http1"
    """How requests reach the targets: `http1` (HTTP/1.1, pooled keep-alive connections), `h2c`
    (HTTP/2 over TCP with prior knowledge) or `h2` (HTTP/2 over `tls`, ALPN `h2`). gRPC needs
    `h2c` or `h2` (docs/grpc.md)."""
    http2: Http2 = msgspec.field(default_factory=Http2)
    """HTTP/2 settings, for `protocol: h2c` or `h2`."""


class PathMatch(Base, kw_only=True):
    """Exactly one of `prefix`, `exact`, `template` or `regex`."""

    prefix: str | None = None
    """Matches the path and everything below it on `/` boundaries: `/abc` matches `/abc`, `/abc/`,
    `/abc/d`, not `/abcd`."""
    exact: str | None = None
    """Matches this path only (case-sensitive)."""
    template: str | None = None
    """`/users/{id}` (one segment per `{name}`) and `/files/{path...}` (the rest, last only)."""
    regex: str | None = None
    """A Python regular expression the whole path must match."""


class HeaderMatch(Base, kw_only=True):
    """A request header condition: exactly one of `value` (exact), `regex` (whole value) or
    `present: true`. Names are case-insensitive; repeated fields are joined with `,`."""

    name: Annotated[str, Meta(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
    value: str | None = None
    regex: str | None = None
    present: bool | None = None


class QueryMatch(Base, kw_only=True):
    """A query parameter condition: exactly one of `value`, `regex` or `present: true`. The name is
    case-sensitive; the first value of a repeated name counts; no percent-decoding."""

    name: Annotated[str, Meta(min_length=1)]
    value: str | None = None
    regex: str | None = None
    present: bool | None = None


def _default_path() -> PathMatch:
    return PathMatch(prefix="/")


GrpcName = Annotated[str, Meta(min_length=1, max_length=1024)]


class GrpcMatch(Base, kw_only=True):
    """A gRPC call's service and method (the request path is `/<service>/<method>`), as Gateway API's
    GRPCMethodMatch: `Exact` (the default) or `RegularExpression` (Python `re`, whole name); one of the
    two may be left out (any). Compiled into the path match (docs/grpc.md)."""

    service: GrpcName | None = None
    method: GrpcName | None = None
    type: Literal["Exact", "RegularExpression"] = "Exact"

    def path(self) -> PathMatch:
        import re

        if self.service is None and self.method is None:
            return PathMatch(prefix="/")
        if self.type == "Exact":
            if self.method is None:
                return PathMatch(prefix=f"/{self.service}")
            if self.service is not None:
                return PathMatch(exact=f"/{self.service}/{self.method}")
            return PathMatch(regex=f"/[^/]+/{re.escape(self.method)}")
        svc = f"(?:{self.service})" if self.service is not None else "[^/]+"
        meth = f"(?:{self.method})" if self.method is not None else "[^/]+"
        return PathMatch(regex=f"/{svc}/{meth}")


class Match(Base, kw_only=True):
    """What a request must look like to take a route."""

    hosts: Annotated[list[str], Meta(min_length=1)] | None = None
    """Host patterns (exact or `*.suffix`); None matches any host. Lowercased on load."""
    path: PathMatch = msgspec.field(default_factory=_default_path)
    methods: Annotated[list[Annotated[str, Meta(pattern=r"^[A-Z_-]+$")]], Meta(min_length=1)] | None = None
    headers: list[HeaderMatch] | None = None
    query: list[QueryMatch] | None = None
    grpc: GrpcMatch | None = None
    """A gRPC service and method (GRPCRoute's method match): sets `path`, which must then be left out."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grpc is not None:
            if self.path != _default_path():
                raise ValueError("'grpc' sets the path match: give 'grpc' or 'path', not both")
            if self.grpc.type == "Exact":
                for part in (self.grpc.service, self.grpc.method):
                    if part is not None and "/" in part:
                        raise ValueError(f"a gRPC service or method name has no '/': {part!r}")
            msgspec.structs.force_setattr(self, "path", self.grpc.path())
        if self.hosts is not None:
            msgspec.structs.force_setattr(self, "hosts", [h.lower() for h in self.hosts])


HeaderName = Annotated[str, Meta(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, Meta(pattern=r"^[^\r\n\x00]*$", description="No CR, LF or NUL.")]


class HeaderEdits(Base, kw_only=True):
    """Header changes, applied in this order: remove, set (replaces every field of that name), add
    (one more field; a recipient joins repeated fields with `,`). Names are case-insensitive."""

    set: dict[HeaderName, HeaderValue] = msgspec.field(default_factory=dict)
    add: dict[HeaderName, HeaderValue] = msgspec.field(default_factory=dict)
    remove: list[HeaderName] = msgspec.field(default_factory=list)


class PathReplace(Base, kw_only=True):
    """Exactly one of `full` (the whole path) or `prefix` (the part the route's path prefix
    matched: `/foo/bar` with prefix `/foo` and `prefix: /xyz` becomes `/xyz/bar`)."""

    full: str | None = None
    prefix: str | None = None


class Redirect(Base, kw_only=True):
    """Answer with a redirect instead of proxying. Unset parts keep the request's; the port follows
    Gateway API: a given port, else the well-known port of a given scheme, else the listener's; it is
    left out of Location when it is the scheme's default."""

    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    path: PathReplace | None = None
    status: Literal[301, 302, 303, 307, 308] = 302


class Rewrite(Base, kw_only=True):
    """Change the request before it goes upstream."""

    hostname: str | None = None
    path: PathReplace | None = None


class Mirror(Base, kw_only=True):
    """Send a copy of matching requests to another upstream; its response is discarded."""

    upstream: Name
    percent: Annotated[float, Meta(gt=0, le=100)] = 100.0


class Versioning(Base, kw_only=True):
    """API lifecycle headers on responses: `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a
    `Link` to the successor version."""

    deprecated_at: str | None = None
    """When the API was (or will be) deprecated: an ISO 8601 date-time (`2026-01-31T00:00:00Z`)."""
    sunset_at: str | None = None
    """When it stops working: an ISO 8601 date-time."""
    successor: str | None = None
    """URI of the version that replaces it (`Link: <URI>; rel="successor-version"`)."""
    link: str | None = None
    """URI of a page about the deprecation (`Link: <URI>; rel="deprecation"`)."""


class Filters(Base, kw_only=True):
    """What a route (or one of its backends) does to requests and responses."""

    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirror: Mirror | None = None
    versioning: Versioning | None = None


class Backend(Base, kw_only=True):
    """One of a route's weighted backends. Requests split by weight (0: none); `filters` apply only
    when this backend is chosen. A backend without an upstream answers 500 (what Gateway API asks of
    a backendRef that cannot be resolved)."""

    upstream: Name | None = None
    weight: Annotated[int, Meta(ge=0, le=1_000_000)] = 1
    filters: Filters | None = None


class Route(Base, kw_only=True):
    """A named route from a match to an upstream (or weighted backends, or a redirect)."""

    name: Name
    match: Match | None = None
    matches: Annotated[list[Match], Meta(min_length=1)] | None = None
    """Alternatives (any one matching takes the route); instead of `match`."""
    upstream: Name | None = None
    backends: list[Backend] | None = None
    """Instead of `upstream`: weighted backends. An empty list answers 500."""
    filters: Filters | None = None
    listeners: Annotated[list[Name], Meta(min_length=1)] | None = None
    """Names of the listeners this route serves on; default: the unnamed ones."""
    max_body_bytes: ByteLimit | None = None
    """Request body limit for this route (413 above it); None: use `limits.max_body_bytes`."""
    policies: list[Policy] | None = None
    """This route's policies, run in order after the top-level ones (docs/policies.md)."""
    skip_policies: list[Name] | None = None
    """Names of top-level policies this route opts out of."""
    access_log: bool | RouteAccessLog | None = None
    """`false` turns this route's access lines off; `{sample: 0.1}` samples them (docs/observability.md)."""
    tunnel: Tunnel | None = None
    """WebSocket and other Upgrade tunnels, and the pipe of a tcp / tls-passthrough route (docs/tunnels.md)."""
    retry: RetryPolicy | None = None
    """Which failed attempts are sent again, how often, after what backoff (docs/retries.md)."""
    timeouts: RouteTimeouts | None = None
    """The whole request's deadline and each attempt's (Gateway API `timeouts`, docs/retries.md)."""

    @property
    def all_matches(self) -> list[Match]:
        if self.matches is not None:
            return self.matches
        return [self.match if self.match is not None else Match()]

    @property
    def hosts(self) -> list[str] | None:
        return self.all_matches[0].hosts

    @property
    def path_prefix(self) -> str | None:
        return self.all_matches[0].path.prefix

    @property
    def path_exact(self) -> str | None:
        return self.all_matches[0].path.exact


class Limits(Base, kw_only=True):
    """Limits on downstream (client) requests and connections."""

    max_request_line_bytes: PositiveInt = 8192
    max_header_bytes: PositiveInt = 65536
    max_headers: PositiveInt = 100
    max_body_bytes: ByteLimit | None = None
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 60.0
    """Longest pause in a request body from the client (408, as nginx's client_body_timeout)."""
    keepalive_timeout: PositiveDuration = 60.0
    max_requests_per_connection: PositiveInt = 1000
    underscores_in_headers: Literal["reject", "drop"] = "reject"
    http2: Http2Limits = msgspec.field(default_factory=Http2Limits)
    """HTTP/2 from clients (docs/http2.md)."""


class Server(Base, kw_only=True):
    """Process-wide settings."""

    drain_timeout: Duration = 30.0
    shutdown_delay: Duration = 0.0
    """On SIGTERM, readiness (`/readyz`) turns false at once and the gateway goes on serving for this
    long while load balancers and kube-proxy stop sending it connections; then it drains
    (`drain_timeout`) and exits. A second SIGTERM skips the rest of the delay."""
    watch_config: bool | None = None
    """Reload when the config's files change, without SIGHUP (a mounted ConfigMap's update
    included). Default: on when the config is a directory, off for a single file."""
    watch_interval: PositiveDuration = 1.0
    """How often the watched files are read; a change is applied once they read the same twice
    in a row."""
    path_normalization: Literal["normalize", "reject", "off"] = "normalize"
    """RFC 3986 normalization of the request path before routing (docs/http.md): `normalize`
    routes and forwards the normalized path, `reject` answers 400 to a path it would change."""
    merge_slashes: bool = False
    """Runs of '/' in the path become one (with path_normalization other than off)."""
    encoded_slashes: Literal["keep", "reject"] = "keep"
    """%2F, %5C and %00 in the path: kept encoded (never decoded), or refused with 400."""


class GatewayConfig(Base, kw_only=True):
    """fastgw configuration."""

    listeners: Annotated[list[Listener], Meta(min_length=1)]
    upstreams: dict[Name, Upstream] = msgspec.field(default_factory=dict)
    routes: list[Route] = msgspec.field(default_factory=list)
    limits: Limits = msgspec.field(default_factory=Limits)
    server: Server = msgspec.field(default_factory=Server)
    policies: list[Policy] = msgspec.field(default_factory=list)
    """Policies applied to every route, before the route's own (docs/policies.md)."""
    consumers: list[Consumer] = msgspec.field(default_factory=list)
    """Named identities and their credentials, for the auth policies (docs/auth.md)."""
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    """Prometheus counters (docs/metrics.md)."""
    logging: Logging = msgspec.field(default_factory=Logging)
    access_log: AccessLog = msgspec.field(default_factory=AccessLog)
    tracing: Tracing = msgspec.field(default_factory=Tracing)
    admin: Admin | None = None
    """The Admin API listener (docs/admin.md); none without this section."""
    redis: Redis | None = None
    """The Redis server `cluster` rate limits share (docs/rate-limiting.md)."""

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
