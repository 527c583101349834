"""Cluster-wide rate limits: token buckets in Redis that every gateway leases batches from.

A worker never asks Redis per request. It holds, per key, a lease of tokens taken from the shared
bucket by one atomic Lua script (a GCRA bucket on Redis's own clock, so gateways' clocks do not
matter); requests spend the lease locally. An empty lease starts one request for more (requests of
that key wait on it, at most `redis.timeout`); its size follows this worker's recent rate of that
key, so a busy worker leases more and an idle one little. Leased tokens not spent within
`redis.lease` go back to the bucket in the next script call. When the bucket is empty the script
says when the next token comes; the worker refuses locally until then (at least lease/2), without
asking Redis again.

Over-admission: every token spent was taken from the shared bucket, and a token is spent at most
`lease` after it was taken, so over any window of w seconds a limit of R tokens/s with bucket B
admits at most B + R * (w + lease) requests, whatever the number of gateways; the local wait after
an empty answer only delays taking, never adds. docs/rate-limiting.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import urlsplit, urlunsplit

from . import events

# KEYS[1]: the bucket. ARGV: ns per token (T), bucket size in ns (tau = burst*T), tokens wanted,
# tokens given back. The state is the bucket's tat in microseconds on Redis's clock (TIME), kept
# while it matters (until the bucket is full again). Returns {granted, us until the next token when
# short, tokens left}.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1]) / 1000
local tau = tonumber(ARGV[2]) / 1000
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if back > 0 then
  tat = tat - back * T
  if tat < now then tat = now end
end
local avail = math.floor((now + tau - tat) / T)
local grant = want
if grant > avail then grant = avail end
if grant < 0 then grant = 0 end
tat = tat + grant * T
local wait = 0
if grant < want then wait = math.ceil(tat + T - tau - now) end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return {grant, wait, avail - grant}
"""

ALLOW_NONE = -1   # take(): refused (retry_after_ns says when)
PENDING = -2      # take(): no lease: wait on fetch()
FAILED_OPEN = -3  # take(): Redis is away and the limit fails open


def redacted_url(url: str) -> str:
    """The URL without its password (for /config and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:<redacted>@{host}", parts.path, parts.query, parts.fragment))


class RedisLink:
    """One worker's connection to the `redis:` server, shared by its cluster limits: the script,
    the deadline, and a backoff after failures (while it lasts no request waits on Redis: the
    limits fail open or closed at once)."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.client = make_client(settings)
        self.script = self.client.register_script(LEASE_SCRIPT)
        self.down_until = 0.0
        self.backoff = 0.0
        self.failures = 0          # in a row, since the last answer
        self.failures_total = 0
        self.calls = 0

    def usable(self, now: float) -> bool:
        return now >= self.down_until

    async def lease(self, key: str, interval_ns: int, tau_ns: int, want: int, back: int) -> tuple[int, int, int]:
        self.calls += 1
        async with asyncio.timeout(self.settings.timeout):
            grant, wait_us, left = await self.script(keys=[key], args=[interval_ns, tau_ns, want, back])
        if self.failures:
            events.emit("info", "redis_reconnected", msg=f"Redis answers again after {self.failures} failure(s)",
                        url=redacted_url(self.settings.url))
        self.failures = 0
        self.backoff = 0.0
        return int(grant), int(wait_us), int(left)

    def failed(self, exc: BaseException) -> None:
        """Reconnection with backoff: 50ms doubling to 5s between attempts."""
        self.failures += 1
        self.failures_total += 1
        self.backoff = min(5.0, self.backoff * 2 if self.backoff else 0.05)
        self.down_until = time.monotonic() + self.backoff
        if self.failures == 1 or self.failures % 100 == 0:
            events.emit("warning", "redis_unavailable",
                        msg=f"Redis did not answer ({type(exc).__name__}); next try in {self.backoff:g}s",
                        url=redacted_url(self.settings.url), failures=self.failures)


def make_client(settings):
    """redis-py's asyncio client for the `redis:` settings: one server, the primary a set of Sentinels
    names (redis-py asks them again after a connection error, so a failover is followed), or a Redis
    Cluster (redis-py routes each script call to the node of its key's slot and follows MOVED)."""
    import redis.asyncio as aioredis

    from .config.ratelimit import parse_host_port

    common = {"socket_connect_timeout": settings.timeout, "socket_timeout": settings.timeout}
    mode = settings.mode
    if mode == "server":
        return aioredis.Redis.from_url(settings.url, retry_on_timeout=False, **common)
    parts = urlsplit(settings.url)
    auth = {"username": parts.username or None, "password": parts.password or None}
    if mode == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        db = int(parts.path.strip("/") or 0)
        sentinel = Sentinel([parse_host_port(a, 26379) for a in settings.sentinels],
                            sentinel_kwargs={"password": settings.sentinel_password, **common},
                            ssl=parts.scheme == "rediss", db=db, **auth, **common)
        return sentinel.master_for(settings.service, redis_class=aioredis.Redis, **common)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    host, port = parse_host_port(parts.netloc.rpartition("@")[2], 6379)
    nodes = [ClusterNode(host, port)] + [ClusterNode(*parse_host_port(a, 6379)) for a in settings.nodes]
    return RedisCluster(startup_nodes=nodes, ssl=parts.scheme == "rediss", **auth, **common)


def bucket_key(settings, identity: int, h: int) -> str:
    """The Redis key of one limit's bucket for one key hash. On a Redis Cluster the variable part is
    a hash tag (`{...}`), so the slot is that of the limit and key alone, whatever the prefix."""
    if settings.mode == "cluster":
        return f"{settings.key_prefix}{{{identity:016x}:{h:016x}}}"
    return f"{settings.key_prefix}{identity:016x}:{h:016x}"


def _Lease(now: float):
    """A key's lease: the core's ClusterLease (ratelimit.pyx), so that requests spend from it in C.
    Fields: tokens, expires, blocked_until, fetching, seen, since, rate."""
    from ._core import ClusterLease

    return ClusterLease(now)


class ClusterLimit:
    """One `scope: cluster` limit in one worker: its leases, by key hash."""

    def __init__(self, link: RedisLink, identity: int, rate: float, period: float, burst: int,
                 fail_open: bool) -> None:
        self.link = link
        self.identity = identity
        self.interval_ns = int(period * 1e9 / rate)
        self.tau_ns = self.interval_ns * burst
        self.rate_per_s = rate / period
        self.burst = burst
        self.fail_open = fail_open
        self.lease_s = link.settings.lease
        # waiting for the next token in a tight loop would be a round trip per token: wait at
        # least half a lease (the bucket keeps what arrives meanwhile, up to its size)
        self.min_wait_s = min(self.lease_s / 2, burst / self.rate_per_s / 2)
        self.max_keys = link.settings.max_keys
        self.leases: dict[int, _Lease] = {}
        self.granted = 0
        self.returned = 0

    def needs_lease(self, h: int, cost: int) -> bool:
        """True when a request of `cost` must wait for a lease request (none usable, no known
        refusal, Redis not in backoff)."""
        lease = self.leases.get(h)
        if lease is None:
            return self.link.usable(time.monotonic())
        now = time.monotonic()
        if lease.tokens >= cost and now < lease.expires:
            return False
        return now >= lease.blocked_until and self.link.usable(now)

    def refund(self, h: int, cost: int) -> None:
        """A request another limit refused gives back what it took."""
        lease = self.leases.get(h)
        if lease is not None:
            lease.tokens += cost

    def take(self, h: int, cost: int) -> int:
        """Tokens left in the lease after this request, or ALLOW_NONE, PENDING, FAILED_OPEN."""
        now = time.monotonic()
        lease = self._lease(h)
        lease.seen += cost
        if lease.tokens >= cost and now < lease.expires:
            lease.tokens -= cost
            return lease.tokens
        if now < lease.blocked_until:
            return ALLOW_NONE
        if not self.link.usable(now):
            return FAILED_OPEN if self.fail_open else ALLOW_NONE
        return PENDING

    def _lease(self, h: int) -> _Lease:
        lease = self.leases.get(h)
        if lease is None:
            now = time.monotonic()
            if len(self.leases) >= self.max_keys:
                self._shed(now)
            lease = self.leases[h] = _Lease(now)
        return lease

    def retry_after_ns(self, h: int) -> int:
        lease = self.leases.get(h)
        if lease is None:
            return 1_000_000_000
        return max(int((lease.blocked_until - time.monotonic()) * 1e9), 1)

    def failing(self) -> bool:
        return not self.link.usable(time.monotonic())

    def fetch(self, h: int, cost: int, refresh: bool = False) -> asyncio.Future:
        """The lease request for key `h` (one at a time per key: every waiter shares it)."""
        lease = self._lease(h)
        if lease.fetching is None or lease.fetching.done():
            loop = asyncio.get_running_loop()
            start_sweeper(loop)
            lease.fetching = loop.create_task(self._fetch(h, lease, cost, refresh))
        return lease.fetching

    def refresh(self, h: int) -> None:
        """Half of a full lease's time has passed: ask for the next one while requests go on spending
        this one (they wait only if it runs out first), so that a busy key never pauses at renewal."""
        lease = self.leases.get(h)
        if lease is not None and self.link.usable(time.monotonic()):
            self.fetch(h, 1, refresh=True)

    async def _fetch(self, h: int, lease: _Lease, cost: int, refresh: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - lease.since
        if elapsed > 0.05:
            observed = lease.seen / elapsed
            lease.rate = observed if lease.rate == 0.0 else 0.5 * lease.rate + 0.5 * observed
            lease.seen = 0
            lease.since = now
        want = max(cost, math.ceil(max(lease.rate, self.rate_per_s / 100) * self.lease_s))
        want = min(want, max(cost, self.burst))
        back = lease.tokens if now >= lease.expires else 0
        if back:
            lease.tokens = 0
        back += lease.owed
        lease.owed = 0
        try:
            grant, wait_us, _left = await self.link.lease(bucket_key(self.link.settings, self.identity, h),
                                                          self.interval_ns, self.tau_ns, want, back)
        except Exception as exc:      # a timeout, a refused connection, a script error
            self.link.failed(exc)
            return
        finally:
            self.returned += back
        self.granted += grant
        now = time.monotonic()
        if grant and (refresh or now >= lease.expires):
            # what is left of the old lease is never spent past its time: it goes back with the next
            # call, and the new grant (taken now) is the lease
            lease.owed += lease.tokens
            lease.tokens = 0
        lease.tokens += grant
        lease.expires = now + self.lease_s
        lease.refresh_at = now + self.lease_s / 2 if grant >= want and grant else 1e300
        if grant < want and lease.tokens < cost:
            lease.blocked_until = now + max(wait_us / 1e6, self.min_wait_s)

    def _shed(self, now: float) -> None:
        """Past max_keys: forget leases that hold nothing, else the oldest half (their tokens are
        dropped, which under-admits a little and never over-admits)."""
        for h in [h for h, lease in self.leases.items()
                  if lease.fetching is None and (lease.tokens == 0 or now >= lease.expires)
                  and now >= lease.blocked_until]:
            del self.leases[h]
        if len(self.leases) >= self.max_keys:
            for h in list(self.leases)[: len(self.leases) // 2]:
                del self.leases[h]

    async def give_back(self) -> None:
        """Expired leases' unused tokens back to the bucket (a sweep, for keys whose traffic
        stopped)."""
        now = time.monotonic()
        for h, lease in list(self.leases.items()):
            if (lease.owed or (lease.tokens and now >= lease.expires)) and \
                    (lease.fetching is None or lease.fetching.done()):
                back = lease.owed + (lease.tokens if now >= lease.expires else 0)
                lease.owed = 0
                if now >= lease.expires:
                    lease.tokens = 0
                try:
                    await self.link.lease(bucket_key(self.link.settings, self.identity, h), self.interval_ns,
                                          self.tau_ns, 0, back)
                    self.returned += back
                except Exception as exc:
                    self.link.failed(exc)
                    return


_links: dict[tuple, RedisLink] = {}
_limits: dict[tuple, ClusterLimit] = {}
_sweeper: asyncio.Task | None = None


def cluster_limit(settings, identity: int, rate: float, period: float, burst: int, fail_open: bool) -> ClusterLimit:
    """A cluster limit on this worker's link to `settings` (one link per distinct settings). A
    reload that keeps a limit's identity and settings keeps its leases."""
    key = (settings.url, settings.timeout, settings.lease, settings.max_keys, settings.key_prefix, settings.mode,
           tuple(settings.sentinels), settings.service, settings.sentinel_password, tuple(settings.nodes))
    link = _links.get(key)
    if link is None:
        link = _links[key] = RedisLink(settings)
    limit = _limits.get((key, identity))
    if limit is None or limit.fail_open != fail_open:
        limit = _limits[(key, identity)] = ClusterLimit(link, identity, rate, period, burst, fail_open)
    return limit


def start_sweeper(loop) -> None:
    """Gives expired leases back every lease period; started once a worker's loop runs."""
    global _sweeper
    if _sweeper is not None or not _links:
        return

    async def sweep() -> None:
        while True:
            lease_s = min(link.settings.lease for link in _links.values())
            await asyncio.sleep(lease_s)
            for limit in list(_limits.values()):
                await limit.give_back()

    _sweeper = loop.create_task(sweep())
