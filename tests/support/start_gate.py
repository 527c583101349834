"""A plugin whose constructor holds a worker's start until a file exists (PYTHONPATH: tests/), so
that a test can look at the gateway while its workers are not ready yet, without racing a clock."""

from __future__ import annotations

import os
import time

import msgspec


class StartGate:
    class Config(msgspec.Struct):
        path: str
        limit: float = 60.0   # a hang guard: a test that never opens the gate still ends

    def __init__(self, config: Config):
        deadline = time.monotonic() + config.limit
        while not os.path.exists(config.path) and time.monotonic() < deadline:
            time.sleep(0.01)

    def on_request(self, e) -> None:
        return None
