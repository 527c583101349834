"""Builds the core's RateLimitPolicy from a `rate_limit` config entry (docs/rate-limiting.md)."""

from __future__ import annotations

from . import _core
from .config.ratelimit import RateLimitPolicy, limit_name, parse_key_part

_KINDS = {"route": 0, "client_ip": 1, "consumer": 2, "header": 3, "query": 4, "capture": 5}
_MISSING = {"shared": 0, "skip": 1, "deny": 2}


def _seconds(period: float) -> str:
    return f"{period:g}s"


def describe_limit(limit) -> str:
    key = "+".join(limit.key)
    if limit.concurrent is not None:
        what = f"at most {limit.concurrent} in flight"
    else:
        burst = limit.burst or limit.rate
        what = f"{limit.rate}/{_seconds(limit.period)} burst {burst}"
        if limit.cost != 1:
            what += f" cost {limit.cost}"
    if limit.when_missing != "shared":
        key += f" (missing: {limit.when_missing})"
    if limit.scope == "cluster":
        key += f", cluster-wide through Redis (fails {limit.on_redis_error})"
    return f"{what} per {key}"


def _identity(policy_key: str, name: str, limit) -> str:
    """What a limit's state is keyed by across reloads: its policy, its name and whatever changes
    what a bucket's number means. `cost` and `when_missing` do not, so changing them keeps state."""
    return "|".join((policy_key, name, str(limit.rate), repr(limit.period), str(limit.burst or limit.rate),
                     str(limit.concurrent), ",".join(limit.key)))


def build_rate_limit(entry: RateLimitPolicy, name: str, key: str, redis=None) -> _core.RateLimitPolicy:
    """`redis`: the config's `redis:` settings (cluster limits need them; the checks make sure)."""
    specs = []
    for i, limit in enumerate(entry.limits):
        shown = limit_name(name, i, len(entry.limits), limit)
        parts = []
        for part in limit.key:
            source, arg = parse_key_part(part)
            parts.append((_KINDS[source], arg.encode()))
        concurrency = limit.concurrent is not None
        identity = _core.limit_identity(_identity(key, shown, limit))
        spec = _core.LimitSpec(
            identity, concurrency,
            float(limit.rate or 1), float(limit.period), int(limit.burst or limit.rate or 1), int(limit.cost),
            int(limit.concurrent or 0), parts, _MISSING[limit.when_missing], shown.encode(),
            f"{shown}: {describe_limit(limit)}")
        if limit.scope == "cluster" and redis is not None:
            from .ratelimit_cluster import cluster_limit
            spec.cluster = cluster_limit(redis, identity, float(limit.rate), float(limit.period),
                                         int(limit.burst or limit.rate), limit.on_redis_error == "open")
        specs.append(spec)
    return _core.RateLimitPolicy(name, key, specs, entry.shadow, entry.status, entry.concurrency_status,
                                 list(entry.headers), entry.headers_on_allowed, _core.rate_table(), entry)


def explain_limits(by_phase: dict, route: str, headers: list[tuple[str, str]], query: str,
                   client_ip: str = "192.0.2.1") -> list[str]:
    """`fastgw explain`'s lines for the rate limits a request meets, and the key each would count
    it under."""
    from urllib.parse import parse_qsl

    out = []
    qs = dict(reversed(parse_qsl(query, keep_blank_values=True)))   # the first value counts
    hdrs: dict[str, list[str]] = {}
    for name, value in headers:
        hdrs.setdefault(name.lower(), []).append(value)
    for policy in by_phase.get("request") or ():
        if policy.type != "rate_limit":
            continue
        entry = policy.config
        for i, limit in enumerate(entry.limits):
            shown = limit_name(policy.name, i, len(entry.limits), limit)
            values = []
            for part in limit.key:
                source, arg = parse_key_part(part)
                if source == "route":
                    value = route
                elif source == "client_ip":
                    value = client_ip
                elif source == "consumer":
                    value = "(the consumer authentication sets)"
                elif source == "header":
                    value = ", ".join(hdrs[arg]) if arg in hdrs else None
                elif source == "query":
                    value = qs.get(arg)
                else:
                    value = "(from the path)"
                values.append(f"{part}={value if value is not None else '(missing: ' + limit.when_missing + ')'}")
            mode = " [shadow]" if entry.shadow else ""
            out.append(f"limit:    {policy.name}/{shown}{mode}: {describe_limit(limit)}; key: {', '.join(values)}")
    return out


def _families(worker) -> list:
    """Prometheus families (docs/metrics.md): requests each rate_limit policy let through, refused,
    and would have refused in shadow mode; the Redis link's calls, failures and state."""
    from . import metrics

    allowed, limited, shadow = [], [], []
    for key, policy in worker.runtime.policies.items():
        if policy.type != "rate_limit":
            continue
        label = policy.name if key.startswith("policies/") else key
        allowed.append([[label], policy.allowed])
        limited.append([[label], policy.limited])
        shadow.append([[label], policy.shadow_limited])
    out = [
        metrics.counter("fastgw_ratelimit_allowed_total", "Requests a rate_limit policy let through.", ["policy"],
                        allowed),
        metrics.counter("fastgw_ratelimit_limited_total", "Requests a rate_limit policy refused.", ["policy"], limited),
        metrics.counter("fastgw_ratelimit_shadow_limited_total", "Requests a rate_limit policy in shadow mode would "
                        "have refused.", ["policy"], shadow),
    ]
    from . import ratelimit_cluster

    links = list(ratelimit_cluster._links.values())
    if links:
        import time

        now = time.monotonic()
        out += [
            metrics.counter("fastgw_ratelimit_redis_calls_total", "Lease requests to Redis.", [],
                            [[[], sum(link.calls for link in links)]]),
            metrics.counter("fastgw_ratelimit_redis_failures_total", "Lease requests that failed or passed "
                            "redis.timeout.", [], [[[], sum(link.failures_total for link in links)]]),
            metrics.gauge("fastgw_ratelimit_redis_up", "Workers whose Redis link is usable (not backing off).", [],
                          [[[], sum(1 for link in links if link.usable(now))]]),
        ]
    return out


def _register() -> None:
    from . import metrics

    metrics.register(_families)


_register()
