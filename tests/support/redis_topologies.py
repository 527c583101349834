"""Real Redis topologies on loopback ports, for the cluster-wide rate limits' Sentinel and Cluster
support: a primary with a replica watched by one Sentinel, and a 3-node Redis Cluster made with
`redis-cli --cluster create`. No persistence; everything lives in a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .redis_server import _free_port


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


def cli(port: int, *args: str, timeout: float = 10) -> str:
    """One command through redis-cli (a second client implementation); its text reply."""
    out = subprocess.run([_exe("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    return out.stdout.strip()


def _wait(what: str, check, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _Node:
    def __init__(self, directory: Path, port: int, *extra: str, sentinel: bool = False) -> None:
        self.port = port
        self.args = extra
        self.dir = directory
        self.sentinel = sentinel
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        base = ["--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "no", "--dir", str(self.dir)]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            cmd = [_exe("redis-server"), str(conf), "--sentinel", *base]
        else:
            cmd = [_exe("redis-server"), *base, "--save", "", "--appendonly", "no", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"redis on {self.port}", lambda: cli(self.port, "PING") == "PONG")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class SentinelSet:
    """A primary, one replica of it, and one Sentinel monitoring them as `service` (quorum 1)."""

    def __init__(self, service: str = "mymaster") -> None:
        self.service = service
        self.tmp = Path(tempfile.mkdtemp(prefix="fastgw-sentinel-"))
        self.nodes: list[_Node] = []
        try:
            for name in ("a", "b"):
                (self.tmp / name).mkdir()
            primary = _Node(self.tmp / "a", _free_port())
            self.nodes.append(primary)
            self.nodes.append(_Node(self.tmp / "b", _free_port(), "--replicaof", "127.0.0.1", str(primary.port)))
            _wait("the replica in sync", lambda: "master_link_status:up" in cli(self.nodes[1].port, "INFO", "replication"))
            (self.tmp / "s").mkdir()
            (self.tmp / "s" / "sentinel.conf").write_text(
                f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 10000\n"
                f"sentinel parallel-syncs {service} 1\n")
            self.sentinel = _Node(self.tmp / "s", _free_port(), sentinel=True)
            _wait("the sentinel to see the replica",
                  lambda: "num-slaves" in cli(self.sentinel.port, "SENTINEL", "MASTER", service)
                  and len(cli(self.sentinel.port, "SENTINEL", "REPLICAS", service)) > 0)
        except BaseException:
            self.stop()
            raise

    @property
    def sentinel_address(self) -> str:
        return f"127.0.0.1:{self.sentinel.port}"

    def primary_port(self) -> int:
        return int(cli(self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service).split()[-1])

    def node(self, port: int) -> _Node:
        return next(n for n in self.nodes if n.port == port)

    def failover(self, timeout: float = 30.0) -> int:
        """SENTINEL FAILOVER, then waits until the Sentinel names another primary that accepts writes
        and the old one (if alive) is its replica; the new primary's port."""
        old = self.primary_port()
        reply = cli(self.sentinel.port, "SENTINEL", "FAILOVER", self.service)
        # INPROG: the Sentinel already saw a dead primary and began one itself
        assert reply == "OK" or reply.startswith("INPROG"), reply
        _wait("the failover", lambda: self.primary_port() != old, timeout)
        new = self.primary_port()
        _wait("the new primary", lambda: "role:master" in cli(new, "INFO", "replication"), timeout)
        node = self.node(old)
        if node.proc is not None and node.proc.poll() is None:
            # until the Sentinel makes the old primary a replica, it still takes writes (and loses
            # them when it is made one): the failover ends there
            _wait("the old primary demoted", lambda: "role:slave" in cli(old, "INFO", "replication"), timeout)
        return new

    def stop(self) -> None:
        for n in [getattr(self, "sentinel", None), *self.nodes]:
            if n is not None:
                n.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class ClusterSet:
    """Three primaries (no replicas) made one Redis Cluster by `redis-cli --cluster create`."""

    def __init__(self, size: int = 3) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="fastgw-rcluster-"))
        self.nodes: list[_Node] = []
        try:
            for i in range(size):
                d = self.tmp / str(i)
                d.mkdir()
                port = _free_port()
                self.nodes.append(_Node(d, port, "--cluster-enabled", "yes", "--cluster-config-file",
                                        str(d / "nodes.conf"), "--cluster-node-timeout", "2000",
                                        # the bus port is port + 10000 unless given: past 65535 for high ports
                                        "--cluster-port", str(_free_port())))
            out = subprocess.run([_exe("redis-cli"), "--cluster", "create",
                                  *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-replicas", "0",
                                  "--cluster-yes"], capture_output=True, text=True, timeout=60, check=False)
            assert out.returncode == 0, out.stdout + out.stderr
            for n in self.nodes:
                _wait(f"cluster_state:ok on {n.port}", lambda n=n: "cluster_state:ok" in cli(n.port, "CLUSTER", "INFO"))
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def keys(self, pattern: str) -> dict[int, list[str]]:
        """Each node's keys matching `pattern`."""
        return {n.port: [k for k in cli(n.port, "KEYS", pattern).splitlines() if k] for n in self.nodes}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
