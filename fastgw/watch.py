"""Watching the config for change: what the kubelet does to a mounted ConfigMap or Secret (an atomic
swap of its `..data` link, every key's file changing at once) and what an editor or `cp` does to a
file (written in steps) both end in a reload, without SIGHUP.

The files are read, not stat'ed: a digest of their names and contents is what is compared, so a
touch without change reloads nothing, and mtime granularity cannot hide a change. A change is applied
once two reads in a row agree, so a file caught half-written is not loaded. The reads are done on
the supervisor's loop, not in a thread: config files are small, and the supervisor forks workers,
which a thread it ran would make unsafe.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

__all__ = ["config_digest", "referenced_files", "watch_config"]

#: Config fields that name a file the config is read with: certificates and keys (a mounted
#: kubernetes.io/tls Secret), CA bundles, htpasswd files, JWT key files, secrets given as {file:},
#: the admin token file. A change of one is a change of the config.
FILE_FIELDS = frozenset(("cert", "key", "ca_file", "pem_file", "htpasswd", "file", "token_file", "secret_file",
                         "key_file"))


def referenced_files(cfg) -> list[str]:
    """The files `cfg` names in FILE_FIELDS, anywhere in it, in order and without repeats."""
    import msgspec

    out: dict[str, None] = {}

    def walk(value, field: str | None = None) -> None:
        if isinstance(value, msgspec.Struct):
            for name in value.__struct_fields__:
                walk(getattr(value, name), name)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, k if isinstance(k, str) else None)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, field)
        elif isinstance(value, str) and field in FILE_FIELDS and value:
            out.setdefault(value, None)

    walk(cfg)
    return list(out)


def config_digest(path: str, extra: list[str] = ()) -> bytes:
    """The digest of what loading `path` would read: a file's bytes, or a directory's config files'
    names and bytes, and the bytes of the `extra` files the config names (certificates ...). A file
    that cannot be read counts as its error (a later read that works is a change)."""
    from .sourcedir import config_files

    h = hashlib.sha256()
    try:
        files = config_files(path) if os.path.isdir(path) else [path]
    except Exception as exc:     # the directory itself gone: a state of its own
        return hashlib.sha256(repr(exc).encode()).digest()
    for file in [*files, *extra]:
        h.update(os.path.basename(file).encode() + b"\0")
        try:
            with open(file, "rb") as f:
                h.update(f.read())
        except OSError as exc:
            h.update(f"<{exc.errno}>".encode())
        h.update(b"\0")
    return h.digest()


async def watch_config(path: str, interval: Callable[[], float], changed: Callable[[], None],
                       stopped: Callable[[], bool], files: Callable[[], list[str]] = list) -> None:
    """Calls `changed()` each time the config at `path`, or a file the running config names
    (`files()`: certificates, keys ...), reads differently from the last time it was applied (or
    refused). `interval()` and `files()` are read every round, so a reload can change them."""
    seen = config_digest(path, files())
    while not stopped():
        await asyncio.sleep(interval())
        now = config_digest(path, files())
        if now == seen:
            continue
        while True:
            await asyncio.sleep(min(interval(), 0.25))
            again = config_digest(path, files())
            if again == now:
                break
            now = again
        seen = now
        if not stopped():
            changed()
