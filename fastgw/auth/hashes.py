"""Password hash checks for basic_auth, run on a worker thread (bcrypt and argon2 release the GIL)."""

from __future__ import annotations

import argon2
import bcrypt

__all__ = ["verify_password"]

_argon2 = argon2.PasswordHasher()
# What an unknown user's password is checked against, so that answer takes as long as a wrong
# password for a user who exists.
_DUMMY = bcrypt.hashpw(b"fastgw-no-such-user", bcrypt.gensalt(rounds=10))


def verify_password(hashed: bytes | None, password: bytes) -> bool:
    if hashed is None:
        bcrypt.checkpw(password, _DUMMY)
        return False
    if hashed.startswith(b"$argon2"):
        try:
            return _argon2.verify(hashed, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    if hashed.startswith(b"$2y$"):         # PHP's and htpasswd's name for $2b$
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False
