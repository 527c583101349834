"""Process model: a supervisor and N worker processes that share each listener port with
SO_REUSEPORT.

The supervisor binds one placeholder socket per listener (never listening) to resolve port 0 and to
hold the port while workers come and go; each worker binds its own listening socket to that port.
An address that something else already listens on is refused unless `--reuse-port` asks to share it
(a zero-downtime upgrade: the new instance starts beside the old one, then the old one is stopped).
SIGHUP: the supervisor validates the config and, if it is valid, passes SIGHUP on to the workers that
have reported ready (a worker still starting gets it once ready); each worker then builds a new
Runtime off the request path and swaps it in. SIGTERM/SIGINT: workers stop accepting, drain, and
exit; then the supervisor exits 0. A worker that dies is restarted.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass

from . import events
from .config import ConfigError, GatewayConfig
from .sources import load_config

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1)
# A worker keeps these blocked from the fork until its loop runs with its handlers installed: their
# default action would kill it mid-start and reset the connections already queued on its socket.
WORKER_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# A worker's ready report is its pid in one write, smaller than PIPE_BUF so that reports from workers
# starting together never interleave.
READY_RECORD = struct.Struct("=I")


def log(message: str, event: str = "message", level: str = "info", **fields) -> None:
    events.emit(level, event, msg=message, **fields)


def _errors(exc: ConfigError) -> list[str]:
    return [str(issue) for issue in exc.errors]


def _summary(cfg: GatewayConfig) -> dict:
    return {"listeners": len(cfg.listeners), "routes": len(cfg.routes), "upstreams": len(cfg.upstreams),
            "policies": len(cfg.policies)}


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


def _served_elsewhere(family: int, host: str, port: int) -> bool:
    """Whether some socket already listens on (host, port), our own placeholders aside.

    SO_REUSEPORT would let a bind succeed beside another fastgw's listeners, so the probe goes
    without it: Linux then refuses the bind if any socket listens on the address (or a wildcard
    overlapping it). SO_REUSEADDR stays on so that neither our placeholder (bound, never listening)
    nor connections of a previous run lingering in TIME_WAIT count as a listener."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return True
        raise
    finally:
        probe.close()
    return False


class AddressInUse(Exception):
    def __init__(self, address: str, reuse_port: bool):
        if reuse_port:
            message = (f"{address} is already in use by a socket that does not share its port "
                       f"(SO_REUSEPORT, same user), so --reuse-port cannot join it")
        else:
            message = (f"{address} is already in use (another fastgw or another server is listening "
                       f"there); pass --reuse-port to share it for a zero-downtime upgrade")
        super().__init__(message)


def bind_placeholders(cfg: GatewayConfig, reuse_port: bool = False
                      ) -> tuple[list[socket.socket], dict[str, BoundListener]]:
    """One socket per distinct listener address (listeners that differ only by hostname share it).

    Raises AddressInUse when another socket listens on an address, unless reuse_port."""
    socks, bound = [], {}
    try:
        for listener in cfg.listeners:
            if listener.address in bound:
                continue
            infos = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            try:
                sock = _reuseport_socket(family, addr[0], addr[1])
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(listener.address, reuse_port) from None
                raise
            socks.append(sock)
            port = sock.getsockname()[1]
            # a port 0 the kernel just picked is free; our own placeholder does not trip the probe
            if not reuse_port and listener.port != 0 and _served_elsewhere(family, addr[0], port):
                raise AddressInUse(listener.address, reuse_port)
            bound[listener.address] = BoundListener(family, addr[0], port)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, bound


@dataclass
class Child:
    index: int
    ready: bool = False
    # a reload was validated after this worker forked with the config before it
    reload_pending: bool = False


class Supervisor:
    def __init__(self, config_path: str, cfg: GatewayConfig, workers: int, reuse_port: bool = False):
        self.config_path = config_path
        self.cfg = cfg
        self.nworkers = workers
        self.reuse_port = reuse_port
        self.children: dict[int, Child] = {}   # by pid
        self.stopping = False
        self._ready_buf = b""

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self.placeholders, self.bound = bind_placeholders(self.cfg, self.reuse_port)
        except AddressInUse as exc:
            log(str(exc), "listener_failed", "error")
            return 1
        except OSError as exc:
            log(f"cannot bind listener: {exc}", "listener_failed", "error")
            return 1
        # the pipe stays open: a restarted worker reports ready on it too
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        for index in range(self.nworkers):
            self._spawn(index)
        if not self._wait_ready():
            self._stop_children(signal.SIGKILL)
            return 1
        for b in self.bound.values():
            log(f"listening on {b.url}", "listening", url=b.url)
        return self._loop()

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # WORKER_SIGNALS stay blocked: run_worker unblocks them once it can handle them
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                for s in self.placeholders:
                    s.close()
                os.close(self.ready_r)
                code = run_worker(self.config_path, self.cfg, self.bound, self.ready_w)
            except BaseException as exc:  # a worker must never unwind into the supervisor's code
                events.flush_sink()
                log(f"worker {index} failed: {exc!r}", "worker_failed", "error", worker=index)
            finally:
                os._exit(code)
        self.children[pid] = Child(index)
        log(f"worker {index} started (pid {pid})", "worker_started", worker=index, worker_pid=pid)

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        """The first workers: all ready, or False once one of them exits or the timeout passes."""
        deadline = time.monotonic() + timeout
        while not all(c.ready for c in self.children.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                log("workers did not start", "workers_not_started", "error")
                return False
            select.select([self.ready_r], [], [], min(left, 0.5))
            self._drain_ready()
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                child = self.children.pop(pid, None)
                name = f"worker {child.index}" if child else "a worker"
                code = os.waitstatus_to_exitcode(status)
                log(f"{name} (pid {pid}) exited with status {code} before it was ready; workers did not start",
                    "worker_exited", "error", worker_pid=pid, status=code)
                return False
        return True

    def _loop(self) -> int:
        stop_deadline = None
        while True:
            # a short wait while a worker starts: its ready report (and any reload queued for it)
            # arrives on the pipe, which sigtimedwait does not watch
            starting = any(not c.ready for c in self.children.values())
            info = signal.sigtimedwait(HANDLED_SIGNALS, 0.02 if starting else 0.5)
            if info is not None:
                if info.si_signo == signal.SIGHUP and not self.stopping:
                    self._reload()
                elif info.si_signo == signal.SIGUSR1:
                    # logrotate: every process reopens its log files by name
                    events.reopen()
                    for pid in list(self.children):
                        self._signal(pid, signal.SIGUSR1)
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    self.stopping = True
                    stop_deadline = time.monotonic() + self.cfg.server.drain_timeout + 5
                    self._stop_children(signal.SIGTERM)
            self._reap()
            self._drain_ready()
            if self.stopping:
                if not self.children:
                    log("stopped", "stopped")
                    return 0
                if time.monotonic() > stop_deadline:
                    self._stop_children(signal.SIGKILL)

    def _drain_ready(self) -> None:
        try:
            while chunk := os.read(self.ready_r, 4096):
                self._ready_buf += chunk
        except BlockingIOError:
            pass
        size = READY_RECORD.size
        whole = len(self._ready_buf) - len(self._ready_buf) % size
        records, self._ready_buf = self._ready_buf[:whole], self._ready_buf[whole:]
        for (pid,) in READY_RECORD.iter_unpack(records):
            child = self.children.get(pid)
            if child is None:   # exited (and was reaped) right after reporting
                continue
            child.ready = True
            if child.reload_pending and not self.stopping:
                child.reload_pending = False
                self._signal(pid, signal.SIGHUP)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log(f"worker {child.index} (pid {pid}) exited with status {code}; restarting", "worker_exited", "error",
                worker=child.index, worker_pid=pid, status=code, respawn=True)
            self._spawn(child.index)

    def _reload(self) -> None:
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            log("reload refused, keeping the running config", "reload_rejected", "error", source="SIGHUP",
                errors=_errors(exc))
            return
        events.configure(cfg.logging)
        summary = _summary(cfg)
        log(f"configuration accepted: {summary['routes']} routes, {summary['upstreams']} upstreams",
            "reload_accepted", source="SIGHUP", **summary)
        if {lst.address for lst in cfg.listeners} != set(self.bound):
            log("listener address changes take effect on restart; routes and upstreams are reloaded now",
                "listeners_changed", "warning")
        # workers forked from here on start with cfg; those already forked need the SIGHUP, and
        # one still starting gets it once ready rather than before its handler exists
        self.cfg = cfg
        for pid, child in self.children.items():
            if child.ready:
                self._signal(pid, signal.SIGHUP)
            else:
                child.reload_pending = True

    def _stop_children(self, sig: int) -> None:
        for pid in list(self.children):
            self._signal(pid, sig)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_worker(config_path: str, cfg: GatewayConfig, bound: dict[str, BoundListener], ready_w: int) -> int:
    import uvloop

    from . import _core, accesslog
    from .runtime import compile_runtime, retired_targets
    from .tracing import TraceExport

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    events.open_worker_sink(loop)
    worker = _core.Worker(loop, compile_runtime(cfg))
    accesslog.apply(worker, loop, cfg)
    traces = TraceExport(worker, loop)
    traces.configure(cfg.tracing)
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
            log("reload refused, keeping the running config", "reload_rejected", "error", source="SIGHUP",
                errors=_errors(exc))
            return
        old = worker.runtime
        try:
            accesslog.check_sink(new_cfg)
            new = compile_runtime(new_cfg, old)
        except Exception as exc:  # a plugin's constructor, say: the old config keeps serving
            log("reload refused, keeping the running config", "reload_rejected", "error", source="SIGHUP",
                errors=[f"{type(exc).__name__}: {exc}"])
            return
        events.configure(new_cfg.logging)
        accesslog.apply(worker, loop, new_cfg)
        worker.swap_runtime(new)
        traces.configure(new_cfg.tracing)
        for target in retired_targets(old, worker.runtime):
            target.retire()
        log(f"worker {os.getpid()}: configuration reloaded", "reload_applied", **_summary(new_cfg))

    async def drain() -> None:
        for server in servers:
            server.close()
        worker.begin_drain()
        deadline = loop.time() + worker.runtime.drain_timeout
        while worker.active_clients() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        worker.close_all()
        await traces.close(timeout=max(0.5, min(5.0, deadline - loop.time())))
        if not done.done():
            done.set_result(None)

    def on_term() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.create_task(drain())

    def reopen_logs() -> None:
        if worker.access_log is not None:
            worker.access_log.reopen()
        events.reopen()

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the supervisor turns Ctrl-C into SIGTERM

    def ready() -> None:
        # Unblocked only once the loop runs: uvloop wakes up for a signal only while it runs, so one
        # held pending since the fork and delivered outside run_* would be recorded but never handled.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        try:
            os.write(ready_w, READY_RECORD.pack(os.getpid()))
        except OSError as exc:   # no supervisor to serve under
            done.set_exception(exc)

    loop.call_soon(ready)
    loop.run_until_complete(done)
    worker.stop()
    loop.run_until_complete(asyncio.sleep(0))
    if worker.access_log is not None:
        worker.access_log.close()
    events.flush_sink()
    return 0


def run(config_path: str, workers: int = 1, reuse_port: bool = False) -> int:
    """reuse_port: share listener addresses that another fastgw (same user) already serves."""
    # held from the start (the supervisor waits for them with sigtimedwait), so that a SIGHUP sent
    # while the config loads does not kill the supervisor
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log("invalid configuration", "config_invalid", "error", errors=_errors(exc))
        return 1
    events.configure(cfg.logging)
    return Supervisor(config_path, cfg, workers, reuse_port).run()
