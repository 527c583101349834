"""The running config as JSON for GET /config and /routes, with secrets replaced."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ..config import GatewayConfig

__all__ = ["REDACTED", "redacted_config", "redacted_route"]

REDACTED = "<redacted>"
# Plugin configs are free-form: any key that looks like it names a credential is hidden.
_SECRET_KEY = re.compile(r"secret|password|passwd|token|key|credential", re.I)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _scrub_policies(policies: list | None) -> None:
    for policy in policies or ():
        if isinstance(policy.get("config"), dict):
            policy["config"] = _scrub(policy["config"])


def redacted_route(route: dict) -> dict:
    _scrub_policies(route.get("policies"))
    return route


def redacted_config(cfg: GatewayConfig) -> dict:
    data = msgspec.to_builtins(cfg)
    _scrub_policies(data.get("policies"))
    for route in data.get("routes") or ():
        redacted_route(route)
    admin = data.get("admin")
    if admin and admin.get("token") is not None:
        admin["token"] = REDACTED
    redis = data.get("redis")
    if redis and redis.get("url"):
        from fastgw.ratelimit_cluster import redacted_url
        redis["url"] = redacted_url(redis["url"])
    return data
