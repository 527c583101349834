"""Active health checks: each worker probes each target of every upstream with `health.active`
(an HTTP request or a TCP connect) on its own event loop, and hands each result to the upstream
group (UpstreamGroup.active_result), which takes a failing target out of its balancer and puts a
recovered one back. docs/health.md says why the workers probe, not the supervisor.

A probe is one asyncio task per (upstream, target, settings); a reload keeps the tasks whose
target and settings did not change (no burst of probes on each reload) and they find the group to
report to by name in the worker's current runtime, so results land in the group that serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl as _ssl

from . import events
from .config import GatewayConfig
from .config.health import ActiveHealth, expected_statuses

__all__ = ["ActiveChecks", "probe"]

_USER_AGENT = b"fastgw-health-check"


class ActiveChecks:
    def __init__(self, worker, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.loop = loop
        self._tasks: dict[tuple, asyncio.Task] = {}

    def apply(self, cfg: GatewayConfig) -> None:
        """Runs the probes `cfg` asks for against the worker's current runtime."""
        wanted: dict[tuple, tuple] = {}
        groups = self.worker.runtime.groups
        for name, up in cfg.upstreams.items():
            a = up.health.active
            group = groups.get(name)
            if a is None or group is None:
                continue
            settings = (a.type, a.path, a.method, a.host, tuple(sorted(expected_statuses(a.expected_statuses))),
                        a.interval, a.timeout, a.jitter_seconds())
            for target in group.targets:
                wanted[(name, target.pool_key, settings)] = (name, target.address, a)
        for key in [k for k in self._tasks if k not in wanted]:
            self._tasks.pop(key).cancel()
        for key, (name, address, a) in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = self.loop.create_task(self._run(name, address, a, key[2][4]))

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _run(self, name: str, address: str, a: ActiveHealth, statuses: tuple) -> None:
        expected = frozenset(statuses)
        jitter = a.jitter_seconds()
        # the first probe soon after start (spread by the jitter), so a target dead at startup
        # leaves after unhealthy_threshold probes rather than a whole interval later
        await asyncio.sleep(random.uniform(0.0, jitter) if jitter else 0.0)
        while True:
            group = self.worker.runtime.groups.get(name)
            index = _index_of(group, address)
            if index < 0:
                return      # a reload dropped it; apply() cancels this task too
            target = group.targets[index]
            ok, why = await probe(target.host, target.port, a, expected, target.ssl_context,
                                  target.server_hostname)
            group = self.worker.runtime.groups.get(name)      # a reload may have swapped it meanwhile
            index = _index_of(group, address)
            if index >= 0:
                change = group.active_result(index, ok, why)
                if change < 0:
                    events.emit("warning", "target_unhealthy",
                                msg=f"target {address} of upstream {name} failed {a.unhealthy_threshold} "
                                    f"active health checks in a row ({why}): out of service",
                                upstream=name, target=address, reason=why)
                elif change > 0:
                    events.emit("info", "target_healthy",
                                msg=f"target {address} of upstream {name} passed {a.healthy_threshold} "
                                    f"active health checks in a row: back in service",
                                upstream=name, target=address)
            await asyncio.sleep(a.interval + (random.uniform(0.0, jitter) if jitter else 0.0))


def _index_of(group, address: str) -> int:
    if group is None:
        return -1
    for i, t in enumerate(group.targets):
        if t.address == address:
            return i
    return -1


async def probe(host: str, port: int, a: ActiveHealth, expected: frozenset[int],
                ssl_context: _ssl.SSLContext | None = None, server_hostname: str | None = None) -> tuple[bool, str | None]:
    """One probe: (passed, why it failed). Never raises (but for cancellation)."""
    try:
        return await asyncio.wait_for(_probe(host, port, a, expected, ssl_context, server_hostname), a.timeout)
    except TimeoutError:
        return False, f"timed out after {a.timeout:g}s"
    except (OSError, _ssl.SSLError, EOFError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _probe(host, port, a: ActiveHealth, expected, ssl_context, server_hostname) -> tuple[bool, str | None]:
    kwargs = {}
    if ssl_context is not None:
        kwargs = {"ssl": ssl_context, "server_hostname": server_hostname or host}
    reader, writer = await asyncio.open_connection(host, port, **kwargs)
    try:
        if a.type == "tcp":
            return True, None
        hostport = a.host or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        writer.write(b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
                     % (a.method.encode(), a.path.encode(), hostport.encode(), _USER_AGENT))
        line = await reader.readline()
        if not line:
            return False, "closed before a response"
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        status = int(parts[1])
        if status not in expected:
            return False, f"status {status}"
        return True, None
    finally:
        with contextlib.suppress(Exception):
            writer.transport.abort()
