"""Failpoints: named places between two writes where a crash test stops this process.

With `EMBEDDING_ASSETS_FAILPOINT=<name>` in its environment, a process that reaches `failpoint(<name>)`
(`<name>:<n>`: the n-th time) writes its pid to the file `EMBEDDING_ASSETS_FAILPOINT_MARKER` names and
waits there, so a harness can look at what readers see and then kill it with SIGKILL, as a crash would,
or run a second writer and then delete the marker to let this one go on (a concurrency test).
Unset (always, outside crash tests), a failpoint costs one environment lookup. The environment is read
when a failpoint is reached, not at import, so a test sets it per process.
"""

from __future__ import annotations

import os
import time
from collections import Counter

FAILPOINT_ENV = "EMBEDDING_ASSETS_FAILPOINT"
MARKER_ENV = "EMBEDDING_ASSETS_FAILPOINT_MARKER"
RESUME_POLL_SECONDS = 0.05

# Where a crash can fall, in the order a refresh (and a promotion or rollback) reaches them.
CORPUS_WRITTEN = "corpus.written"  # new and changed documents committed; deletions not yet
CORPUS_SYNCED = "corpus.synced"  # the corpus run finished; no version refreshed yet
CHUNKS_WRITTEN = "chunks.written"  # a version's new chunks committed; obsolete ones not yet deleted
EMBEDDINGS_ENCODED = "embeddings.encoded"  # a batch encoded, not yet in the cache
EMBEDDINGS_CACHED = "embeddings.cached"  # a batch committed to the cache
INDEX_UPSERTED = "index.upserted"  # index rows written; rows of deleted chunks not yet removed
INDEX_DELETED = "index.deleted"  # the index table complete; not yet gated
SENTINELS_WRITTEN = "sentinels.written"  # a new version's sentinels stored; no gate judged yet
GATE_JUDGED = "gates.judged"  # one gate has reported, the others not yet
POINTER_MOVED = "pointer.moved"  # the pointer file replaced; its history line not yet appended
CDC_ADVANCING = "cdc.advancing"  # every live version indexed the batch; the slot not yet advanced

FAILPOINTS = (
    CORPUS_WRITTEN,
    CORPUS_SYNCED,
    CHUNKS_WRITTEN,
    EMBEDDINGS_ENCODED,
    EMBEDDINGS_CACHED,
    INDEX_UPSERTED,
    INDEX_DELETED,
    SENTINELS_WRITTEN,
    GATE_JUDGED,
    POINTER_MOVED,
    CDC_ADVANCING,
)
_reached: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Stop here if this process's environment names `name`: until killed, or until the marker is gone."""
    wanted = os.environ.get(FAILPOINT_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] != int(nth or 1):
        return
    marker = os.environ.get(MARKER_ENV)
    if not marker:
        while True:
            time.sleep(3600)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    while os.path.exists(marker):
        time.sleep(RESUME_POLL_SECONDS)
