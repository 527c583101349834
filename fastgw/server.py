"""Process model: a supervisor and N worker processes that share each listener port with
SO_REUSEPORT.

The supervisor binds one placeholder socket per listener (never listening) to resolve port 0 and to
hold the port while workers come and go; each worker binds its own listening socket to that port.
An address that something else already listens on is refused unless `--reuse-port` asks to share it
(a zero-downtime upgrade: the new instance starts beside the old one, then the old one is stopped).

The supervisor runs an asyncio loop (the standard library's; uvloop is the workers') that handles
its signals, its workers' ready reports and exits, and the Admin API listener (fastgw.admin). Each
worker gets a control channel at spawn (fastgw.control): the supervisor hands every new config to
the workers over it (`apply`), so all of them run the config the supervisor validated, and a worker
restarted later forks with that same config, whether it came from the file or the Admin API.
SIGHUP: the supervisor re-reads the file and, if it is valid, applies it (replacing a config applied
through the Admin API, which the reload record notes); a worker ignores a SIGHUP sent to it directly.
SIGTERM/SIGINT: readiness turns false; after `server.shutdown_delay` (a second signal skips the rest of
it) workers stop accepting, drain, and exit; then the supervisor exits 0. With `server.watch_config`
(default: on for a config directory) a change of the config's files reloads it as SIGHUP would. A worker that
dies is restarted; a worker whose supervisor is gone (its control channel closed) drains and exits.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import selectors
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import msgspec

from . import __version__, _core, events
from .config import ConfigError, ConfigIssue, GatewayConfig
from .config.admin import Admin, is_loopback, read_token_file
from .control import ControlClient, ControlError, ControlServer
from .reloads import ReloadLog
from .sources import load_config
from .watch import referenced_files, watch_config
from .worker_ops import WorkerOps, config_payload

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1)
# A worker keeps these blocked from the fork until its loop runs with its handlers installed: their
# default action would kill it mid-start and reset the connections already queued on its socket.
WORKER_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# A worker's ready report is its pid in one write, smaller than PIPE_BUF so that reports from workers
# starting together never interleave.
READY_RECORD = struct.Struct("=I")
STARTUP_TIMEOUT = 30.0
# Deadlines of control calls: an Admin API answer waits this long for a worker, then reports it missing.
QUERY_TIMEOUT = 2.0
# A config applied from the Admin API: building it (plugin constructors) may take a while.
APPLY_TIMEOUT = 5.0
# A SIGHUP reload answers nobody; the calls only must not pile up for a worker that never answers.
BACKGROUND_APPLY_TIMEOUT = 120.0


def log(message: str, event: str = "message", level: str = "info", **fields) -> None:
    events.emit(level, event, msg=message, **fields)


def _errors(exc: ConfigError) -> list[str]:
    return [str(issue) for issue in exc.errors]


@dataclass(frozen=True)
class BoundListener:
    family: int
    host: str
    port: int
    tls: bool = False           # the address terminates TLS (its listeners have `tls`)
    stream: str | None = None   # a stream listener's protocol (tcp, tls-passthrough, tls), else None

    @property
    def scheme(self) -> str:
        if self.stream is not None:
            return "tcp" if self.stream == "tcp" else "tls"
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{self.scheme}://{host}:{self.port}"


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
            sock = _bind_unless_served(listener.address, listener.host, listener.port, reuse_port)
            socks.append(sock)
            tls = any(lst.tls is not None for lst in cfg.listeners if lst.address == listener.address)
            stream = _stream_protocol(cfg, listener.address)
            bound[listener.address] = BoundListener(sock.family, sock.getsockname()[0], sock.getsockname()[1], tls,
                                                    stream)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, bound


def _stream_protocol(cfg: GatewayConfig, address: str) -> str | None:
    """The stream protocol of an address (tls when tls and tls-passthrough listeners share it)."""
    found = {lst.protocol for lst in cfg.listeners if lst.address == address and lst.protocol != "http"}
    if not found:
        return None
    return "tls" if "tls" in found else found.pop()


def _bind_unless_served(address: str, host: str, port: int, reuse_port: bool) -> socket.socket:
    """A SO_REUSEPORT socket bound to host:port, not listening yet. AddressInUse when something
    already serves the address, unless reuse_port asks to share it; the probe runs before listen(),
    so our own bound socket does not trip it, and a port 0 the kernel just picked is free."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    try:
        sock = _reuseport_socket(family, addr[0], addr[1])
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(address, reuse_port) from None
        raise
    if not reuse_port and port != 0 and _served_elsewhere(family, addr[0], port):
        sock.close()
        raise AddressInUse(address, reuse_port)
    return sock


def bind_admin(admin: Admin, reuse_port: bool) -> socket.socket:
    """The Admin API's listening socket. Always SO_REUSEPORT, as the workers' listeners: the instance
    a zero-downtime upgrade starts beside this one can then share the address with --reuse-port.
    Raises AddressInUse as bind_placeholders does."""
    sock = _bind_unless_served(admin.address, admin.host, admin.port, reuse_port)
    try:
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


@dataclass
class Child:
    index: int
    pid: int
    channel: ControlClient
    sock: socket.socket           # the supervisor's end of the control channel
    ready: bool = False
    started: float = field(default_factory=time.time)


def _summary(cfg: GatewayConfig) -> dict:
    return {"listeners": len(cfg.listeners), "routes": len(cfg.routes), "upstreams": len(cfg.upstreams),
            "policies": len(cfg.policies)}


class Supervisor:
    def __init__(self, config_path: str, cfg: GatewayConfig, workers: int, reuse_port: bool = False):
        self.config_path = config_path
        self.cfg = cfg
        self.generation = 1
        self.config_source = "file"
        self.nworkers = workers
        self.reuse_port = reuse_port
        self.children: dict[int, Child] = {}   # by pid
        self.start_time = time.time()
        self.started = False                   # every first worker reported ready
        self.stopping = False
        self.reloads = ReloadLog()
        self.reloads.record(source="file", ok=True, file=config_path, generation=1, summary=_summary(cfg))
        self.admin_settings = cfg.admin        # as bound; a reload can change the token, not the address
        self.admin_token = self._token_of(cfg.admin)
        self.admin_sock: socket.socket | None = None
        self.admin_server = None
        self._ready_buf = b""
        self._stop_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._done: asyncio.Future | None = None

    # --- start and the loop ---------------------------------------------------------------------------

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
        from .tls import make_endpoints

        if self.nworkers > 1:
            # what only a worker runs, imported before the forks so that the workers share its pages
            # copy-on-write: about 1.5 MiB less PSS a worker for 0.8 MiB more in the supervisor
            # (bench/README.md, "Memory"); with one worker it would only move them
            import uvloop  # noqa: F401

            from . import accesslog, runtime, tracing  # noqa: F401
        # before any fork: every worker inherits these contexts, and with them one set of session
        # ticket keys (fastgw/tls.py)
        self.tls_endpoints = make_endpoints(self.cfg, self.bound)
        if self.admin_settings is not None:
            try:
                self.admin_sock = bind_admin(self.admin_settings, self.reuse_port)
            except (AddressInUse, OSError) as exc:
                for s in self.placeholders:
                    s.close()
                log(f"cannot start the admin API: {exc}", "admin_failed", "error")
                return 1
        # the rate limiters' table, mapped before the fork so every worker shares its buckets
        # (ratelimit.pyx); a restarted worker finds them as they were. Its in-flight ledger, a row a
        # worker, lets _reap give back the concurrency slots of a worker that died mid-request
        _core.rate_table(0, self.nworkers)
        # the pipe stays open: a restarted worker reports ready on it too
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        # our own selector: a forked worker closes its descriptors (see _forget_supervisor)
        self.selector = selectors.DefaultSelector()
        self.loop = asyncio.SelectorEventLoop(self.selector)
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_reader(self.ready_r, self._drain_ready)
        if self.admin_sock is not None:
            from .admin.api import AdminAPI
            from .admin.http import HttpServer

            self.admin_server = HttpServer(AdminAPI(self).handle)
            await self.admin_server.start(self.admin_sock)
            log(f"admin API listening on {_url(self.admin_sock)}", "admin_listening", url=_url(self.admin_sock))
        # held since run(): delivered now to the handlers just installed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        for index in range(self.nworkers):
            self._spawn(index)
        self._spawn_task(self._rotate_ticket_keys())
        if self._watching():
            self._spawn_task(watch_config(self.config_path, lambda: self.cfg.server.watch_interval,
                                          lambda: self._reload_file("watch"), lambda: self.stopping,
                                          lambda: referenced_files(self.cfg)))
        startup_timer = loop.call_later(STARTUP_TIMEOUT, self._startup_failed, "workers did not start")
        try:
            code = await self._done
        finally:
            startup_timer.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.admin_server is not None:
                await self.admin_server.close()
            for child in self.children.values():
                child.channel.close()
        if code == 0:
            log("stopped", "stopped")
        return code

    async def _rotate_ticket_keys(self) -> None:
        """Every `session_ticket_rotation`: new session ticket keys for every TLS endpoint, the same
        for all workers (fastgw/tls.py). A worker that misses one keeps resuming with its old keys
        until the next; a worker forked later starts with the supervisor's current ones."""
        from .tls import rotation_interval, ticket_keys

        if not self.tls_endpoints.by_address:
            return
        if not ticket_keys().available:
            log(f"session ticket keys are not rotated: {ticket_keys().why_not}", "tls_ticket_keys", "warning")
            return
        while True:
            interval = rotation_interval(self.cfg, self.tls_endpoints.by_address)
            await asyncio.sleep(interval if interval > 0 else 60.0)
            if interval <= 0 or self.stopping or rotation_interval(self.cfg, self.tls_endpoints.by_address) <= 0:
                continue
            keys = self.tls_endpoints.new_ticket_keys()
            children = [c for c in self.children.values()]
            results = await asyncio.gather(*(c.channel.call("ticket_keys", {"keys": keys}, QUERY_TIMEOUT)
                                             for c in children), return_exceptions=True)
            missed = sum(1 for r in results if isinstance(r, BaseException))
            log("session ticket keys rotated", "tls_ticket_keys_rotated", endpoints=len(keys),
                workers=len(children) - missed, workers_missed=missed)

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            self._reap()
        elif sig == signal.SIGHUP and not self.stopping:
            self._reload_file("SIGHUP")
        elif sig == signal.SIGUSR1:
            # logrotate: every process reopens its log files by name
            events.reopen()
            for pid in list(self.children):
                self._signal(pid, signal.SIGUSR1)
        elif sig in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                # readiness is false from here on; serving goes on while endpoints are withdrawn
                self.stopping = True
                delay = self.cfg.server.shutdown_delay
                if delay > 0 and self.children:
                    log(f"stopping in {delay:g}s (server.shutdown_delay); not ready from now on",
                        "shutdown_delay", delay=delay)
                    self._stop_timer = asyncio.get_running_loop().call_later(delay, self._stop_workers)
                    return
                self._stop_workers()
            elif self._stop_timer is not None:
                self._stop_workers()    # a second signal: no more waiting

    def _stop_workers(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        self._stop_children(signal.SIGTERM)
        asyncio.get_running_loop().call_later(self.cfg.server.drain_timeout + 5, self._stop_children,
                                              signal.SIGKILL)
        self._finish_if_stopped()

    def _watching(self) -> bool:
        watch = self.cfg.server.watch_config
        return os.path.isdir(self.config_path) if watch is None else watch

    def _finish(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)

    def _finish_if_stopped(self) -> None:
        if self.stopping and not self.children:
            self._finish(0)

    def _startup_failed(self, why: str) -> None:
        if self.started or self.stopping:
            return
        log(why, "workers_not_started", "error")
        self._stop_children(signal.SIGKILL)
        self._finish(1)

    # --- workers ------------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if threading.active_count() > 1:
            log(f"warning: forking worker {index} while the supervisor runs {threading.active_count()} "
                f"threads; a lock one of them holds stays held in the worker")
        # held across the fork: until the child drops the supervisor's handlers, a signal would run
        # them and write to the supervisor's wakeup pipe, which the child shares
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:   # out of processes or memory for now: try again rather than give up
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            log(f"cannot fork worker {index}: {exc}; trying again in 1s")
            asyncio.get_running_loop().call_later(1.0, self._respawn, index)
            return
        if pid == 0:
            code = 1
            try:
                self._forget_supervisor(ours.fileno(), keep={self.ready_w, theirs.fileno()})
                code = run_worker(self.cfg, self.generation, index, self.bound, self.ready_w, theirs,
                                  self.tls_endpoints)
            except BaseException as exc:  # a worker must never unwind into the supervisor's code
                events.flush_sink()
                log(f"worker {index} failed: {exc!r}", "worker_failed", "error", worker=index)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        self.children[pid] = Child(index, pid, ControlClient.open(ours), ours)
        log(f"worker {index} started (pid {pid})", "worker_started", worker=index, worker_pid=pid)

    def _respawn(self, index: int) -> None:
        if not self.stopping:
            self._spawn(index)

    def _forget_supervisor(self, channel_end: int, keep: set[int]) -> None:
        """In a freshly forked worker: drop the supervisor's signal handlers and close its
        descriptors (event loop, admin sockets and connections, other workers' channels), so that
        the worker never runs the supervisor's loop and holds nothing of it open."""
        wakeup = signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        asyncio.events._set_running_loop(None)
        # Collect now, while every inherited descriptor is still open: a garbage socket finalized
        # later would close whatever descriptor the worker has reused its number for by then. What
        # is left is frozen: still reachable from the supervisor's frames, it is never finalized.
        gc.collect()
        gc.freeze()
        fds = {channel_end, wakeup, self.selector.fileno(), self.ready_r, *self.selector.get_map()}
        fds.update(s.fileno() for s in self.placeholders)
        fds.update(c.sock.fileno() for c in self.children.values())
        if self.admin_server is not None:
            fds.update(self.admin_server.fds())
        if self.admin_sock is not None:
            fds.add(self.admin_sock.fileno())
        for fd in fds - keep:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # WORKER_SIGNALS stay blocked: run_worker unblocks them once it can handle them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})

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
            if child is not None:   # else exited (and was reaped) right after reporting
                child.ready = True
        if not self.started and not self.stopping and self.children \
                and all(c.ready for c in self.children.values()):
            self.started = True
            for b in self.bound.values():
                log(f"listening on {b.url}", "listening", url=b.url)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.channel.close()
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if not self.started:
                self._startup_failed(f"worker {child.index} (pid {pid}) exited with status {code} before it "
                                     f"was ready; workers did not start")
                return
            log(f"worker {child.index} (pid {pid}) exited with status {code}; restarting", "worker_exited", "error",
                worker=child.index, worker_pid=pid, status=code, respawn=True)
            released = _core.rate_table().release_worker(child.index)
            if released:
                log(f"gave back {released} in-flight rate-limit slot(s) worker {child.index} held",
                    "ratelimit_slots_released", worker=child.index, slots=released)
            self._spawn(child.index)
        self._finish_if_stopped()

    def _stop_children(self, sig: int) -> None:
        for pid in list(self.children):
            self._signal(pid, sig)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # --- what the Admin API asks --------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        ready = sum(1 for c in self.children.values() if c.ready)
        ok = self.started and not self.stopping and ready == self.nworkers == len(self.children)
        return ok, {"config_loaded": True, "generation": self.generation, "workers": self.nworkers,
                    "workers_ready": ready, "stopping": self.stopping}

    async def ask_workers(self, op: str, args: dict | None = None, first_ready: bool = False) -> list[dict]:
        """Every worker's answer in index order; a worker that is starting, gone or too slow gets an
        entry with `error` instead. first_ready: the answer of the first ready worker that answers."""
        children = sorted(self.children.values(), key=lambda c: c.index)

        async def one(child: Child) -> dict:
            if not child.ready:
                return {"index": child.index, "pid": child.pid, "error": "starting"}
            try:
                answer = await child.channel.call(op, args, QUERY_TIMEOUT)
            except ControlError as exc:
                return {"index": child.index, "pid": child.pid, "error": str(exc)}
            return {**answer, "index": child.index}

        if first_ready:
            for child in children:
                if child.ready:
                    try:
                        return [{**await child.channel.call(op, args, QUERY_TIMEOUT), "index": child.index}]
                    except ControlError:
                        continue
            return []
        return list(await asyncio.gather(*(one(c) for c in children)))

    def process_info(self, unanswered: int = 0) -> dict:
        """What fastgw.metrics.render needs of the supervisor (its docstring lists the keys)."""
        return {"version": __version__, "workers": self.nworkers,
                "workers_ready": sum(1 for c in self.children.values() if c.ready),
                "workers_unanswered": unanswered, "reloads_ok": self.reloads.ok,
                "reloads_failed": self.reloads.failed, "last_reload_timestamp": self.reloads.last_ok_time,
                "start_timestamp": self.start_time, "generation": self.generation}

    # --- config reloads -----------------------------------------------------------------------------

    @staticmethod
    def _token_of(admin: Admin | None) -> str | None:
        if admin is None:
            return None
        return read_token_file(admin.token_file) if admin.token_file else admin.token

    def check_admin_change(self, cfg: GatewayConfig, file: str) -> GatewayConfig:
        """What a new config may do to the admin listener already bound: its address stays until a
        restart, so a token can be dropped only while that address is loopback."""
        bound = self.admin_settings
        if bound is None:
            return cfg
        new = cfg.admin if cfg.admin is not None else bound
        if self._token_of_safely(new) is None and not is_loopback(bound.host):
            raise ConfigError([ConfigIssue(file, "$.admin.token",
                                           f"the admin listener stays on {bound.address} (not loopback) until "
                                           f"a restart, so a token is still required")])
        return cfg

    @staticmethod
    def _token_of_safely(admin: Admin) -> str | None:
        try:
            return Supervisor._token_of(admin)
        except ValueError:
            return None

    def refused(self, source: str, file: str, exc: ConfigError) -> None:
        log("reload refused, keeping the running config", "reload_rejected", "error", source=source,
            errors=_errors(exc))
        self.reloads.record(source=source, ok=False, file=file, errors=exc.errors)

    def _reload_file(self, source: str) -> None:
        """source: "SIGHUP", or "watch" (the files changed)."""
        try:
            cfg = self.check_admin_change(load_config(self.config_path), self.config_path)
        except ConfigError as exc:
            self.refused(source, self.config_path, exc)
            return
        self._spawn_task(self.accept(cfg, source, self.config_path, wait=False))

    def _spawn_task(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def accept(self, cfg: GatewayConfig, source: str, file: str, wait: bool = True) -> dict:
        """Makes a validated config the running one: workers forked from now on start with it, and
        every running worker is sent it. wait: the answer lists what each worker made of it."""
        notes = []
        if {lst.address for lst in cfg.listeners} != set(self.bound):
            notes.append("listener address changes take effect on restart; routes and upstreams are "
                         "reloaded now")
        for address, b in self.bound.items():
            tls = any(lst.tls is not None for lst in cfg.listeners if lst.address == address)
            if address in {lst.address for lst in cfg.listeners} and tls != b.tls:
                notes.append(f"{address} {'starts' if tls else 'stops'} terminating TLS on restart; until then "
                             f"it goes on {'with' if b.tls else 'without'} TLS")
        if self.admin_settings is not None:
            if cfg.admin is None or cfg.admin.address != self.admin_settings.address:
                notes.append(f"the admin listener stays on {self.admin_settings.address} until a restart")
            if cfg.admin is not None:
                self.admin_settings = msgspec.structs.replace(cfg.admin, address=self.admin_settings.address)
                self.admin_token = self._token_of(self.admin_settings)
        elif cfg.admin is not None:
            notes.append("the admin listener starts on restart")
        if source in ("SIGHUP", "watch") and self.config_source == "admin":
            notes.append("re-read the config file, replacing the config applied through the admin API")
        self.cfg, self.generation, self.config_source = cfg, self.generation + 1, (
            "admin" if source == "admin" else "file")
        generation = self.generation
        events.configure(cfg.logging)
        for note in notes:
            log(note, "reload_note", "warning")
        log(f"configuration accepted ({source}): generation {generation}, {len(cfg.routes)} routes, "
            f"{len(cfg.upstreams)} upstreams", "reload_accepted", source=source, generation=generation,
            **_summary(cfg))
        entry = self.reloads.record(source=source, ok=True, file=file, generation=generation, notes=notes,
                                    summary=_summary(cfg))
        payload = {"generation": generation, "config": config_payload(cfg)}
        timeout = APPLY_TIMEOUT if wait else BACKGROUND_APPLY_TIMEOUT
        children = sorted(self.children.values(), key=lambda c: c.index)
        results = list(await asyncio.gather(*(self._apply(c, payload, timeout) for c in children)))
        entry["workers"] = results
        return {"ok": all(r.get("applied") or r.get("current") for r in results), "generation": generation,
                "source": source, **_summary(cfg), "notes": notes, "workers": results}

    @staticmethod
    async def _apply(child: Child, payload: dict, timeout: float) -> dict:
        """Sent whether or not the worker is ready yet: it reads the channel once its loop runs, so
        one still starting applies it before it serves many requests."""
        try:
            answer = await child.channel.call("apply", payload, timeout)
        except ControlError as exc:
            pending = not child.channel.closed
            return {"index": child.index, "pid": child.pid, "applied": False, "pending": pending,
                    "error": str(exc)}
        return {**answer, "index": child.index}


def run_worker(cfg: GatewayConfig, generation: int, index: int, bound: dict[str, BoundListener], ready_w: int,
               control: socket.socket, tls_endpoints=None) -> int:
    import uvloop

    from . import _core, accesslog
    from .runtime import compile_runtime
    from .tracing import TraceExport

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    events.open_worker_sink(loop)
    _core.rate_table().set_worker(index)     # its in-flight slots in its ledger row (ratelimit.pyx)
    from . import dns

    loop.run_until_complete(dns.prime(loop, cfg))     # hostname targets, resolved before serving
    worker = _core.Worker(loop, compile_runtime(cfg))
    from .jwt_auth import prefetch_jwks, start_jwks_prefetch

    loop.run_until_complete(prefetch_jwks(worker.runtime, loop))   # JWKS keys, before the first token
    accesslog.apply(worker, loop, cfg)
    traces = TraceExport(worker, loop)
    traces.configure(cfg.tracing)
    from .tls import make_endpoints

    if tls_endpoints is None:
        tls_endpoints = make_endpoints(cfg, bound)
    tls_endpoints.install(tls_endpoints.prepare(cfg))
    servers = []
    for address, b in bound.items():
        sock = _reuseport_socket(b.family, b.host, b.port)
        endpoint = tls_endpoints.by_address.get(address)
        if b.stream is not None:
            # a stream listener terminates TLS itself, after reading the ClientHello (tlsterm.pyx)
            server = loop.create_server(worker.protocol_factory(address, endpoint), sock=sock, backlog=4096)
        elif endpoint is None:
            server = loop.create_server(worker.protocol_factory(address), sock=sock, backlog=4096)
        else:
            server = loop.create_server(worker.protocol_factory(address, endpoint), sock=sock, backlog=4096,
                                        ssl=endpoint.ctx, ssl_handshake_timeout=endpoint.handshake_timeout)
        servers.append(loop.run_until_complete(server))
    worker.start()
    done = loop.create_future()

    tls_prepared: dict = {}

    def check(new_cfg: GatewayConfig) -> None:
        accesslog.check_sink(new_cfg)
        tls_prepared["next"] = tls_endpoints.prepare(new_cfg)   # certificates that fail to load refuse it

    def applied(new_cfg: GatewayConfig) -> None:
        tls_endpoints.install(tls_prepared.pop("next"))
        events.configure(new_cfg.logging)
        accesslog.apply(worker, loop, new_cfg)
        traces.configure(new_cfg.tracing)

    from .healthcheck import ActiveChecks

    health_checks = ActiveChecks(worker, loop)
    health_checks.apply(cfg)

    def rebuild_for_dns() -> None:
        """A name's addresses changed: the running config compiled again, as a reload would."""
        from .runtime import retired_targets

        old = worker.runtime
        worker.swap_runtime(compile_runtime(ops.cfg, old))
        for target in retired_targets(old, worker.runtime):
            target.retire()
        health_checks.apply(ops.cfg)

    dns_refresh = dns.DnsRefresh(loop, rebuild_for_dns)

    def swapped(new_cfg: GatewayConfig) -> None:
        start_jwks_prefetch(worker.runtime, loop)       # a JWKS URL the reload added
        health_checks.apply(new_cfg)
        dns_refresh.apply(new_cfg)

    ops = WorkerOps(worker, cfg, generation, index, log, check=check, applied=applied, swapped=swapped)
    dns_refresh.apply(cfg)

    async def drain() -> None:
        for server in servers:
            server.close()
        worker.begin_drain()
        health_checks.stop()
        dns_refresh.stop()
        deadline = loop.time() + worker.runtime.drain_timeout
        while (worker.active_clients() or worker.active_tunnels()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        worker.close_all()
        # WebSocket tunnels were sent a close frame (1001): their peers' answers are awaited a moment
        grace = loop.time() + 1.5
        while worker.active_tunnels() and loop.time() < grace:
            await asyncio.sleep(0.05)
        await traces.close(timeout=max(0.5, min(5.0, deadline - loop.time())))
        if not done.done():
            done.set_result(None)

    draining = False

    def on_term() -> None:
        nonlocal draining
        if not draining:
            draining = True
            loop.remove_signal_handler(signal.SIGTERM)
            loop.create_task(drain())

    table = ops.table()
    table["ticket_keys"] = lambda args: {"endpoints": tls_endpoints.set_ticket_keys(args["keys"])}
    loop.run_until_complete(loop.create_unix_connection(lambda: ControlServer(table, on_term),
                                                        sock=control))
    # the supervisor owns reloads (it hands the config over the control channel): a SIGHUP sent to
    # a worker directly, as `pkill -HUP fastgw` does, must neither kill it nor reload it alone
    loop.add_signal_handler(signal.SIGHUP, lambda: None)

    def reopen_logs() -> None:
        if worker.access_log is not None:
            worker.access_log.reopen()
        events.reopen()

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
    # held from the start (the supervisor installs its handlers before it unblocks them), so that a
    # SIGHUP sent while the config loads does not kill the supervisor
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log("invalid configuration", "config_invalid", "error", errors=_errors(exc))
        return 1
    events.configure(cfg.logging)
    return Supervisor(config_path, cfg, workers, reuse_port).run()
