"""The `rate_limit` policy: token-bucket limits and in-flight (concurrency) limits, each keyed by
parts of the request. docs/rate-limiting.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base, Name
from .policies import PolicyBase
from .positions import Token
from .values import PositiveDuration

__all__ = ["KEY_SOURCES", "Limit", "RateLimitPolicy", "Redis", "check_rate_limit", "check_redis", "parse_host_port", "parse_key_part"]

PositiveInt = Annotated[int, Meta(ge=1, le=1_000_000_000)]
#: What a key part may name: fixed ones, and `source:argument` ones.
KEY_SOURCES = ("route", "client_ip", "consumer", "header:<name>", "query:<name>", "capture:<name>")
_FIXED = frozenset(("route", "client_ip", "consumer"))
_WITH_ARG = frozenset(("header", "query", "capture"))
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Limit(Base, kw_only=True):
    """One limit: a token bucket (`rate` tokens a `period`, holding at most `burst`; a request takes
    `cost`), or, with `concurrent`, a cap on requests in flight. Its key is the combination of the
    parts in `key`."""

    name: Name | None = None
    """The policy name the RateLimit headers report (default: the policy's name, and its index when
    the policy has several limits)."""
    rate: PositiveInt | None = None
    period: PositiveDuration = 1.0
    burst: PositiveInt | None = None
    """The bucket's size: how many tokens an idle key has saved up (default: `rate`)."""
    cost: PositiveInt = 1
    concurrent: PositiveInt | None = None
    """At most this many requests of one key in flight at once (instead of a bucket)."""
    key: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["route"])
    """route, client_ip, consumer, header:NAME, query:NAME, capture:NAME; several combine."""
    scope: Literal["local", "cluster"] = "local"
    """`local`: this gateway's workers share the bucket; `cluster`: every gateway on the `redis:`
    server does (tokens leased in batches)."""
    on_redis_error: Literal["open", "closed"] = "open"
    """A `cluster` limit whose Redis does not answer within `redis.timeout`: let the request through
    (`open`) or refuse it with 503 (`closed`)."""
    when_missing: Literal["shared", "skip", "deny"] = "shared"
    """A request without a key part (no such header, no consumer yet): `shared` keys it by the empty
    value (all such requests share one bucket), `skip` exempts it from this limit, `deny` refuses it."""


class RateLimitPolicy(PolicyBase, tag="rate_limit", kw_only=True):
    """Limits that all apply to each request the policy sees; a request any of them refuses is
    answered `status` (429; a `concurrent` limit answers `concurrency_status`) with Retry-After and the
    rate-limit headers. docs/rate-limiting.md."""

    limits: Annotated[list[Limit], Meta(min_length=1)]
    shadow: bool = False
    """Count and log what would be limited, and limit nothing."""
    status: Literal[429, 503] = 429
    concurrency_status: Literal[429, 503] = 503
    headers: list[Literal["ietf", "legacy", "x-ratelimit"]] = msgspec.field(default_factory=lambda: ["ietf"])
    """Which header sets to send: `ietf` (RateLimit-Policy and RateLimit, draft-ietf-httpapi-ratelimit-headers-10),
    `legacy` (RateLimit-Limit/-Remaining/-Reset), `x-ratelimit` (X-RateLimit-*)."""
    headers_on_allowed: bool = True
    """Also on responses the limits let through (always on a refusal)."""


class Redis(Base, kw_only=True):
    """The Redis server `cluster` rate limits share (one for the whole config): one server, a
    Sentinel-managed primary (`mode: sentinel`) or a Redis Cluster (`mode: cluster`)."""

    url: str
    """redis://[:password@]host[:port][/db], rediss:// (TLS) or unix:///path/to/socket. With
    `mode: sentinel`, the primary's password, db and TLS (its host is the one Sentinel names); with
    `mode: cluster`, one node of the cluster."""
    timeout: PositiveDuration = 0.25
    """The deadline of one lease request: past it the limit fails open or closed."""
    lease: PositiveDuration = 0.1
    """How long leased tokens stay usable before the unused ones go back."""
    max_keys: PositiveInt = 100_000
    """Keys with a lease held per worker; past it the oldest leases are given back."""
    key_prefix: str = "fastgw:rl:"
    mode: Literal["server", "sentinel", "cluster"] = "server"
    """`server`: the one at `url`; `sentinel`: the primary `service` the `sentinels` name (and, after a
    failover, the new one); `cluster`: a Redis Cluster, `url` and `nodes` its startup nodes."""
    sentinels: list[str] = msgspec.field(default_factory=list)
    """`mode: sentinel`: the Sentinels' host:port addresses."""
    service: str = "mymaster"
    """`mode: sentinel`: the primary's name in the Sentinels' configuration."""
    sentinel_password: str | None = None
    """`mode: sentinel`: the Sentinels' own password (requirepass), if any."""
    nodes: list[str] = msgspec.field(default_factory=list)
    """`mode: cluster`: more startup nodes (host:port) besides `url`'s."""


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """("10.0.0.1", 26379) from "10.0.0.1:26379", "[::1]:26379" or "host". Raises ValueError."""
    from urllib.parse import urlsplit

    parts = urlsplit("//" + text)
    if not parts.hostname or parts.path or parts.query or parts.username:
        raise ValueError(f"not a host:port address: {text!r}")
    return parts.hostname, parts.port or default_port


def check_redis(cfg, out: list) -> None:
    """The `redis:` section, and `cluster` limits only where it exists."""
    from urllib.parse import urlsplit

    from ..ratelimit_cluster import redacted_url

    if cfg.redis is not None:
        try:
            parts = urlsplit(cfg.redis.url)
            parts.port   # noqa: B018 - raises on a bad port
        except ValueError as exc:
            out.append((["redis", "url"], f"not a Redis URL: {exc}"))
        else:
            if parts.scheme not in ("redis", "rediss", "unix"):
                out.append((["redis", "url"], f"not a Redis URL (redis://, rediss:// or unix://): {redacted_url(cfg.redis.url)!r}"))
            elif cfg.redis.mode == "sentinel" and parts.scheme == "unix":
                out.append((["redis", "url"], "with `mode: sentinel` the primary is a TCP address Sentinel names"))
            elif parts.scheme != "unix" and not parts.hostname and cfg.redis.mode != "sentinel":
                out.append((["redis", "url"], f"no host in {redacted_url(cfg.redis.url)!r}"))
            elif parts.scheme == "unix" and not parts.path:
                out.append((["redis", "url"], f"no socket path in {redacted_url(cfg.redis.url)!r}"))
        if cfg.redis.mode == "sentinel" and not cfg.redis.sentinels:
            out.append((["redis", "sentinels"], "`mode: sentinel` needs the Sentinels' addresses"))
        for field, port in (("sentinels", 26379), ("nodes", 6379)):
            for i, address in enumerate(getattr(cfg.redis, field)):
                try:
                    parse_host_port(address, port)
                except ValueError as exc:
                    out.append((["redis", field, i], str(exc)))
        if cfg.redis.sentinels and cfg.redis.mode != "sentinel":
            out.append((["redis", "sentinels"], "`sentinels` belongs to `mode: sentinel`"))
        if cfg.redis.nodes and cfg.redis.mode != "cluster":
            out.append((["redis", "nodes"], "`nodes` belongs to `mode: cluster`"))
        if cfg.redis.mode == "cluster" and "{" in cfg.redis.key_prefix:
            out.append((["redis", "key_prefix"], "on a Redis Cluster the key's hash tag is fastgw's own: a `{` in "
                        "the prefix would put every bucket in one slot"))
        if cfg.redis.mode == "cluster" and cfg.redis.url.startswith("unix:"):
            out.append((["redis", "url"], "a Redis Cluster's nodes are TCP addresses, not a unix socket"))
        return
    lists = [(["policies"], cfg.policies)] + [(["routes", i, "policies"], r.policies) for i, r in enumerate(cfg.routes)]
    for base, policies in lists:
        for i, policy in enumerate(policies or ()):
            if isinstance(policy, RateLimitPolicy):
                for j, limit in enumerate(policy.limits):
                    if limit.scope == "cluster":
                        out.append(([*base, i, "limits", j, "scope"], "a `cluster` limit needs the top-level `redis:` settings"))


def parse_key_part(part: str) -> tuple[str, str]:
    """("client_ip", "") or ("header", "x-api-key"). Raises ValueError with a config-error message."""
    source, sep, arg = part.partition(":")
    if not sep and source in _FIXED:
        return source, ""
    if sep and source in _WITH_ARG and arg:
        if source == "header":
            if not _TOKEN.match(arg):
                raise ValueError(f"not a valid header name: {arg!r}")
            return source, arg.lower()
        return source, arg
    raise ValueError(f"unknown key source {part!r} (known: {', '.join(KEY_SOURCES)})")


def check_rate_limit(policy, path: list[Token], capture_names: set[str] | None, out: list) -> None:
    """Semantic checks msgspec cannot make. `capture_names`: the route's template captures (None for
    a top-level policy, whose routes vary)."""
    names: dict[str, int] = {}
    for i, limit in enumerate(policy.limits):
        where = [*path, "limits", i]
        if (limit.rate is None) == (limit.concurrent is None):
            out.append((where, "a limit has either `rate` (a token bucket) or `concurrent` (in flight), not both"
                        if limit.rate is not None else "a limit needs `rate` (a token bucket) or `concurrent`"))
        if limit.scope == "cluster" and limit.concurrent is not None:
            out.append(([*where, "scope"], "in-flight (`concurrent`) limits are local only"))
        if limit.rate is not None and limit.rate / limit.period > 1e9:
            out.append(([*where, "rate"], "more than 10^9 tokens a second: the bucket counts in nanoseconds"))
        if limit.burst is not None and limit.rate is None:
            out.append(([*where, "burst"], "`burst` belongs to a `rate` limit"))
        if limit.rate is not None and limit.cost > (limit.burst or limit.rate):
            out.append(([*where, "cost"], f"cost {limit.cost} exceeds the bucket's size "
                                          f"{limit.burst or limit.rate}: no request could pass"))
        for j, part in enumerate(limit.key):
            try:
                source, arg = parse_key_part(part)
            except ValueError as exc:
                out.append(([*where, "key", j], str(exc)))
                continue
            if source == "capture" and capture_names is not None and arg not in capture_names:
                shown = ", ".join(sorted(capture_names)) or "none"
                out.append(([*where, "key", j], f"the route's path has no capture {arg!r} (captures: {shown})"))
        if len(set(limit.key)) != len(limit.key):
            out.append(([*where, "key"], "a key part is repeated"))
        shown_name = limit_name(policy_name_hint(policy), i, len(policy.limits), limit)
        if shown_name in names:
            out.append(([*where, "name"], f"duplicate limit name {shown_name!r} (first at index {names[shown_name]})"))
        names.setdefault(shown_name, i)


def policy_name_hint(policy) -> str:
    return policy.name or "rate_limit"


def limit_name(policy_name: str, index: int, count: int, limit: Limit) -> str:
    if limit.name:
        return limit.name
    return policy_name if count == 1 else f"{policy_name}-{index}"


_CAPTURE = re.compile(r"\{([^}.]+)(?:\.\.\.)?\}")


def route_capture_names(route) -> set[str] | None:
    """The captures every one of the route's path templates has (None when a regex match makes them
    unknowable here)."""
    names: set[str] | None = None
    for match in route.all_matches:
        if match.path.regex is not None:
            return None
        found = set(_CAPTURE.findall(match.path.template or ""))
        names = found if names is None else names & found
    return names or set()
