"""What every benchmark reports the same way: the machine, a command's wall time and peak memory (each
measured in a process of its own), and side-by-side rounds of rival candidates."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

GIB = 1024**3


def machine() -> dict:
    """Where the numbers were measured: CPUs, platform, Python, and the CPU's vector extensions."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "avx512": " avx512f" in flags,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class ChildRun:
    """One command run in a child process: how long it took, its peak resident memory, its output."""

    wall_seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def peak_rss_gib(self) -> float:
        return round(self.peak_rss_bytes / GIB, 2)


def run_child(command: list, env: dict, cwd: Path | None = None) -> ChildRun:
    """Run `command` to its end; its wall time and its own peak RSS.

    The peak is the child's high-water mark (VmHWM), read every PEAK_POLL_SECONDS while it runs: the
    ru_maxrss that wait4 reports starts from this process's own RSS at the fork (Linux keeps it across
    exec), so a 2 GiB parent's child that used 11 MB reported 2.03 GiB. wait4's figure is the fallback
    where /proc is missing."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [str(c) for c in command], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        peaks: list[int] = []
        watcher = threading.Thread(target=_watch_peak, args=(child.pid, peaks), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        wall = time.perf_counter() - started
        watcher.join()
        out.seek(0)
        err.seek(0)
        peak = max(peaks) if peaks else usage.ru_maxrss * 1024
        return ChildRun(round(wall, 2), peak, child.returncode, out.read(), err.read())


PEAK_POLL_SECONDS = 0.05


def _watch_peak(pid: int, peaks: list[int]) -> None:
    """Append process `pid`'s VmHWM (bytes) to `peaks` until it can no longer be read (the process ended)."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return
        peaks.append(int(line.split()[1]) * 1024)
        time.sleep(PEAK_POLL_SECONDS)


def interleaved(candidates: dict[str, Callable[[], int]], rounds: int) -> dict[str, dict]:
    """Run each candidate once per round, in turn (so drifts in the machine's speed hit all alike); each
    returns how many items it processed. Per candidate: items per second of every round and the median."""
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, work in candidates.items():
            started = time.perf_counter()
            items = work()
            rates[name].append(items / (time.perf_counter() - started))
    return {
        name: {"per_second": round(statistics.median(r), 2), "rounds": [round(x, 2) for x in r]}
        for name, r in rates.items()
    }
