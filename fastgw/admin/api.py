"""The Admin API's endpoints (docs/admin.md), served by the supervisor.

What only the supervisor knows (the running config, reloads, which workers are up) it answers
itself; what lives in the workers (counters, pools, explain) it asks each worker over its control
channel, each call with a deadline, so that a worker that does not answer in time shows up as an
error entry in an otherwise complete answer.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__, dashboard, metrics
from ..config import ConfigError
from ..sources import loads_config
from .http import Request, Response, json_response
from .redact import redacted_config, redacted_route

if TYPE_CHECKING:
    from ..server import Supervisor

__all__ = ["ADMIN_SOURCE", "AdminAPI"]

#: How errors in a config posted to the Admin API name their source.
ADMIN_SOURCE = "<admin>"

# Content-Type of a POSTed config -> fastgw.sources format name
_CONFIG_TYPES = {
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "application/toml": "toml",
}
# Probes carry no secret: they say only whether the process is up and serving.
# The dashboard page holds no data (its requests for data carry the token), so a browser can load it
# before the token is typed in.
_OPEN_PATHS = frozenset(("/healthz", "/readyz", "/dashboard"))


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    url: str
    headers: dict[str, str] | list[tuple[str, str]] = {}


def _issues(exc: ConfigError) -> list[dict]:
    return [{"path": i.path, "line": i.line, "message": i.message} for i in exc.errors]


class AdminAPI:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.started = time.time()
        self._routes = {
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
            "/metrics": {"GET": self.metrics},
            "/config": {"GET": self.get_config, "POST": self.post_config},
            "/routes": {"GET": self.routes},
            "/upstreams": {"GET": self.upstreams},
            "/explain": {"POST": self.explain},
            "/stats": {"GET": self.stats},
            "/reloads": {"GET": self.reloads},
            "/dashboard": {"GET": self.dashboard},
        }

    async def handle(self, req: Request) -> Response:
        methods = self._routes.get(req.path)
        if methods is None:
            return json_response(404, {"error": f"no such endpoint: {req.path}",
                                       "endpoints": sorted(self._routes)})
        if req.path not in _OPEN_PATHS and not self._authorized(req):
            resp = json_response(401, {"error": "missing or wrong bearer token (Authorization: Bearer ...)"})
            resp.headers.append(("WWW-Authenticate", 'Bearer realm="fastgw-admin"'))
            return resp
        handler = methods.get("GET" if req.method == "HEAD" else req.method)
        if handler is None:
            resp = json_response(405, {"error": f"{req.method} is not allowed on {req.path}"})
            resp.headers.append(("Allow", ", ".join(methods)))
            return resp
        return await handler(req)

    def _authorized(self, req: Request) -> bool:
        token = self.sup.admin_token
        if token is None:
            return True
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        # compare_digest: how much of a wrong token matched must not show in the time it takes
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    # --- endpoints ----------------------------------------------------------------------------------

    async def healthz(self, req: Request) -> Response:
        return json_response(200, {"status": "alive", "pid": os.getpid(), "version": __version__})

    async def dashboard(self, req: Request) -> Response:
        return Response(200, dashboard.page(), "text/html; charset=utf-8")

    async def readyz(self, req: Request) -> Response:
        ready, detail = self.sup.readiness()
        return json_response(200 if ready else 503, {"status": "ready" if ready else "not ready", **detail})

    async def metrics(self, req: Request) -> Response:
        answers = await self.sup.ask_workers("snapshot")
        snapshots = [a["metrics"] for a in answers if "error" not in a]
        process = self.sup.process_info(unanswered=sum(1 for a in answers if "error" in a))
        return Response(200, metrics.render(snapshots, process).encode(), metrics.CONTENT_TYPE)

    async def get_config(self, req: Request) -> Response:
        return json_response(200, {"generation": self.sup.generation, "source": self.sup.config_source,
                                   "config": redacted_config(self.sup.cfg)})

    async def post_config(self, req: Request) -> Response:
        media = req.headers.get("content-type", "").split(";")[0].strip().lower()
        fmt = _CONFIG_TYPES.get(media)
        if fmt is None:
            return json_response(415, {"error": "send the config as JSON or YAML: Content-Type "
                                                "application/json or application/yaml",
                                       "accepted": sorted(_CONFIG_TYPES)})
        try:
            cfg = loads_config(req.body, fmt, file=ADMIN_SOURCE)
            cfg = self.sup.check_admin_change(cfg, ADMIN_SOURCE)
        except ConfigError as exc:
            self.sup.refused("admin", ADMIN_SOURCE, exc)
            return json_response(400, {"error": "invalid configuration; the running config is unchanged",
                                       "errors": _issues(exc)})
        summary = await self.sup.accept(cfg, "admin", ADMIN_SOURCE)
        workers = summary["workers"]
        if any(w.get("error") and not w.get("pending") for w in workers):
            status = 500
        elif any(w.get("pending") for w in workers):
            status = 202
        else:
            status = 200
        return json_response(status, summary)

    async def routes(self, req: Request) -> Response:
        data = msgspec.to_builtins(self.sup.cfg.routes)
        return json_response(200, {"generation": self.sup.generation,
                                   "routes": [redacted_route(r) for r in data]})

    async def upstreams(self, req: Request) -> Response:
        answers = await self.sup.ask_workers("upstreams")
        out: dict[str, Any] = {}
        for name, up in self.sup.cfg.upstreams.items():
            out[name] = {
                "targets": [{"address": t.address, "weight": t.weight, "idle_connections": 0,
                             "idle_connections_by_worker": {}, "active_requests": 0,
                             "health": "healthy" if up.health.passive.enabled or up.health.active else None,
                             "health_by_worker": {}} for t in up.targets],
                "balancer": msgspec.to_builtins(up.balancer),
                "timeouts": msgspec.to_builtins(up.timeouts),
                "keepalive": msgspec.to_builtins(up.keepalive),
                "circuit_breakers_by_worker": {},
                "retry_budget_by_worker": {},
            }
        for answer in answers:
            for name, up in (answer.get("upstreams") or {}).items():
                if name not in out:
                    continue   # a worker still on an older generation
                by_address = {t["address"]: t for t in out[name]["targets"]}
                if up.get("circuit_breakers") is not None:
                    out[name]["circuit_breakers_by_worker"][str(answer["pid"])] = up["circuit_breakers"]
                if up.get("retry_budget") is not None:
                    out[name]["retry_budget_by_worker"][str(answer["pid"])] = up["retry_budget"]
                for target in up["targets"]:
                    entry = by_address.get(target["address"])
                    named = by_address.get(target.get("resolved_from"))
                    if entry is None and named is not None:
                        # an address a hostname target resolved to (docs/health.md, DNS)
                        entry = {**named, "address": target["address"], "resolved_from": named["address"],
                                 "idle_connections": 0, "idle_connections_by_worker": {}, "active_requests": 0,
                                 "health_by_worker": {}}
                        out[name]["targets"].append(entry)
                        by_address[target["address"]] = entry
                        named["resolved"] = True
                    if entry is not None:
                        pid = str(answer["pid"])
                        entry["idle_connections"] += target["idle_connections"]
                        entry["idle_connections_by_worker"][pid] = target["idle_connections"]
                        entry["active_requests"] += target.get("active_requests", 0)
                        # passive health is each worker's own: ejected where any worker ejected it
                        health = {k: v for k, v in target.items()
                                  if k not in ("address", "idle_connections", "active_requests")}
                        entry["health_by_worker"][pid] = health
                        if health.get("health") == "ejected" and entry["health"] != "unhealthy":
                            entry["health"] = "ejected"
                        if health.get("health") == "unhealthy":     # active checks failing
                            entry["health"] = "unhealthy"
        return json_response(200, {"generation": self.sup.generation, "upstreams": out,
                                   "workers": [_worker_line(a) for a in answers]})

    async def explain(self, req: Request) -> Response:
        try:
            body = msgspec.json.decode(req.body or b"null", type=ExplainRequest)
        except msgspec.DecodeError as exc:
            return json_response(400, {"error": f"expected JSON {{\"method\", \"url\", \"headers\"}}: {exc}"})
        headers = list(body.headers.items()) if isinstance(body.headers, dict) else list(body.headers)
        answers = await self.sup.ask_workers("explain", {"method": body.method, "url": body.url,
                                                         "headers": headers}, first_ready=True)
        answer = answers[0] if answers else {"error": "no worker is ready"}
        if "explanation" in answer:
            text = answer["explanation"]
            return json_response(200, {"request": {"method": body.method.upper(), "url": body.url,
                                                   "headers": headers},
                                       "generation": answer["generation"], "worker": answer["pid"],
                                       "explanation": text, "lines": text.splitlines()})
        status = 400 if "pid" in answer else 503
        return json_response(status, {"error": answer.get("error")})

    async def stats(self, req: Request) -> Response:
        answers = await self.sup.ask_workers("stats")
        return json_response(200, {"supervisor": {"pid": os.getpid(), "generation": self.sup.generation,
                                                  "uptime_seconds": round(time.time() - self.started, 3),
                                                  "workers": self.sup.nworkers},
                                   "workers": answers})

    async def reloads(self, req: Request) -> Response:
        log = self.sup.reloads
        return json_response(200, {"ok": log.ok, "failed": log.failed, "reloads": log.entries()})


def _worker_line(answer: dict) -> dict:
    keys = ("index", "pid", "generation", "error")
    return {k: answer[k] for k in keys if k in answer}
