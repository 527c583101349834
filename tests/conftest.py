"""Shared fixtures: real upstream servers and gateway processes (see tests/support/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.gateway import Gateway, simple_config  # noqa: E402
from support.upstreams import EchoServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running end-to-end test (still part of CI; never skipped)")


@pytest.fixture(scope="module")
def echo():
    """A module-wide echo upstream; tests compare snapshots rather than absolute counts."""
    with EchoServer("echo") as srv:
        yield srv


@pytest.fixture(scope="module")
def module_gateway_factory(tmp_path_factory):
    """make(config, workers=None) -> started Gateway, stopped at the end of the module."""
    started: list[Gateway] = []

    def make(config: dict, workers: int | None = None, **kw) -> Gateway:
        gw = Gateway(config, tmp_path_factory.mktemp("gw"), workers=workers, **kw)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.close()


@pytest.fixture
def gateway_factory(tmp_path):
    """Like module_gateway_factory, for tests that change or stop their own gateway."""
    started: list[Gateway] = []

    def make(config: dict, workers: int | None = None, **kw) -> Gateway:
        gw = Gateway(config, tmp_path / f"gw{len(started)}", workers=workers, **kw)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.close()


@pytest.fixture(scope="module")
def gateway(echo, module_gateway_factory):
    """The module's default gateway: one catch-all route to `echo`, short upstream timeouts."""
    return module_gateway_factory(simple_config(
        echo.address, timeouts={"connect": "2s", "response_header": "5s", "body_idle": "5s"}))
