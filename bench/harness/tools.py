"""Finding (and when missing, installing) the external programs the harness drives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

#: program -> Debian package that ships it.
DEBIAN_PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "httperf": "httperf",
    "taskset": "util-linux",
}

_apt_updated = False


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def which(prog: str) -> str | None:
    found = shutil.which(prog)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        cand = os.path.join(d, prog)
        if os.access(cand, os.X_OK):
            return cand
    return None


def ensure(progs: list[str], install: bool = True) -> dict[str, str | None]:
    """Return {program: path or None}; installs missing ones with apt-get when root and `install`."""
    found = {p: which(p) for p in progs}
    missing = [p for p, path in found.items() if path is None]
    if missing and install:
        if os.geteuid() != 0 or not which("apt-get"):
            log(f"missing {', '.join(missing)}; not root or no apt-get, so not installing them")
        else:
            pkgs = sorted({DEBIAN_PACKAGES.get(p, p) for p in missing})
            log(f"missing {', '.join(missing)}: installing Debian packages {' '.join(pkgs)} with apt-get")
            global _apt_updated
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if not _apt_updated:
                subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
                _apt_updated = True
            # One package at a time, so that one that cannot be had does not block the others.
            for pkg in pkgs:
                r = subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    check=False,
                )
                if r.returncode != 0:
                    log(f"apt-get install {pkg} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
            found = {p: which(p) for p in progs}
    return found


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    out = (r.stdout + r.stderr).strip().splitlines()
    out = [line for line in out if line and not line.startswith("httperf: warning")]
    return out[0].strip() if out else "unknown"


def version(prog: str, path: str) -> str:
    if prog == "wrk":
        line = _first_line([path, "--version"])
        m = re.search(r"wrk\s+(\S+)", line)
        return m.group(1) if m else line
    if prog == "nginx":
        line = _first_line([path, "-v"])
        return line.split("/", 1)[-1]
    if prog == "haproxy":
        line = _first_line([path, "-v"])
        m = re.search(r"version\s+(\S+)", line)
        return m.group(1) if m else line
    if prog == "httperf":
        # `httperf --version` also opens a connection to localhost:80; ask the package manager instead.
        line = _first_line(["dpkg-query", "-W", "-f", "${Version}", "httperf"])
        return line
    return _first_line([path, "--version"])
