"""Memory a step freed goes back to the operating system before the next step of the same process."""

import subprocess
import sys
import threading

import pytest

from embedding_assets.memory import _glibc, peak_resident_gib, release_unused, resident_gib

pytestmark = pytest.mark.skipif(_glibc() is None, reason="malloc_trim is glibc's")
BLOCKS = 200_000
BLOCK_BYTES = 2048  # above pymalloc's limit: each block comes from malloc


def _fragment(kept: list) -> None:
    """Fill a malloc arena with blocks and free all but every 100th: the arena keeps the freed pages."""
    blocks = [bytearray(BLOCK_BYTES) for _ in range(BLOCKS)]
    kept.extend(blocks[::100])


def test_freed_heap_memory_is_returned_to_the_system():
    kept: list = []
    worker = threading.Thread(target=_fragment, args=(kept,))  # a thread of its own: its own arena
    worker.start()
    worker.join()
    held = resident_gib()
    release_unused()
    released = resident_gib()
    assert held is not None and released is not None
    assert held - released >= 0.5 * BLOCKS * BLOCK_BYTES / 2**30, (held, released)
    assert len(kept) == BLOCKS // 100


class _Cycle:
    def __init__(self):
        self.me = self


def test_collections_after_a_release_walk_only_new_objects_and_still_free_new_cycles():
    import gc
    import weakref

    release_unused()
    frozen = gc.get_freeze_count()
    assert frozen > 0  # what survived is out of later collections' way
    garbage = _Cycle()
    alive = weakref.ref(garbage)
    del garbage  # only the collector can free a cycle
    release_unused()
    assert alive() is None
    assert gc.get_freeze_count() >= frozen


def test_a_child_reports_its_own_peak_not_its_parents():
    """The validator and the bench's commands are children of large processes: their peak must be their
    own (ru_maxrss would start from the parent's resident set at the fork)."""
    held = bytearray(600 * 2**20)  # this process now holds 600 MiB more
    held[::4096] = b"x" * len(held[::4096])
    code = "from embedding_assets.memory import peak_resident_gib; print(peak_resident_gib())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < float(child.stdout) < 0.4, child.stdout
    assert peak_resident_gib() >= 0.6


def test_the_step_hook_releases_after_a_step_that_grew_the_process_and_skips_one_that_did_not(monkeypatch):
    """A gate step grows the process by megabytes: a release after it would cost time and give nothing.
    The size at the last release is set here: what an allocation adds to the resident set depends on what
    the allocator already holds, so a test process cannot grow by a known amount on demand."""
    import dagster as dg

    from embedding_assets.defs import hooks

    context = dg.build_hook_context()
    now = resident_gib()
    monkeypatch.setattr(hooks, "_released_at_gib", now)  # released just now: the step grew nothing
    assert hooks.release_memory_after_step(context, []).is_skipped
    assert hooks._released_at_gib == now
    grown_from = now - 2 * hooks.RELEASE_AFTER_GROWTH_GIB  # the step grew the process by twice the bar
    monkeypatch.setattr(hooks, "_released_at_gib", grown_from)
    assert not hooks.release_memory_after_step(context, []).is_skipped
    assert abs(hooks._released_at_gib - resident_gib()) <= 0.02  # the size after this release, measured


ARROW_IDLE_CHILD = """
import time
import embedding_assets  # sets the allocator's purge delay before pyarrow loads
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from embedding_assets.memory import resident_gib
ones = pa.array(np.ones(2**17, dtype=np.int64))  # numpy's memory; products are allocated in Arrow's pool
buffers = [pc.multiply(ones, i) for i in range(512)]  # 512 MiB in 1 MiB buffers
held = resident_gib()
del buffers
time.sleep({idle})
for _ in range(3):  # the pool's next allocations purge what was idle long enough
    pc.multiply(ones, 3)
print(held, resident_gib())
"""


@pytest.mark.parametrize(("idle", "handed_back"), [(0.0, False), (1.5, True)])
def test_arrow_memory_freed_and_left_unused_for_a_second_goes_back_to_the_system(idle, handed_back):
    """What one stage freed in Arrow's pool is reused at once by the next, but after a second unused it
    is handed back: a full build's stages do not stack their freed buffers."""
    code = ARROW_IDLE_CHILD.format(idle=idle)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    held, after = (float(v) for v in done.stdout.split())
    assert (held - after >= 0.4) is handed_back, (held, after)
