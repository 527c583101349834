"""The `admin:` section: where the Admin API listens and the bearer token it asks for.

No `admin:` section, no admin listener (as Envoy); `admin: {}` listens on the default address.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated

from msgspec import Meta

from .base import Base
from .positions import Token
from .values import parse_address

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["DEFAULT_ADMIN_ADDRESS", "Admin", "check_admin", "is_loopback", "read_token_file"]

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"


class Admin(Base, kw_only=True):
    """The Admin API listener (docs/admin.md): health, readiness, metrics, config, stats."""

    address: Annotated[str, Meta(min_length=1)] = DEFAULT_ADMIN_ADDRESS
    """host:port; port 0 picks a free port. Off the public listeners."""
    token: Annotated[str, Meta(min_length=16)] | None = None
    """Bearer token every request must carry (`Authorization: Bearer <token>`); required when the
    address is not loopback."""
    token_file: str | None = None
    """A file holding the token (surrounding whitespace ignored), instead of `token`."""

    @property
    def host(self) -> str:
        return parse_address(self.address, allow_port_zero=True)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address, allow_port_zero=True)[1]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`; a hostname other than localhost may resolve to
    anything, so it counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: str) -> str:
    """The token a token file holds; ValueError with a message fit for a config error."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read token file {path!r}: {getattr(e, 'strerror', None) or e}") from None
    if len(token) < 16:
        raise ValueError(f"token file {path!r} holds {len(token)} characters; a token needs at least 16")
    return token


def check_admin(cfg: GatewayConfig, out: list[tuple[list[Token], str]]) -> None:
    admin = cfg.admin
    if admin is None:
        return
    try:
        host, _ = parse_address(admin.address, allow_port_zero=True)
    except ValueError as e:
        out.append((["admin", "address"], str(e)))
        return
    if admin.token is not None and admin.token_file is not None:
        out.append((["admin", "token_file"], "give 'token' or 'token_file', not both"))
    elif admin.token_file is not None:
        try:
            read_token_file(admin.token_file)
        except ValueError as e:
            out.append((["admin", "token_file"], str(e)))
    elif admin.token is None and not is_loopback(host):
        out.append((["admin", "token"], f"a token (or token_file) is required: {admin.address} is not a "
                                        f"loopback address, so anyone who reaches it could change the config"))
