"""Memory and CPU of processes and of the whole machine, through psutil (what /proc says on Linux)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import psutil

__all__ = ["ForeignCpu", "cpu_seconds", "rss_bytes", "rss_mib", "thread_cpu_seconds"]


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB; None once it is gone."""
    try:
        return rss_bytes(pid) / 2**20
    except psutil.NoSuchProcess:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each thread of a process so far, keyed ``main`` (the thread the
    process started with) or ``NAME-TID`` (NAME: the kernel's name for it, ``/proc/PID/task/TID/comm``
    on Linux: Python threads keep the process's, native pools such as XLA's or librdkafka's name
    theirs)."""
    out = {}
    for t in psutil.Process(pid).threads():
        if t.id == pid:
            name = "main"
        else:
            try:
                comm = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                comm = "thread"
            name = f"{comm}-{t.id}"
        out[name] = float(t.user_time + t.system_time)
    return out


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except psutil.NoSuchProcess:
        return 0.0


def _busy_seconds(with_nice: bool) -> float:
    """CPU seconds the whole machine spent busy so far: user, system, irq, softirq, steal, and niced
    processes' time only if ``with_nice`` (a niced job yields the CPU to processes at nice 0)."""
    t = psutil.cpu_times()
    return float(t.user + (t.nice if with_nice else 0.0) + t.system + t.irq + t.softirq + t.steal)


class ForeignCpu:
    """CPU cores used, since the last call, by everything that competes with ``pids``: the machine's
    busy time minus theirs. Niced processes count only when this process runs niced. Machine totals
    rather than a sum over the other processes, which misses every process that ended in between (a
    test suite's short-lived children)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = [p for p in pids if p]
        self.with_nice = psutil.Process().nice() > 0
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.monotonic(), _busy_seconds(self.with_nice), sum(_cpu_or_zero(p) for p in self.pids)

    def __call__(self) -> float:
        (t0, b0, o0), (t1, b1, o1) = self._last, self._read()
        self._last = (t1, b1, o1)
        return max(0.0, ((b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-3))
