"""htpasswd files: `user:hash` lines, bcrypt (`htpasswd -B`) or argon2. Other hash kinds (MD5-apr1,
SHA-1, crypt) are refused: they are not safe to keep passwords in."""

from __future__ import annotations

from ..config.auth import hash_kind

__all__ = ["read_htpasswd"]


def read_htpasswd(path: str) -> dict[str, str]:
    """{user: hash}. ValueError naming the file and line, never a hash."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read htpasswd file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"htpasswd file {path} is not UTF-8") from None
    users: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, h = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{n}: not a `user:hash` line")
        if hash_kind(h) is None:
            raise ValueError(f"{path}:{n}: user {user!r} has a hash that is neither bcrypt nor argon2")
        if user in users:
            raise ValueError(f"{path}:{n}: user {user!r} appears twice")
        users[user] = h
    return users
