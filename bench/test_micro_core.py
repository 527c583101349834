"""Micro-benchmarks: request-head parsing and serialization, config load + compile of 10,000 routes.

Run alone: .venv/bin/python -m pytest bench/test_micro_core.py --benchmark-columns=mean,median,ops -q
(`pytest bench/` runs these and the router/balancer ones in bench/test_micro_router.py).
"""

from __future__ import annotations

import json
import os

import pytest

from fastgw import _core

# The bench entry points (fastgw/_cy/testing.pyx) are in a core built with FASTGW_TESTING=1, as `make build`
# does; a wheel's core has none. Without them these benchmarks skip, except under CI (env CI set).
needs_entry_points = pytest.mark.skipif(
    not hasattr(_core, "parse_request") and not os.environ.get("CI"),
    reason="fastgw._core was built without FASTGW_TESTING=1 (no test and bench entry points)")

# A realistic browser/API request head (about 700 bytes, 12 fields).
REQUEST_HEAD = (
    b"GET /api/v2/orders/8812734/items?limit=20&page=2&sort=-created HTTP/1.1\r\n"
    b"Host: t3.api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N\r\n"
    b"Cookie: session=3b1f0c0e9a7e4d2c8f6b5a4e3d2c1b0a; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n"
    b"Referer: https://app.example.com/orders/8812734\r\n"
    b"X-Request-Id: 9f1c2a7e-5b3d-4e8f-a1b2-c3d4e5f6a7b8\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\n"
    b"\r\n"
)


@needs_entry_points
def test_parse_request_head(benchmark):
    """Request-head parsing (strict HTTP/1.1), including building the Python dict of the result:
    an upper bound of the parse cost the proxy pays in C."""
    parse = _core.parse_request
    result = benchmark(parse, REQUEST_HEAD)
    assert result["head_length"] == len(REQUEST_HEAD)


@needs_entry_points
def test_serialize_request_head(benchmark):
    """Parse a client head and build the upstream head from it (`_build_upstream_head`)."""
    build = _core.build_upstream_head
    out = benchmark(build, REQUEST_HEAD, b"127.0.0.1", b"9f1c2a7e-5b3d-4e8f-a1b2-c3d4e5f6a7b8")
    assert out.startswith(b"GET /api/v2/orders/") and out.endswith(b"\r\n\r\n")


# --------------------------------------------------------------------------------------- config compile

ROUTES = 10_000
RESOURCES = [
    "users",
    "orders",
    "carts",
    "products",
    "invoices",
    "payments",
    "shipments",
    "reviews",
    "search",
    "media",
]


def _config_dict(n: int = ROUTES) -> dict:
    routes = []
    for i in range(n):
        match: dict = {"path": {"prefix": f"/api/v{1 + i % 3}/{RESOURCES[i % len(RESOURCES)]}/{i}/"}}
        if i % 4:
            match["hosts"] = [f"t{i % 50}.api.example.com"]
        if i % 10 == 0:
            match["path"] = {"exact": f"/svc{i}/health"}
        routes.append({"name": f"r{i}", "match": match, "upstream": f"u{i % 20}"})
    return {
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {
            f"u{k}": {
                "targets": [{"address": f"10.0.{k}.{j}:8080"} for j in range(1, 4)],
                "keepalive": {"max_idle": 64, "idle_timeout": "60s"},
            }
            for k in range(20)
        },
        "routes": routes,
    }


@pytest.fixture(scope="module")
def config_text():
    return json.dumps(_config_dict())


def _load(text):
    from fastgw.config.loader import loads_config

    return loads_config(text, "json")


def test_config_load_10k_routes(benchmark, config_text):
    """Parse + validate a 10,000-route JSON config (msgspec decode, cross-checks)."""
    benchmark.pedantic(_load, args=(config_text,), rounds=5, iterations=1, warmup_rounds=1)


def test_config_compile_10k_routes(benchmark, config_text):
    """Compile a validated 10,000-route config into a Runtime (router build, upstream groups)."""
    from fastgw.runtime import compile_runtime

    cfg = _load(config_text)
    rt = benchmark.pedantic(compile_runtime, args=(cfg,), rounds=5, iterations=1, warmup_rounds=1)
    assert rt is not None
