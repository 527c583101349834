"""The compile step for an upstream's `balancer` and `sticky`: the core TargetPicker, or None for
plain smooth weighted round robin (the request path then pays nothing for the choice)."""

from __future__ import annotations

from . import _core
from .config.balancing import LeastRequest, Maglev, RingHash, RoundRobin
from .config.schema import Upstream


def build_picker(up: Upstream, targets: list) -> _core.TargetPicker | None:
    weights = [t.weight for t in up.targets]
    sticky = {}
    if up.sticky is not None:
        sticky = {"sticky_cookie": up.sticky.cookie, "sticky_attributes": up.sticky.attributes()}
    b = up.balancer
    if isinstance(b, RoundRobin):
        return _core.TargetPicker("round_robin", targets, weights, **sticky) if sticky else None
    if isinstance(b, LeastRequest):
        return _core.LeastRequestPicker(targets, weights, b.choices, **sticky)
    name = b.hash_on.name.encode() if b.hash_on.name else None
    if isinstance(b, RingHash):
        return _core.RingHashPicker(targets, weights, b.hash_on.source, name, b.ring_size, **sticky)
    if isinstance(b, Maglev):
        return _core.MaglevPicker(targets, weights, b.hash_on.source, name, b.table_size, **sticky)
    raise TypeError(f"unknown balancer {b!r}")  # pragma: no cover - the schema's union is closed
