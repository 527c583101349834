"""The `external_auth` policy's config (docs/auth-jwt.md)."""

from __future__ import annotations

from .policies import PolicyBase
from .positions import Token

__all__ = ["ExternalAuthPolicy", "check_external_auth"]


class ExternalAuthPolicy(PolicyBase, tag="external_auth", kw_only=True):
    """Forward auth: an auth service decides."""


def check_external_auth(policy: ExternalAuthPolicy, path: list[Token], out: list) -> None:
    pass
