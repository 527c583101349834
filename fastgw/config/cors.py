"""The `cors` policy's config (docs/cors.md)."""

from __future__ import annotations

from .policies import PolicyBase
from .positions import Token

__all__ = ["CorsPolicy", "check_cors"]


class CorsPolicy(PolicyBase, tag="cors", kw_only=True):
    """Cross-origin resource sharing, answered at the gateway."""


def check_cors(policy: CorsPolicy, path: list[Token], out: list) -> None:
    pass
