"""Process trees: CPU time (utime+stime) and resident memory summed over a process and its descendants."""

from __future__ import annotations

import os
import threading

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """`root` and all its descendants (walks /proc once)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    return cpu_seconds(tree(root))


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE_KIB
        except (OSError, IndexError, ValueError):
            pass
    return total


class TreeSampler:
    """Samples the summed RSS of one or more process trees on a thread while a load runs.

    Use as a context manager; `peak_kib[root]` holds the peak of the summed VmRSS of each tree, and
    `cpu_s[root]` the utime+stime the tree spent between enter and exit (processes that appear during
    the run are counted from zero, processes that exit during it are counted up to their last sample).
    """

    def __init__(self, roots: list[int], interval: float = 0.1):
        self.roots = [r for r in roots if r]
        self.interval = interval
        self.peak_kib: dict[int, int] = {r: 0 for r in self.roots}
        self.cpu_s: dict[int, float] = {r: 0.0 for r in self.roots}
        self._start: dict[int, dict[int, float]] = {}
        self._last: dict[int, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _snapshot(self, first: bool = False) -> None:
        for root in self.roots:
            pids = tree(root)
            self.peak_kib[root] = max(self.peak_kib[root], rss_kib(pids))
            last = self._last.setdefault(root, {})
            for pid in pids:
                fields = _stat_fields(pid)
                if fields is None:
                    continue
                t = (int(fields[11]) + int(fields[12])) / CLK_TCK
                last[pid] = t
                if first:
                    self._start.setdefault(root, {})[pid] = t

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._snapshot()

    def __enter__(self) -> TreeSampler:
        self._snapshot(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._snapshot()
        for root in self.roots:
            start = self._start.get(root, {})
            self.cpu_s[root] = sum(t - start.get(pid, 0.0) for pid, t in self._last.get(root, {}).items())
