"""Giving memory back between the stages of a run.

A run's steps share one process (the in-process executor), and what a stage freed is not always returned
to the operating system: LanceDB's Rust threads allocate through glibc malloc, which keeps freed pages in
per-thread arenas, and Arrow keeps freed buffers in its pool. Measured on one HNSW build of 248,232 rows:
the process held 0.65 GiB after the table was closed, 0.41 GiB once trimmed; with two arenas it peaked at
0.50 GiB. Left alone, each stage starts on top of what the last one kept, and at 882,205 chunks a build
peaked at 6.17 GiB while no stage alone needed 3.

Arrow's own pool (mimalloc) purges freed memory after a second unused (`MIMALLOC_PURGE_DELAY=1000`, set
in the package's `__init__`), not mimalloc's 10 ms: a stage reuses what it freed moments before without
page faults. The release after each step purges the pool too. Never purging (-1) kept even that from
happening, and what a full build's stages freed stacked up: the 1.02M build peaked at 4.03 GiB, 3.59 with
this. On a VM where a page handed back cost a fault to the host, purging after every stage had cost a 1%
refresh at 248k chunks 3 s; on the 2-core machine of those builds the refresh did not slow (5.0-5.7 s
against 5.0-5.6 s). What glibc's arenas hold (LanceDB's Rust side) is trimmed after each step too.

A full garbage collection walks every object the process holds: 0.58 s once Dagster and
great-expectations are loaded, paid after every step. So what survives a collection is frozen
(`gc.freeze`): reference counting still frees it, and the next collection walks only what is new.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from functools import cache

import pyarrow as pa

M_ARENA_MAX = -8  # glibc's mallopt parameter: how many malloc arenas threads may create
MALLOC_ARENAS = 2  # one per core of the machines this runs on: fewer, so less freed memory sits idle


@cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, where the process runs on it (malloc_trim and mallopt are glibc's); None elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let threads share at most `arenas` malloc arenas from now on; whether glibc took the setting."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas))


def release_unused() -> None:
    """Collect garbage and hand what malloc's arenas and Arrow's pool freed back to the operating system.
    The survivors are frozen, so later collections skip them (only a reference cycle among them would wait
    for the process to end)."""
    gc.collect()
    gc.freeze()
    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@cache
def freeze_loaded() -> None:
    """Put every object alive now (imported modules, the Definitions) out of the collector's walks,
    without a collection first, once per process: the first run launched in it then collects only what its
    steps made (the first full collection after the sync step walked everything Dagster had loaded:
    0.23 s). Later runs need no more: each step's hook freezes what survives its own collection."""
    gc.freeze()


def resident_gib() -> float | None:
    """What this process holds in memory now (its resident set), in GiB; None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30, 2)
    except (OSError, ValueError):
        return None


def peak_resident_gib() -> float | None:
    """This process's own peak resident set (VmHWM), in GiB; None where /proc is missing. Not ru_maxrss:
    Linux carries the parent's resident set at the fork into a spawned child's ru_maxrss (a child using
    11 MB of a 2 GiB parent reported 2.03 GiB)."""
    try:
        with open("/proc/self/status") as status:
            line = next((ln for ln in status if ln.startswith("VmHWM:")), None)
    except OSError:
        return None
    return round(int(line.split()[1]) / 2**20, 2) if line else None
