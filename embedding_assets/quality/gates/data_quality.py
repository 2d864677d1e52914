"""Data-quality gate: great-expectations suites over a version's chunks and its index vectors.

great-expectations takes seconds to import (7 to 21 s on 2 cores: scipy.stats, altair, sqlalchemy). A
thread importing it beside a run's stages held the interpreter lock and slowed them as much as it saved,
so the gate validates in a worker process of its own (`validator`): a run about to be judged starts it
(`preload_expectations`; a refresh, before its corpus sync), it imports the library at the lowest priority
on the CPU the stages leave idle, and the gate sends it only the reduced frames; one no gate used is stopped
(`stop_idle_validator`). What that process runs is in `expectations`, which does not import
LanceDB. An ephemeral context costs milliseconds, so each validation builds its own, with analytics off.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets import metadata as md
from embedding_assets.index import store, tables
from embedding_assets.index.change_log import DOC_KEY, ChangeLog
from embedding_assets.index.chunking import SPECIAL_TOKENS
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.gates.expectations import (
    CHUNKS_SUITE,
    ID,
    MARK,
    SETTINGS,
    SUITES,
    VECTORS_SUITE,
    DataQualityReport,
    load_expectations,
    start_validator,
    validate_frames,
    validate_in_worker,
)

ADDRESS = "_rowaddr"  # a Lance row's address: its fragment id << FRAGMENT_SHIFT | its offset there
FRAGMENT_SHIFT = 32
BLOCK_ROWS = 16_384  # vectors are reduced this many rows at a time, bounding float64 scratch memory
# multiprocessing's exit runs finalizers of priority >= 0, highest first, before it joins children; its
# queues stop their feeder threads at priority 10, and the worker's stop message travels through one.
EXIT_PRIORITY = 20


@dataclass(frozen=True)
class TableMark:
    """How far a validation read one table: the table version, when it was committed (a number alone
    repeats once a table is dropped and made again), and the newest data fragment it held. Lance writes
    each new or rewritten row into a new fragment of a higher id, so the rows past the mark are exactly
    those written since. A compaction rewrites old rows too: unless the table's change log names the
    documents written since, they are validated again, never skipped."""

    version: int
    committed_at: str
    fragment: int  # -1: no data fragment yet

    def to_metadata(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, value: Any) -> TableMark | None:
        try:
            return cls(int(value["version"]), str(value["committed_at"]), int(value["fragment"]))
        except (TypeError, KeyError, ValueError):
            return None

    def still_names(self, table: lancedb.table.Table) -> bool:
        """Whether `table` is the one this mark was taken on: its version is still there, committed at the
        same time."""
        return str(store.version_committed_at(table, self.version)) == self.committed_at


@dataclass(frozen=True)
class ValidatedRows:
    """The reduced frame of one table to validate (None: nothing written since its mark), and its new mark."""

    frame: pd.DataFrame | None
    mark: TableMark | None
    since: TableMark | None  # the mark the rows were read past; None: every row was read


def check_version_data_quality(
    db: lancedb.DBConnection, version: ModelVersion, previous: dict | None = None
) -> DataQualityReport:
    """Validate the version's chunks table and index table as stored. Rows are read in streamed parts and
    reduced to what the expectations test (ids, token counts, text lengths, vector stats), so neither the
    texts nor the vectors of a whole table are held at once.

    `previous` is this gate's last metadata on the version: when it passed under the same settings and its
    marks still name versions of the same tables, only the rows written since are validated, with every
    row that shares a chunk id with one of them (a duplicate key is still found). A refresh then reads
    what it changed, not the whole table."""
    settings = {
        "dimension": version.dimension,
        "max_tokens": version.max_tokens,
        "normalize": version.normalize,
    }
    marks = _trusted_marks(previous or {}, settings)
    chunks = _rows_since(
        db, tables.chunks_table(version.id), [ID, "text", "token_count"], chunk_frame, marks.get(CHUNKS_SUITE)
    )
    rows = _rows_since(
        db, tables.index_table(version.id), [ID, "vector"], vector_frame, marks.get(VECTORS_SUITE)
    )
    started = time.perf_counter()
    new_marks = {CHUNKS_SUITE: chunks.mark, VECTORS_SUITE: rows.mark}
    since = {CHUNKS_SUITE: chunks.since, VECTORS_SUITE: rows.since}
    if chunks.frame is None and rows.frame is None:  # nothing written since a validation that passed
        return DataQualityReport([], 0, 0, 0.0, marks=new_marks, since=since, settings=settings)
    limits = {
        "dimension": version.dimension,
        "max_content_tokens": version.max_tokens - SPECIAL_TOKENS,
        "normalize": version.normalize,
    }
    _preloaded.clear()  # the worker now has work: never stopped as idle
    try:
        report, peak = validator().submit(validate_in_worker, chunks.frame, rows.frame, **limits).result()
    except BrokenProcessPool:  # the worker died (killed, out of memory): a new one validates once more
        validator.cache_clear()
        preload_expectations.cache_clear()
        report, peak = validator().submit(validate_in_worker, chunks.frame, rows.frame, **limits).result()
    return replace(
        report,
        seconds=time.perf_counter() - started,
        validator_peak_rss_gib=peak,
        marks=new_marks,
        since=since,
        settings=settings,
    )


def _trusted_marks(previous: dict, settings: dict) -> dict[str, TableMark]:
    """The marks of a previous validation that passed under the same settings ({} otherwise)."""
    if previous.get(md.GATE_LEVEL) != "pass" or previous.get(SETTINGS) != settings:
        return {}
    found = {suite: TableMark.from_metadata(previous.get(f"{suite}_{MARK}")) for suite in SUITES}
    return {suite: mark for suite, mark in found.items() if mark is not None}


def _rows_since(
    db: lancedb.DBConnection, name: str, columns: list[str], frame, mark: TableMark | None
) -> ValidatedRows:
    """The reduced rows of table `name` written after `mark` (every row without a usable mark), read at
    one table version throughout, and the mark to validate from next time."""
    if name not in store.table_names(db):
        return ValidatedRows(frame(store.read_columns(db, name, columns)), None, None)
    table = db.open_table(name)
    table.checkout(table.version)  # one version throughout, whatever another writer commits meanwhile
    committed = str(store.version_committed_at(table, table.version))
    if mark is None or not mark.still_names(table):
        parts, fragment = [], -1
        for batch in table.search().select([*columns, ADDRESS]).limit(None).to_batches(store.SCAN_BATCH):
            parts.append(frame(pa.Table.from_batches([batch])))
            fragment = max(fragment, _newest_fragment(batch[ADDRESS]))
        reduced = (
            pd.concat(parts, ignore_index=True) if parts else frame(store.read_columns(db, name, columns))
        )
        return ValidatedRows(reduced, TableMark(table.version, committed, fragment), None)
    written = (
        table.search()
        .where(f"{ADDRESS} >= {(mark.fragment + 1) << FRAGMENT_SHIFT}")
        .select([ID, ADDRESS])
        .limit(None)
        .to_arrow()
    )
    fragment = max(mark.fragment, _newest_fragment(written[ADDRESS]))
    new_mark = TableMark(table.version, committed, fragment)
    if written.num_rows == 0:
        return ValidatedRows(None, new_mark, mark)
    # A compaction moves old rows into new fragments: where the table's change log names the documents
    # written since the mark, only their rows are read (at 248k rows, 2.6k instead of the 67k a compaction
    # had moved). A duplicate key belongs to the same document, so it is still read.
    changed = ChangeLog(db, name).changed_after(
        f"{mark.version}@{mark.committed_at}", f"{table.version}@{committed}"
    )
    key, keys = (ID, written[ID]) if changed is None else (DOC_KEY, changed)
    parts = [frame(part) for part in store.table_batches_for_keys(table, key, keys, columns)]
    return ValidatedRows(pd.concat(parts, ignore_index=True) if parts else None, new_mark, mark)


def _newest_fragment(addresses: pa.Array | pa.ChunkedArray) -> int:
    newest = pc.max(pc.shift_right(addresses, FRAGMENT_SHIFT)).as_py()
    return -1 if newest is None else int(newest)


def validate_data_quality(
    chunks: pa.Table,
    rows: pa.Table,
    *,
    dimension: int,
    max_tokens: int,
    normalize: bool,
    norm_tolerance: float = 1e-3,
) -> DataQualityReport:
    """Run the chunks and vectors suites; `max_tokens` is the model limit including special tokens."""
    return validate_frames(
        chunk_frame(chunks),
        vector_frame(rows),
        dimension=dimension,
        max_content_tokens=max_tokens - SPECIAL_TOKENS,
        normalize=normalize,
        norm_tolerance=norm_tolerance,
    )


def owned(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The column's values in memory of their own. A zero-copy view of a scanned column keeps the Lance
    read buffer it points into alive: at 882,205 rows, the chunk ids kept from each batch of a scan
    pinned that batch's vectors too (2.3 GiB held where 0.85 sufficed)."""
    return column.to_numpy(zero_copy_only=False).copy()


def chunk_frame(chunks: pa.Table) -> pd.DataFrame:
    """chunk_id and token_count, whether the text is there, and its length once whitespace is stripped
    (the text itself is not kept)."""
    text = chunks.column("text").cast(pa.string())
    return pd.DataFrame(
        {
            ID: owned(chunks.column(ID)),
            "text_present": owned(pc.is_valid(text)),
            "token_count": owned(chunks.column("token_count").cast(pa.int64())),
            "text_stripped_length": owned(pc.utf8_length(pc.utf8_trim_whitespace(text))),
        }
    )


def vector_frame(rows: pa.Table) -> pd.DataFrame:
    """chunk_id with each vector's length, all-finite flag and L2 norm (NaN when not finite)."""
    dims, finite, norms = vector_stats(rows.column("vector")) if rows.num_rows else _empty_stats()
    return pd.DataFrame(
        {
            ID: owned(rows.column(ID)),
            "vector_dimension": dims,
            "vector_finite": finite,
            "vector_norm": norms,
        }
    )


def vector_stats(vectors: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (dimension, all finite, norm) from the flattened values; a null vector has dimension 0."""
    kind = vectors.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise TypeError(f"vector column is {vectors.type}, expected a list of floats")
    parts = [
        _block_stats(chunk.slice(start, BLOCK_ROWS))
        for chunk in vectors.chunks
        for start in range(0, len(chunk), BLOCK_ROWS)
    ]
    if not parts:
        return _empty_stats()
    dims, finite, norms = (np.concatenate(p) for p in zip(*parts, strict=True))
    return dims, finite, norms


def _block_stats(block: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dims = pc.fill_null(pc.list_value_length(block), 0).to_numpy().astype(np.int64)
    values = block.flatten().to_numpy(zero_copy_only=False).astype(np.float64)  # null elements -> NaN
    finite = np.ones(len(block), dtype=bool)
    sum_squares = np.zeros(len(block), dtype=np.float64)
    present = dims > 0
    if values.size:
        starts = (np.cumsum(dims) - dims)[present]
        finite[present] = np.logical_and.reduceat(np.isfinite(values), starts)
        with np.errstate(over="ignore", invalid="ignore"):
            sum_squares[present] = np.add.reduceat(np.square(values), starts)
    norms = np.sqrt(sum_squares)
    norms[~finite] = np.nan  # a non-finite vector has no norm: the finite expectation reports it
    return dims, finite, norms


def _empty_stats() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.float64)


@cache
def validator() -> ProcessPoolExecutor:
    """The process that runs `validate_frames` for this one (started once, on first use): it imports
    great_expectations as it starts, so the import runs beside this process's work, not inside it."""
    executor = ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=start_validator
    )
    # Shut the worker down before exit joins child processes. A process that multiprocessing started
    # (a run launched by a code server, a step of the multiprocess executor) joins its children before
    # concurrent.futures would stop the worker, and without this waits for it forever.
    multiprocessing.util.Finalize(None, _shutdown, args=(executor,), exitpriority=EXIT_PRIORITY)
    return executor


def _shutdown(executor: ProcessPoolExecutor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)


_preloaded: set[multiprocessing.process.BaseProcess] = set()  # started by a preload, given no work yet


@cache
def preload_expectations() -> None:
    """Start the validator now (once per process): the gate then finds great_expectations imported."""
    before = set(multiprocessing.active_children())
    validator().submit(load_expectations)
    _preloaded.update(set(multiprocessing.active_children()) - before)


def stop_idle_validator() -> bool:
    """Stop the validator a preload started if no validation has used it (the gates it was started for
    had nothing to judge): exit would otherwise wait for its import to finish. True if one was stopped;
    the next validation starts another."""
    if not _preloaded:
        return False
    validator().shutdown(wait=False, cancel_futures=True)
    for process in _preloaded:
        process.terminate()
        process.join(timeout=10)
        if process.is_alive():  # at the lowest priority on a busy machine it may not get to its handler
            process.kill()
            process.join()
    _preloaded.clear()
    validator.cache_clear()
    preload_expectations.cache_clear()
    return True
