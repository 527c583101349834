"""The core's test and bench entry points (fastgw/_cy/testing.pyx): `parse_request`, `decode_chunked`,
`build_upstream_head`, `normalize_request_path`, `route_raw_head`, `bench_match`, `bench_match_request`,
`bench_pick`, `access_log_escape` and `HTTPParseError`.

They are compiled into fastgw._core only when it is built with FASTGW_TESTING=1 (setup.py), as `make build`
does; a wheel has none. Import them from here: with a core built without them, each of these names is a
stand-in that skips the test calling it, with the reason, and under CI (env CI set) importing this module
fails instead, so CI never skips them.
"""

from __future__ import annotations

import os

import pytest

from fastgw import _core

NAMES = ("HTTPParseError", "parse_request", "decode_chunked", "build_upstream_head", "normalize_request_path",
         "route_raw_head", "bench_match", "bench_match_request", "bench_pick", "access_log_escape")
MISSING = [n for n in NAMES if not hasattr(_core, n)]
AVAILABLE = not MISSING
REASON = ("fastgw._core was built without its test entry points (FASTGW_TESTING=1, as `make build` sets): "
          "missing " + ", ".join(MISSING))

if not AVAILABLE and os.environ.get("CI"):
    raise ImportError(REASON + "; CI is set, where these tests must run")


def _skipper(name: str):
    def missing(*_args, **_kwargs):
        pytest.skip(REASON)
    missing.__name__ = name
    return missing


if AVAILABLE:
    from fastgw._core import (  # noqa: F401
        HTTPParseError,
        access_log_escape,
        bench_match,
        bench_match_request,
        bench_pick,
        build_upstream_head,
        decode_chunked,
        normalize_request_path,
        parse_request,
        route_raw_head,
    )
else:
    class HTTPParseError(ValueError):
        """Stand-in: never raised (the functions that raise it skip first)."""

    parse_request = _skipper("parse_request")
    decode_chunked = _skipper("decode_chunked")
    build_upstream_head = _skipper("build_upstream_head")
    normalize_request_path = _skipper("normalize_request_path")
    route_raw_head = _skipper("route_raw_head")
    bench_match = _skipper("bench_match")
    bench_match_request = _skipper("bench_match_request")
    bench_pick = _skipper("bench_pick")
    access_log_escape = _skipper("access_log_escape")
