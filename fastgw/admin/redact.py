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
        if policy.get("type") == "jwt":            # inline HMAC secrets (files and env names are not secret)
            for issuer in policy.get("issuers") or ():
                for key in issuer.get("keys") or ():
                    if key.get("secret") is not None:
                        key["secret"] = REDACTED
                    if isinstance(key.get("jwk"), dict) and "k" in key["jwk"]:
                        key["jwk"] = {**key["jwk"], "k": REDACTED}


def redacted_route(route: dict) -> dict:
    _scrub_policies(route.get("policies"))
    return route


def _scrub_consumers(consumers: list | None) -> None:
    """Inline API keys and password hashes hidden; `{env:}` / `{file:}` references shown (they
    name where a secret is, not what it is)."""
    for consumer in consumers or ():
        creds = consumer.get("credentials") or {}
        creds["api_keys"] = [k if isinstance(k, dict) else REDACTED for k in creds.get("api_keys") or ()]
        basic = creds.get("basic_auth")
        if basic and isinstance(basic.get("password_hash"), str):
            basic["password_hash"] = REDACTED


def redacted_config(cfg: GatewayConfig) -> dict:
    data = msgspec.to_builtins(cfg)
    _scrub_policies(data.get("policies"))
    _scrub_consumers(data.get("consumers"))
    for route in data.get("routes") or ():
        redacted_route(route)
    admin = data.get("admin")
    if admin and admin.get("token") is not None:
        admin["token"] = REDACTED
    _redact_tls_keys(data)
    redis = data.get("redis")
    if redis and redis.get("url"):
        from fastgw.ratelimit_cluster import redacted_url
        redis["url"] = redacted_url(redis["url"])
    if redis and redis.get("sentinel_password") is not None:
        redis["sentinel_password"] = REDACTED
    return data


def _redact_tls_keys(data: dict) -> None:
    """Inline private keys of TLS listeners and upstreams (docs/tls.md)."""
    for listener in data.get("listeners") or ():
        for c in ((listener.get("tls") or {}).get("certificates")) or ():
            if c.get("key_pem") is not None:
                c["key_pem"] = REDACTED
    for up in (data.get("upstreams") or {}).values():
        tls = up.get("tls") or {}
        if tls.get("key_pem") is not None:
            tls["key_pem"] = REDACTED
