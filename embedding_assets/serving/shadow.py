"""Shadow traffic: a share of live queries mirrored to a candidate version before it may serve.

`serve --shadow V` answers every query from the served state as always; a share of them (chosen by a
hash of the query text, so the same query is always in or out) is searched again on V's latest table in
a background thread, off the answer's path, and their agreement is appended to a log beside the serving
history: whether the top document matches, and the overlap of the top-10 documents. The log keeps a
digest of the query, never its text. The `shadow_agreement` gate reads it: a version may require a
number of shadow queries against what serves before its promotion (`gates: {shadow_queries: N}`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np

from embedding_assets.models.registry import ModelVersion
from embedding_assets.serving.filters import SearchFilter
from embedding_assets.serving.search import Searcher, hit_documents

log = logging.getLogger(__name__)
SHADOW_FOLDER = "shadow"  # in the serving folder: one JSON-lines log per candidate version
SHADOW_DEPTH = 10  # documents compared per query
MAX_PENDING = 64  # mirrored queries waiting at most; past that a query is not mirrored (counted as dropped)
HASH_SPACE = 2**32


def shadowed(query: str, share: float) -> bool:
    """Whether `query` is in the mirrored share: a stable choice by a hash of its text."""
    return int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) < share * HASH_SPACE


@dataclass(frozen=True)
class ShadowRecord:
    """One mirrored query: what served it, what the candidate answered, and how far they agree."""

    at: str
    query_sha256: str
    served_version: str
    served_table_version: int
    candidate: str
    candidate_fingerprint: str
    candidate_table_version: int
    top1_match: bool
    overlap_at_10: float
    candidate_ms: float


class ShadowLog:
    """The JSON-lines logs of shadow queries in a serving folder, one per candidate version."""

    def __init__(self, serving_folder: Path):
        self.folder = serving_folder / SHADOW_FOLDER

    def path(self, candidate: str) -> Path:
        return self.folder / f"{candidate}.jsonl"

    def append(self, record: ShadowRecord) -> None:
        """One line, written with a single append (whole on POSIX), so several servers can share a log."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode()
        fd = os.open(self.path(record.candidate), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self, candidate: str) -> list[ShadowRecord]:
        """Every whole record of `candidate` (a line torn by a crash is skipped)."""
        path = self.path(candidate)
        if not path.is_file():
            return []
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(ShadowRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue
        return found

    def agreement(self, candidate: ModelVersion, served_version: str) -> dict[str, Any]:
        """How the candidate, with the weights it pins now, agreed with `served_version` on live queries."""
        fingerprint = candidate.pinned_fingerprint()
        kept = [
            r
            for r in self.records(candidate.id)
            if r.candidate_fingerprint == fingerprint and r.served_version == served_version
        ]
        if not kept:
            return {"shadow_queries": 0}
        overlaps = np.array([r.overlap_at_10 for r in kept])
        return {
            "shadow_queries": len(kept),
            "top1_agreement": round(float(np.mean([r.top1_match for r in kept])), 4),
            "mean_overlap@10": round(float(overlaps.mean()), 4),
            "p10_overlap@10": round(float(np.quantile(overlaps, 0.1)), 4),
            "candidate_ms_p50": round(float(np.median([r.candidate_ms for r in kept])), 2),
            "first_shadowed_at": kept[0].at,
            "last_shadowed_at": kept[-1].at,
        }


class Shadow:
    """Mirrors a share of queries to a candidate version in one background thread and logs agreement."""

    def __init__(self, db: lancedb.DBConnection, candidate: ModelVersion, share: float, log: ShadowLog):
        if not 0 < share <= 1:
            raise ValueError(f"the shadow share must be in (0, 1], not {share}")
        self.searcher = Searcher(db, candidate)  # loads and verifies the candidate's model now
        self.share, self.log = share, log
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._lock = threading.Lock()
        self.pending = self.mirrored = self.dropped = self.failed = 0

    def offer(self, query: str, k: int, where: SearchFilter | None, served: dict[str, Any]) -> bool:
        """Mirror the query if it is in the share and the queue has room; `served` is the JSON answer
        the served state gave. Returns whether it was queued."""
        if not shadowed(query, self.share):
            return False
        with self._lock:
            if self.pending >= MAX_PENDING:
                self.dropped += 1
                return False
            self.pending += 1
        self._pool.submit(self._compare, query, max(k, SHADOW_DEPTH), where, served)
        return True

    def _compare(self, query: str, k: int, where: SearchFilter | None, served: dict[str, Any]) -> None:
        try:
            started = time.perf_counter()
            result = self.searcher.search(query, k, where)
            ms = (time.perf_counter() - started) * 1000
            old, new = hit_documents(served["hits"], SHADOW_DEPTH), hit_documents(result.hits, SHADOW_DEPTH)
            depth = min(SHADOW_DEPTH, max(len(old), 1))
            self.log.append(
                ShadowRecord(
                    at=datetime.now(UTC).isoformat(),
                    query_sha256=hashlib.sha256(query.encode()).hexdigest(),
                    served_version=served["model_version"],
                    served_table_version=served["table_version"],
                    candidate=self.searcher.version.id,
                    candidate_fingerprint=result.model_fingerprint,
                    candidate_table_version=result.table_version,
                    top1_match=bool(old and new and old[0] == new[0]),
                    overlap_at_10=round(len(set(old) & set(new[:depth])) / depth, 4),
                    candidate_ms=round(ms, 2),
                )
            )
            with self._lock:
                self.mirrored += 1
        except Exception as exc:  # noqa: BLE001  (a failed mirror must not go unseen, nor stop serving)
            log.warning(
                "shadow search on %s failed: %s: %s", self.searcher.version.id, type(exc).__name__, exc
            )
            with self._lock:
                self.failed += 1
        finally:
            with self._lock:
                self.pending -= 1

    def drain(self) -> None:
        """Wait for every queued comparison (a server stopping, a test)."""
        self._pool.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        return {
            "candidate": self.searcher.version.id,
            "share": self.share,
            "mirrored": self.mirrored,
            "dropped": self.dropped,
            "failed": self.failed,
            "pending": self.pending,
        }
