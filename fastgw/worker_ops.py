"""What a worker answers on its control channel (fastgw.control): the operations the supervisor's
Admin API and metrics are built from, and `apply`, how every config reaches a running worker.

Each operation takes the call's args and returns plain msgpack-encodable data; it runs on the
worker's event loop between requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from .config import GatewayConfig
from .config.decode import convert

__all__ = ["WorkerOps", "config_payload"]


def config_payload(cfg: GatewayConfig) -> Any:
    """A validated config as plain data for `apply`: the worker rebuilds the same Structs from it
    without reading or checking anything again, so every worker runs exactly what the supervisor
    accepted."""
    return msgspec.to_builtins(cfg)


class WorkerOps:
    def __init__(self, worker, cfg: GatewayConfig, generation: int, index: int,
                 log: Callable[..., None], check: Callable[[GatewayConfig], None] | None = None,
                 applied: Callable[[GatewayConfig], None] | None = None,
                 swapped: Callable[[GatewayConfig], None] | None = None) -> None:
        """check: raises if this worker cannot run a config (an access log file it cannot open);
        applied: sets up what lives beside the runtime (logs, tracing) once it runs;
        swapped: what follows the new runtime once it serves (active health checks)."""
        self.worker = worker
        self.cfg = cfg
        self.generation = generation
        self.index = index
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self._log = log
        self._check = check
        self._applied = applied
        self._swapped = swapped

    def table(self) -> dict[str, Callable[[dict], Any]]:
        return {"stats": self.stats, "snapshot": self.snapshot, "upstreams": self.upstreams,
                "explain": self.explain, "apply": self.apply}

    def _identity(self) -> dict:
        return {"pid": os.getpid(), "index": self.index, "generation": self.generation}

    def stats(self, args: dict) -> dict:
        w = self.worker
        return {
            **self._identity(),
            "started": self.started,
            "uptime_seconds": round(time.monotonic() - self._started_monotonic, 3),
            "connections_active": w.active_clients(),
            "connections_total": w.connections_total,
            "requests_total": w.requests_total,
            "upstream_connections_active": w.active_upstreams(),
            "tunnels_active": w.active_tunnels(),      # upgraded and stream connections (docs/tunnels.md)
            "draining": bool(w.draining),
        }

    def snapshot(self, args: dict) -> dict:
        from . import metrics

        return {**self._identity(), "metrics": metrics.worker_snapshot(self.worker)}

    def upstreams(self, args: dict) -> dict:
        groups = self.worker.runtime.groups
        return {
            **self._identity(),
            "upstreams": {name: {"targets": _targets(group),
                                 "circuit_breakers": None if group.breakers is None
                                 else group.breakers.describe(group.targets),
                                 "retry_budget": None if group.budget is None else group.budget.describe()}
                          for name, group in groups.items()},
        }

    def explain(self, args: dict) -> dict:
        from .explain import ExplainError, explain

        headers = [(str(n), str(v)) for n, v in args.get("headers") or ()]
        try:
            text = explain(self.cfg, str(args["method"]).upper(), str(args["url"]), headers)
        except ExplainError as exc:
            return {**self._identity(), "error": str(exc)}
        return {**self._identity(), "explanation": text}

    def apply(self, args: dict) -> dict:
        """Swaps in the config the supervisor sends. A generation this worker already runs (it
        forked with it) is a no-op, so a call that crossed a restart does no harm."""
        from .runtime import compile_runtime, retired_targets

        generation = int(args["generation"])
        if generation <= self.generation:
            return {**self._identity(), "applied": False, "current": True}
        try:
            new_cfg = convert(args["config"])
            old = self.worker.runtime
            if self._check is not None:
                self._check(new_cfg)
            new = compile_runtime(new_cfg, old)
        except Exception as exc:  # a plugin constructor raising, say: the old config keeps serving
            message = f"{type(exc).__name__}: {exc}"
            self._log(f"reload refused, keeping the running config: {message}", "reload_rejected", "error",
                      errors=[message])
            return {**self._identity(), "applied": False, "error": message}
        if self._applied is not None:
            self._applied(new_cfg)
        self.worker.swap_runtime(new)
        if self._swapped is not None:
            self._swapped(new_cfg)
        for target in retired_targets(old, self.worker.runtime):
            target.retire()
        self.cfg, self.generation = new_cfg, generation
        self._log(f"worker {os.getpid()}: configuration reloaded", "reload_applied", generation=generation,
                  listeners=len(new_cfg.listeners), routes=len(new_cfg.routes), upstreams=len(new_cfg.upstreams),
                  policies=len(new_cfg.policies))
        return {**self._identity(), "applied": True}


def _targets(group) -> list[dict]:
    from .dns import origin

    health = group.health() or [{"health": "healthy"}] * len(group.targets)
    out = [{"address": t.address, "idle_connections": t.idle_connections, "active_requests": t.active, **h}
           for t, h in zip(group.targets, health, strict=True)]
    if group.slow_start is not None:
        for i, entry in enumerate(out):
            ramp = group.slow_start.describe(i)
            if ramp is not None:
                entry["slow_start"] = ramp        # {weight_percent, seconds_left} while it ramps
    for entry in out:
        name = origin(entry["address"])
        if name is not None:
            entry["resolved_from"] = name
    return out
