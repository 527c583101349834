"""Process model: a supervisor and N worker processes that share each listener port with
SO_REUSEPORT.

The supervisor binds one placeholder socket per listener (never listening) to resolve port 0 and to
hold the port while workers come and go; each worker binds its own listening socket to that port.
SIGHUP: the supervisor validates the config and, if it is valid, passes SIGHUP on; each worker then
builds a new Runtime off the request path and swaps it in. SIGTERM/SIGINT: workers stop accepting,
drain, and exit; then the supervisor exits 0. A worker that dies is restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from .config import ConfigError, GatewayConfig, load_config

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def log(message: str) -> None:
    sys.stderr.write(f"fastgw: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class BoundListener:
    family: int
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"http://{host}:{self.port}"


def _reuseport_socket(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


def bind_placeholders(cfg: GatewayConfig) -> tuple[list[socket.socket], dict[str, BoundListener]]:
    """One socket per distinct listener address (listeners that differ only by hostname share it)."""
    socks, bound = [], {}
    for listener in cfg.listeners:
        if listener.address in bound:
            continue
        infos = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = _reuseport_socket(family, addr[0], addr[1])
        socks.append(sock)
        bound[listener.address] = BoundListener(family, addr[0], sock.getsockname()[1])
    return socks, bound


class Supervisor:
    def __init__(self, config_path: str, cfg: GatewayConfig, workers: int):
        self.config_path = config_path
        self.cfg = cfg
        self.nworkers = workers
        self.children: dict[int, int] = {}   # pid -> worker index
        self.stopping = False

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self.placeholders, self.bound = bind_placeholders(self.cfg)
        except OSError as exc:
            log(f"cannot bind listener: {exc}")
            return 1
        ready_r, ready_w = os.pipe()
        for index in range(self.nworkers):
            self._spawn(index, ready_w)
        if not self._wait_ready(ready_r, self.nworkers):
            log("workers did not start")
            self._stop_children(signal.SIGKILL)
            return 1
        # the pipe stays open: a restarted worker reports ready on it too
        self.ready_r, self.ready_w = ready_r, ready_w
        for b in self.bound.values():
            log(f"listening on {b.url}")
        return self._loop()

    def _spawn(self, index: int, ready_w: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
                for s in self.placeholders:
                    s.close()
                code = run_worker(self.config_path, self.cfg, self.bound, ready_w)
            except BaseException as exc:  # a worker must never unwind into the supervisor's code
                log(f"worker {index} failed: {exc!r}")
            finally:
                os._exit(code)
        self.children[pid] = index
        log(f"worker {index} started (pid {pid})")

    @staticmethod
    def _wait_ready(fd: int, count: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        got = 0
        os.set_blocking(fd, False)
        while got < count and time.monotonic() < deadline:
            try:
                got += len(os.read(fd, count - got))
            except BlockingIOError:
                time.sleep(0.01)
        return got >= count

    def _loop(self) -> int:
        stop_deadline = None
        while True:
            info = signal.sigtimedwait(HANDLED_SIGNALS, 0.5)
            if info is not None:
                if info.si_signo == signal.SIGHUP and not self.stopping:
                    self._reload()
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    self.stopping = True
                    stop_deadline = time.monotonic() + self.cfg.server.drain_timeout + 5
                    self._stop_children(signal.SIGTERM)
            self._reap()
            self._drain_ready()
            if self.stopping:
                if not self.children:
                    log("stopped")
                    return 0
                if time.monotonic() > stop_deadline:
                    self._stop_children(signal.SIGKILL)

    def _drain_ready(self) -> None:
        try:
            while os.read(self.ready_r, 64):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            log(f"worker {index} (pid {pid}) exited with status {os.waitstatus_to_exitcode(status)}; restarting")
            self._spawn(index, self.ready_w)

    def _reload(self) -> None:
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            log(f"reload refused, keeping the running config:\n{exc}")
            return
        if {lst.address for lst in cfg.listeners} != set(self.bound):
            log("listener address changes take effect on restart; routes and upstreams are reloaded now")
        self.cfg = cfg
        for pid in self.children:
            os.kill(pid, signal.SIGHUP)

    def _stop_children(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def run_worker(config_path: str, cfg: GatewayConfig, bound: dict[str, BoundListener], ready_w: int) -> int:
    import uvloop

    from . import _core
    from .runtime import compile_runtime, retired_targets

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _core.Worker(loop, compile_runtime(cfg))
    servers = []
    for address, b in bound.items():
        sock = _reuseport_socket(b.family, b.host, b.port)
        servers.append(loop.run_until_complete(
            loop.create_server(worker.protocol_factory(address), sock=sock, backlog=4096)))
    worker.start()
    done = loop.create_future()

    def reload() -> None:
        try:
            new_cfg = load_config(config_path)
        except ConfigError as exc:
            log(f"reload refused, keeping the running config:\n{exc}")
            return
        old = worker.runtime
        worker.swap_runtime(compile_runtime(new_cfg, old))
        for target in retired_targets(old, worker.runtime):
            target.retire()
        log(f"worker {os.getpid()}: configuration reloaded")

    async def drain() -> None:
        for server in servers:
            server.close()
        worker.begin_drain()
        deadline = loop.time() + worker.runtime.drain_timeout
        while worker.active_clients() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        worker.close_all()
        if not done.done():
            done.set_result(None)

    def on_term() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.create_task(drain())

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the supervisor turns Ctrl-C into SIGTERM
    os.write(ready_w, b"r")
    loop.run_until_complete(done)
    worker.stop()
    loop.run_until_complete(asyncio.sleep(0))
    return 0


def run(config_path: str, workers: int = 1) -> int:
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log(f"invalid configuration:\n{exc}")
        return 1
    return Supervisor(config_path, cfg, workers).run()
