"""How an upstream spreads requests over its targets: the balancer (a tagged union by `type`) and
sticky sessions. docs/load-balancing.md."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from .base import Base
from .values import PositiveDuration

__all__ = ["Balancer", "HashKey", "LeastRequest", "Maglev", "RingHash", "RoundRobin", "StickySessions",
           "check_balancer"]

_TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class HashKey(Base, kw_only=True):
    """What a consistent-hash balancer hashes: the client address, the path, or the value of a
    named header, cookie or query parameter. A request without it is balanced at random."""

    source: Literal["client_ip", "path", "header", "cookie", "query"]
    name: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    """The header, cookie or query parameter (required for those sources)."""


class BalancerBase(Base, tag_field="type", kw_only=True):
    pass


class RoundRobin(BalancerBase, tag="round_robin", kw_only=True):
    """nginx's smooth weighted round robin (the default)."""


class LeastRequest(BalancerBase, tag="least_request", kw_only=True):
    """Envoy's default: `choices` targets drawn at random in proportion to weight, the one with the
    fewest active requests per unit of weight taken (the power of two choices)."""

    choices: Annotated[int, Meta(ge=2, le=10)] = 2


class RingHash(BalancerBase, tag="ring_hash", kw_only=True):
    """Consistent hashing on a ring (ketama): about `ring_size` points shared by weight; a target
    leaving moves only its own keys."""

    hash_on: HashKey
    ring_size: Annotated[int, Meta(ge=16, le=1 << 20)] = 1024


class Maglev(BalancerBase, tag="maglev", kw_only=True):
    """Maglev consistent hashing: a lookup table of `table_size` entries (a prime); even spread,
    minimal disruption when a target leaves."""

    hash_on: HashKey
    table_size: Annotated[int, Meta(ge=251, le=5_000_011)] = 65537


Balancer = RoundRobin | LeastRequest | RingHash | Maglev


class StickySessions(Base, kw_only=True):
    """Session affinity by a cookie the gateway sets (Gateway API SessionPersistence, type Cookie): a
    request whose cookie names an available target goes there; any other is balanced and its
    response sets the cookie. The value names the target by a hash of its address, not the address."""

    cookie: Annotated[str, Meta(pattern=_TOKEN, max_length=128)] = "fastgw-affinity"
    ttl: PositiveDuration | None = None
    """Max-Age of the cookie; none: a session cookie."""
    path: str = "/"
    secure: bool = False
    http_only: bool = True
    same_site: Literal["Strict", "Lax", "None"] | None = None

    def attributes(self) -> str:
        out = f"; Path={self.path}"
        if self.ttl is not None:
            out += f"; Max-Age={max(1, int(self.ttl))}"
        if self.secure:
            out += "; Secure"
        if self.http_only:
            out += "; HttpOnly"
        if self.same_site:
            out += f"; SameSite={self.same_site}"
        return out


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def check_balancer(balancer: Balancer, sticky: StickySessions | None, base: list, out: list) -> None:
    """Semantic checks of an upstream's `balancer` and `sticky` (base: the upstream's path)."""
    if isinstance(balancer, RingHash | Maglev):
        key = balancer.hash_on
        if key.source in ("header", "cookie", "query") and not key.name:
            out.append(([*base, "balancer", "hash_on", "name"], f"hash_on.source {key.source!r} needs a name"))
        if key.source in ("client_ip", "path") and key.name:
            out.append(([*base, "balancer", "hash_on", "name"], f"hash_on.source {key.source!r} takes no name"))
    if isinstance(balancer, Maglev) and not _is_prime(balancer.table_size):
        out.append(([*base, "balancer", "table_size"], f"table_size must be a prime (65537, 5003, ...), "
                                                       f"got {balancer.table_size}"))
    if sticky is not None:
        if not sticky.path.startswith("/") or any(c in sticky.path for c in ";\r\n\0"):
            out.append(([*base, "sticky", "path"], "a cookie path starts with '/' and has no ';' or control characters"))
        if sticky.same_site == "None" and not sticky.secure:
            out.append(([*base, "sticky", "same_site"], "SameSite=None needs secure: true (browsers drop it otherwise)"))


