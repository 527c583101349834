"""Talking to a running gateway's Admin API with httpx, a real HTTP client."""

from __future__ import annotations

import re

import httpx

from .client import wait_until

ADMIN_RE = re.compile(r"admin API listening on (http://[^\s\"]+)")


def admin_url(gw) -> str:
    """The admin listener's URL, from the line the supervisor prints before it forks workers."""
    m = wait_until(lambda: ADMIN_RE.search(gw.stderr), what="the admin listener line")
    return m.group(1)


def with_admin(config: dict, **admin) -> dict:
    """config with an `admin:` section on a free loopback port (plus `admin` settings)."""
    return {**config, "admin": {"address": "127.0.0.1:0", **admin}}


def admin_client(gw, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=admin_url(gw), headers=headers, timeout=timeout)
