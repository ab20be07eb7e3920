"""CPU seconds and peak RSS per process, for named groups of PIDs."""

from __future__ import annotations

import time
from typing import Any


def _cpu(proc: Any) -> float:
    """User + system CPU seconds of a ``psutil.Process``; 0 once it has exited."""
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except Exception:  # psutil.Error
        return 0.0


def _hwm(pid: int) -> int:
    """Peak RSS the kernel recorded for ``pid`` (VmHWM), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Meter:
    """CPU seconds over a window and peak RSS, for named groups of PIDs."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil  # the "bench" extra: imported here, so the command exists without it

        self.gone = psutil.Error
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss_peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.t0 = self.seconds = 0.0  # the window: when it began, how long it lasted

    def begin(self) -> None:
        self.start = {n: _cpu(p) for n, p in self.procs.items()}
        self.t0 = time.monotonic()

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                rss = proc.memory_info().rss
            except self.gone:
                continue
            self.rss_peak[name] = max(self.rss_peak[name], rss)

    def end(self) -> None:
        self.sample()
        self.cpu = {n: _cpu(p) - self.start.get(n, 0.0) for n, p in self.procs.items()}
        self.seconds = time.monotonic() - self.t0
        for name, proc in self.procs.items():
            self.rss_peak[name] = max(self.rss_peak[name], _hwm(proc.pid))

    def rss(self, name: str) -> int:
        try:
            return int(self.procs[name].memory_info().rss)
        except self.gone:
            return 0
