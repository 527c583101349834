"""The admin listener's live dashboard: one self-contained page (no CDN, no build step), read from
the installed package so that what users `pip install` is what the admin listener serves."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def page() -> bytes:
    return files(__name__).joinpath("dashboard.html").read_bytes()
