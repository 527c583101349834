"""Hostname targets: each worker resolves every upstream target given by name with the loop's
asynchronous getaddrinfo (uvloop runs it off the loop), before it starts serving and then every
`dns.refresh` in the background. The compile step (fastgw/runtime.py) turns a resolved name into
one target per address; a change of addresses rebuilds the runtime as a reload does, so the
targets, pools and health of the addresses that stay carry over. A failed refresh keeps the last
good addresses and says so in the log; a name never resolved stays one target, resolved by each
new connection (as before this module).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from . import events
from .config import GatewayConfig

__all__ = ["DnsRefresh", "expand", "origin", "prime"]

# (name, port) -> the last good addresses, sorted; and address "ip:port" -> "name:port"
_cache: dict[tuple[str, int], list[str]] = {}
_origin: dict[str, str] = {}


def is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def expand(host: str, port: int) -> list[str]:
    """The hosts a configured target stands for: its resolved addresses, or itself."""
    if not is_name(host):
        return [host]
    found = _cache.get((host, port))
    if not found:
        return [host]
    for ip in found:
        _origin[_address(ip, port)] = _address(host, port)
    return found


def origin(address: str) -> str | None:
    """The configured "name:port" a target's address was resolved from, or None."""
    return _origin.get(address)


def _names(cfg: GatewayConfig) -> dict[tuple[str, int], tuple[float, float]]:
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for up in cfg.upstreams.values():
        for t in up.targets:
            if is_name(t.host):
                key = (t.host, t.port)
                refresh, timeout = up.dns.refresh, up.dns.timeout
                if key in out:
                    refresh, timeout = min(refresh, out[key][0]), max(timeout, out[key][1])
                out[key] = (refresh, timeout)
    return out


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = sorted({info[4][0] for info in infos})
    if not found:
        raise OSError(f"{host} has no address")
    return found


async def _refresh_one(loop, host: str, port: int, timeout: float) -> bool:
    """Resolves one name into the cache: True when its addresses changed."""
    key = (host, port)
    old = _cache.get(key)
    try:
        found = await asyncio.wait_for(resolve(loop, host, port), timeout)
    except (OSError, TimeoutError, UnicodeError) as exc:
        why = f"timed out after {timeout:g}s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        kept = f"keeping {', '.join(old)}" if old else "connections resolve it each time"
        events.emit("warning", "dns_refresh_failed", msg=f"resolving {host} failed ({why}); {kept}",
                    host=host, port=port, reason=why, kept=old or [])
        return False
    if found == old:
        return False
    _cache[key] = found
    events.emit("info", "dns_changed", msg=f"{host} resolves to {', '.join(found)}", host=host, port=port,
                addresses=found, added=sorted(set(found) - set(old or ())), removed=sorted(set(old or ()) - set(found)))
    return True


async def prime(loop: asyncio.AbstractEventLoop, cfg: GatewayConfig) -> None:
    """Resolves every name `cfg` has, at once, before the worker serves."""
    names = _names(cfg)
    await asyncio.gather(*(_refresh_one(loop, h, p, t) for (h, p), (_, t) in names.items()))


class DnsRefresh:
    """Re-resolves every name of the running config every `refresh`; `rebuild()` when a name's
    addresses changed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rebuild: Callable[[], None]) -> None:
        self.loop = loop
        self.rebuild = rebuild
        self._tasks: dict[tuple, asyncio.Task] = {}

    def apply(self, cfg: GatewayConfig) -> None:
        wanted = {(h, p, r, t) for (h, p), (r, t) in _names(cfg).items()}
        for key in [k for k in self._tasks if k not in wanted]:
            self._tasks.pop(key).cancel()
        for key in wanted:
            if key not in self._tasks:
                self._tasks[key] = self.loop.create_task(self._run(*key))

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _run(self, host: str, port: int, refresh: float, timeout: float) -> None:
        if (host, port) not in _cache:       # a name a reload added, or one that failed at start
            await self._once(host, port, timeout)
        while True:
            await asyncio.sleep(refresh)
            await self._once(host, port, timeout)

    async def _once(self, host: str, port: int, timeout: float) -> None:
        if await _refresh_one(self.loop, host, port, timeout):
            try:
                self.rebuild()
            except Exception as exc:   # a compile that fails keeps the runtime that serves
                events.emit("error", "dns_rebuild_failed", msg=f"applying new addresses of {host} failed: {exc}",
                            host=host, error=f"{type(exc).__name__}: {exc}")
