"""Launches the real gateway process: `python -m fastgw run -c CONFIG [--workers N]`."""

from __future__ import annotations

import copy
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTEN_RE = re.compile(r'(?<!admin API )listening on (?:https?|tcp|tls)://([^\s:"]+|\[[^\]]+\]):(\d+)')
STARTUP_TIMEOUT = 30.0


def upstream_config(*addresses, weights=None, timeouts=None, keepalive=None) -> dict:
    targets = [{"address": a, "weight": (weights[i] if weights else 1)} for i, a in enumerate(addresses)]
    up: dict = {"targets": targets}
    if timeouts:
        up["timeouts"] = timeouts
    if keepalive:
        up["keepalive"] = keepalive
    return up


def simple_config(upstream_address: str | None = None, *, upstreams: dict | None = None,
                  routes: list | None = None, limits: dict | None = None, listeners: int = 1,
                  timeouts: dict | None = None, server: dict | None = None, **route_extra) -> dict:
    """One listener on port 0 and, unless given, one catch-all route `all` to upstream `echo`."""
    if upstreams is None:
        upstreams = {"echo": upstream_config(upstream_address, timeouts=timeouts)}
    if routes is None:
        routes = [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo", **route_extra}]
    cfg = {
        "listeners": [{"address": "127.0.0.1:0"} for _ in range(listeners)],
        "upstreams": upstreams,
        "routes": routes,
    }
    if limits:
        cfg["limits"] = limits
    if server:
        cfg["server"] = server
    return cfg


class GatewayStartError(AssertionError):
    pass


class Gateway:
    """A running gateway. Use as a context manager or call start()/stop()."""

    def __init__(self, config: dict, workdir: str | os.PathLike | None = None, workers: int | None = None,
                 extra_args=(), env=None, program=None, read_stdout: bool = True):
        """program replaces `python -m fastgw` (the launcher's self-test uses a stub). read_stdout
        False leaves stdout a pipe nobody reads (a sink that cannot keep up)."""
        self.program = list(program) if program else [sys.executable, "-m", "fastgw"]
        self.config = copy.deepcopy(config)
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fastgw-test-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "fastgw.yaml"
        self.workers = workers
        self.extra_args = list(extra_args)
        self.env = env
        self.read_stdout = read_stdout
        self.proc: subprocess.Popen | None = None
        self.ports: list[int] = []
        self.hosts: list[str] = []
        self._stderr_lines: list[str] = []
        self._stdout_lines: list[str] = []
        self._lines_q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.returncode: int | None = None

    # --- config --------------------------------------------------------------------------------------
    def write_config(self, config: dict | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)  # atomic: a reload never sees half a file

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = STARTUP_TIMEOUT) -> Gateway:
        self.write_config(self.config)
        cmd = [*self.program, "run", "-c", str(self.config_path)]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        cmd += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=str(REPO_ROOT), env=env)
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr_lines, True), daemon=True),
        ]
        if self.read_stdout:
            self._threads.append(
                threading.Thread(target=self._drain, args=(self.proc.stdout, self._stdout_lines, False), daemon=True))
        for t in self._threads:
            t.start()
        # one line per distinct address: listeners that differ only by hostname share a socket
        want = len({str(lst.get("address", i)) for i, lst in enumerate(self.config.get("listeners") or [])})
        deadline = time.monotonic() + timeout
        while len(self.ports) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise GatewayStartError(f"gateway not listening after {timeout}s\n{self.describe()}")
            try:
                line = self._lines_q.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    for t in self._threads:
                        t.join(2)
                    raise GatewayStartError(
                        f"gateway exited with {self.proc.returncode} before listening\n{self.describe()}"
                    ) from None
                continue
            if line is None:  # stderr closed
                self.proc.wait(5)
                raise GatewayStartError(f"gateway closed stderr before listening\n{self.describe()}")
            m = LISTEN_RE.search(line)
            if m:
                self.hosts.append(m.group(1))
                self.ports.append(int(m.group(2)))
        return self

    def _drain(self, stream, sink: list, notify: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                sink.append(line)
            if notify:
                self._lines_q.put(line)
        if notify:
            self._lines_q.put(None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str = "/", index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{path}"

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self._stderr_lines)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "\n".join(self._stdout_lines)

    def stderr_line_count(self) -> int:
        with self._lock:
            return len(self._stderr_lines)

    def stderr_since(self, n: int) -> str:
        with self._lock:
            return "\n".join(self._stderr_lines[n:])

    def describe(self) -> str:
        rc = self.proc.poll() if self.proc else None
        return (f"--- gateway (pid {self.proc.pid if self.proc else '-'}, rc {rc}) config:\n"
                f"{yaml.safe_dump(self.config, sort_keys=False)}--- stderr:\n{self.stderr}\n"
                f"--- stdout:\n{self.stdout}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reload(self, config: dict | str) -> None:
        """Rewrites the config file and sends SIGHUP."""
        if isinstance(config, dict):
            self.config = copy.deepcopy(config)
        self.write_config(config)
        self.signal(signal.SIGHUP)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gateway did not exit within {timeout}s\n{self.describe()}") from None
        for t in self._threads:
            t.join(5)
        return self.returncode

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last resort: SIGKILL the gateway and every process it started."""
        if self.proc is None:
            return
        for pid in reversed(self.descendants()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Teardown: graceful stop, then kill whatever is left. Never raises."""
        try:
            if self.alive():
                self.stop(timeout=15)
        except AssertionError:
            pass
        finally:
            self.kill()
            if self._tmp is not None:
                self._tmp.cleanup()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- processes and memory ------------------------------------------------------------------------------
    def descendants(self) -> list[int]:
        """PIDs of every live process below the gateway (workers), breadth first."""
        if self.proc is None:
            return []
        return descendants(self.proc.pid)

    def pids(self) -> list[int]:
        return ([self.proc.pid] if self.alive() else []) + self.descendants()

    def rss_bytes(self) -> int:
        """Current resident memory of the gateway and all its processes, summed."""
        return sum(proc_status_kib(p, "VmRSS") for p in self.pids()) * 1024

    def hwm_bytes(self) -> int:
        """Peak resident memory (VmHWM) of the gateway and all its live processes, summed."""
        return sum(proc_status_kib(p, "VmHWM") for p in self.pids()) * 1024


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def proc_status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_owner_pids(local_port: int, remote_port: int, candidates: list[int]) -> list[int]:
    """Which of `candidates` holds the TCP socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lp = int(parts[1].rsplit(":", 1)[1], 16)
                    rp = int(parts[2].rsplit(":", 1)[1], 16)
                    if lp == local_port and rp == remote_port:
                        inodes.add(parts[9])
        except OSError:
            continue
    owners = []
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                owners.append(pid)
                break
    return owners


def only_worker_pid(gw) -> int:
    """The pid of the one live worker of a gateway started with workers=1."""
    kids = [p for p in descendants(gw.pid) if os.path.exists(f"/proc/{p}")]
    assert len(kids) == 1, f"expected one worker, got {kids}"
    return kids[0]


def serves(gw) -> bool:
    """Whether the gateway answers 200 to GET /ping on a fresh connection."""
    from .client import RawConn

    try:
        with RawConn(gw.port, timeout=5) as c:
            return c.request("GET", "/ping", [("Connection", "close")]).status == 200
    except OSError:
        return False
