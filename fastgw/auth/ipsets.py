"""CIDR lists as the core's IpSet: every network as a range of 128-bit addresses (IPv4 in
::ffff:0:0/96, where the request path maps IPv4 addresses too), sorted and merged so no two overlap."""

from __future__ import annotations

import ipaddress

from .. import _core
from ..config.auth import parse_cidr

__all__ = ["ip_set", "merged_ranges"]

_V4_MAPPED = 0xFFFF << 32


def merged_ranges(cidrs: list[str]) -> list[tuple[int, int]]:
    ranges = []
    for text in cidrs:
        net = parse_cidr(text)
        first, last = int(net.network_address), int(net.broadcast_address)
        if isinstance(net, ipaddress.IPv4Network):
            first, last = first | _V4_MAPPED, last | _V4_MAPPED
        elif net.network_address.ipv4_mapped is not None:
            pass                      # ::ffff:a.b.c.d/n is already in the mapped range
        ranges.append((first, last))
    ranges.sort()
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def ip_set(cidrs: list[str]) -> _core.IpSet:
    return _core.IpSet(merged_ranges(cidrs), len(cidrs))
