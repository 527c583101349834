"""A gateway worker in the test process: a real fastgw._core.Worker on a real uvloop loop (in a
thread), listening on real sockets, for tests that need to look inside a worker (its metrics
snapshot, a reload by swap_runtime) while real clients and upstreams talk to it. What a worker
object is asked always runs on its loop's thread, as in a worker process."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading

import uvloop

from fastgw import _core
from fastgw.config import loads_config
from fastgw.runtime import compile_runtime, retired_targets

CALL_TIMEOUT = 10.0


class InProcessWorker:
    def __init__(self, config: dict):
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fastgw-worker", daemon=True)
        self.servers = []
        self.port = 0

    def call(self, fn, *args):
        """fn(*args) on the worker's loop; its result here."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(CALL_TIMEOUT)

    def start(self) -> InProcessWorker:
        self.thread.start()
        runtime = self.call(compile_runtime, loads_config(json.dumps(self.config), "json"))
        self.worker = self.call(_core.Worker, self.loop, runtime)
        self.call(self.worker.start)
        (address,) = {lst["address"] for lst in self.config["listeners"]}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(
            lambda: self.loop.create_task(self.loop.create_server(self.worker.protocol_factory(address), sock=sock))
            .add_done_callback(lambda t: server.set_result(t.result())))
        self.servers.append(server.result(CALL_TIMEOUT))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reload(self, config: dict) -> None:
        """What a worker does on SIGHUP: compile against the running runtime, swap, retire targets."""
        cfg = loads_config(json.dumps(config), "json")

        def swap():
            old = self.worker.runtime
            self.worker.swap_runtime(compile_runtime(cfg, old))
            for target in retired_targets(old, self.worker.runtime):
                target.retire()

        self.call(swap)

    def close(self) -> None:
        if self.thread.is_alive():
            def shut():
                for server in self.servers:
                    server.close()
                self.worker.stop()
                self.worker.close_all()

            self.call(shut)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CALL_TIMEOUT)
        self.loop.close()

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
