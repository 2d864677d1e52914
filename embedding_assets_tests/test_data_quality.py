"""The data-quality gate with real great-expectations, on small hand-built tables and a tmp LanceDB."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from embedding_assets import metadata as md
from embedding_assets.index import store, tables
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.index.chunking import SPECIAL_TOKENS
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.gates import data_quality as dq
from embedding_assets.quality.gates.data_quality import DataQualityReport, check_version_data_quality
from embedding_assets.quality.gates.data_quality import validate_data_quality as validate
from embedding_assets.quality.gates.expectations import VALIDATOR_NICENESS

DIM = 8
MAX_TOKENS = 32
SENTENCES = [
    "The argparse module makes it easy to write user-friendly command-line interfaces.",
    "A for statement iterates over the items of any sequence, in the order they appear.",
    "The try statement specifies exception handlers and cleanup code for a group of statements.",
    "JSON is a lightweight data interchange format inspired by JavaScript object literal syntax.",
    "The csv module implements classes to read and write tabular data in CSV format.",
    "The shlex class makes it easy to write lexical analyzers for simple shell-like syntaxes.",
]
IDS = [f"library/doc{i}.md#{i % 2}" for i in range(len(SENTENCES))]
Rows = dict[str, list]


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clean() -> tuple[Rows, Rows]:
    """Six sound chunks with unit vectors; the first sits exactly at the model's content-token limit."""
    tokens = [MAX_TOKENS - SPECIAL_TOKENS] + [len(s.split()) for s in SENTENCES[1:]]
    chunks = {"chunk_id": list(IDS), "text": list(SENTENCES), "token_count": tokens}
    rows = {"chunk_id": list(IDS), "vector": [v.tolist() for v in unit_vectors(len(IDS), DIM)]}
    return chunks, rows


def run(chunks: Rows, rows: Rows, normalize: bool = True) -> DataQualityReport:
    """Validate, with vectors as a plain list<float32> column so a damaged row may differ in length."""
    chunk_table = pa.table(
        {
            "chunk_id": pa.array(chunks["chunk_id"], pa.string()),
            "text": pa.array(chunks["text"], pa.string()),
            "token_count": pa.array(chunks["token_count"], pa.int32()),
        }
    )
    row_table = pa.table(
        {
            "chunk_id": pa.array(rows["chunk_id"], pa.string()),
            "vector": pa.array(rows["vector"], pa.list_(pa.float32())),
        }
    )
    return validate(chunk_table, row_table, dimension=DIM, max_tokens=MAX_TOKENS, normalize=normalize)


def failing(report: DataQualityReport) -> set[tuple[str, str, str]]:
    return {(o.suite, o.expectation, o.column) for o in report.failures()}


def set_value(table: str, column: str, index: int, value: object) -> Callable[[Rows, Rows], None]:
    def damage(chunks: Rows, rows: Rows) -> None:
        (chunks if table == "chunks" else rows)[column][index] = value

    return damage


def scaled(index: int, factor: float) -> Callable[[Rows, Rows], None]:
    def damage(chunks: Rows, rows: Rows) -> None:
        rows["vector"][index] = [x * factor for x in rows["vector"][index]]

    return damage


def _buffer_spans(table: pa.Table) -> list[tuple[int, int]]:
    return [
        (b.address, b.address + b.size)
        for column in table.columns
        for chunk in column.chunks
        for b in chunk.buffers()
        if b is not None and b.size
    ]


def test_reduced_frames_keep_no_view_of_the_rows_they_reduce() -> None:
    """The gate keeps each scanned batch's reduced frame until the scan ends: a column that still points
    into the batch (a zero-copy view) would keep the whole batch, vectors included, alive."""
    chunks, rows = clean()
    chunk_table = pa.table(
        {
            "chunk_id": pa.array(chunks["chunk_id"], pa.string()),
            "text": pa.array(chunks["text"], pa.string()),
            "token_count": pa.array(chunks["token_count"], pa.int64()),  # no cast: a view unless copied
        }
    )
    row_table = pa.table(
        {
            "chunk_id": pa.array(rows["chunk_id"], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ravel(rows["vector"]), pa.float32()), DIM
            ),
        }
    )
    for table, frame in ((chunk_table, dq.chunk_frame(chunk_table)), (row_table, dq.vector_frame(row_table))):
        scanned = _buffer_spans(table)
        for name in frame.columns:
            kept = pa.table({name: pa.array(frame[name].array)})  # zero-copy where the frame allows it
            for start, end in _buffer_spans(kept):
                assert not any(s < end and start < e for s, e in scanned), f"{name} points into the batch"


def test_clean_tables_pass() -> None:
    report = run(*clean())
    assert report.passed, report.table()
    assert (report.chunks, report.rows) == (len(IDS), len(IDS))
    assert {o.suite for o in report.outcomes} == {"chunks", "vectors"}
    token_bound = next(o for o in report.outcomes if o.column == "token_count" and "min_value" in o.kwargs)
    assert token_bound.kwargs["max_value"] == MAX_TOKENS - SPECIAL_TOKENS


@pytest.mark.parametrize(
    ("damage", "expectation", "offenders"),
    [
        (
            set_value("chunks", "chunk_id", 3, IDS[2]),
            ("chunks", "expect_column_values_to_be_unique", "chunk_id"),
            [IDS[2]],
        ),
        (
            set_value("rows", "chunk_id", 4, IDS[1]),
            ("vectors", "expect_column_values_to_be_unique", "chunk_id"),
            [IDS[1]],
        ),
        (
            set_value("chunks", "text", 1, ""),
            ("chunks", "expect_column_values_to_be_between", "text_stripped_length"),
            [IDS[1]],
        ),
        (
            set_value("chunks", "text", 5, " \n\t "),
            ("chunks", "expect_column_values_to_be_between", "text_stripped_length"),
            [IDS[5]],
        ),
        (
            set_value("chunks", "token_count", 2, MAX_TOKENS - SPECIAL_TOKENS + 1),
            ("chunks", "expect_column_values_to_be_between", "token_count"),
            [IDS[2]],
        ),
        (
            set_value("rows", "vector", 3, [float("nan")] + unit_vectors(1, DIM - 1).ravel().tolist()),
            ("vectors", "expect_column_values_to_be_in_set", "vector_finite"),
            [IDS[3]],
        ),
        (
            set_value("rows", "vector", 2, unit_vectors(1, DIM - 1).ravel().tolist()),
            ("vectors", "expect_column_values_to_be_between", "vector_dimension"),
            [IDS[2]],
        ),
        (scaled(4, 1.5), ("vectors", "expect_column_values_to_be_between", "vector_norm"), [IDS[4]]),
    ],
    ids=[
        "duplicate-chunk-id",
        "duplicate-row-id",
        "empty-text",
        "whitespace-text",
        "token-count-over-limit",
        "nan-in-vector",
        "wrong-dimension",
        "not-unit-norm",
    ],
)
def test_each_damage_fails_only_its_expectation(
    damage: Callable[[Rows, Rows], None], expectation: tuple[str, str, str], offenders: list[str]
) -> None:
    chunks, rows = clean()
    damage(chunks, rows)
    report = run(chunks, rows)
    assert failing(report) == {expectation}, report.table()
    (failure,) = report.failures()
    rows_with_offenders = (chunks if failure.suite == "chunks" else rows)["chunk_id"].count(offenders[0])
    assert failure.observed["unexpected_count"] == rows_with_offenders  # both copies of a duplicate
    assert failure.observed["partial_unexpected_list"] == offenders
    json.dumps([o.observed for o in report.outcomes] + [o.kwargs for o in report.outcomes])


@pytest.mark.parametrize(
    ("damage", "normalize", "passed"),
    [
        (scaled(0, 3.0), True, False),
        (scaled(0, 3.0), False, True),
        (scaled(0, 0.0), False, False),
    ],
    ids=["long-vector-normalized", "long-vector-not-normalized", "zero-vector-not-normalized"],
)
def test_norm_bound_follows_normalize(
    damage: Callable[[Rows, Rows], None], normalize: bool, passed: bool
) -> None:
    chunks, rows = clean()
    damage(chunks, rows)
    report = run(chunks, rows, normalize=normalize)
    assert report.passed is passed
    assert {o.column for o in report.failures()} <= {"vector_norm"}


def test_offenders_are_capped_at_five() -> None:
    chunks, rows = clean()
    chunks["text"] = ["   "] * len(IDS)
    (failure,) = run(chunks, rows).failures()
    assert failure.observed["unexpected_count"] == len(IDS)
    assert failure.observed["partial_unexpected_list"] == IDS[:5]


def test_empty_tables_fail_on_row_count() -> None:
    report = run({"chunk_id": [], "text": [], "token_count": []}, {"chunk_id": [], "vector": []})
    assert failing(report) == {
        ("chunks", "expect_table_row_count_to_be_between", ""),
        ("vectors", "expect_table_row_count_to_be_between", ""),
    }
    assert all(o.observed["observed_value"] == 0 for o in report.failures())
    assert "**no**" in report.table()


def run_script(folder: Path, code: str) -> None:
    """Run `code` as a script in a Python process of its own; it must exit cleanly."""
    script = folder / "script.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_gate_validates_in_a_worker_process_and_never_imports_the_library_here(tmp_path: Path) -> None:
    """A run's own process never imports great_expectations (its import held the interpreter lock beside
    the stages): the validator process imports it and sends back the report. The run is a process that
    multiprocessing started, as a code server starts a launched run: it still exits when its work is done
    (its exit joins child processes, the validator among them, which is shut down first)."""
    run_script(
        tmp_path,
        "import multiprocessing, sys, lancedb\n"
        "from embedding_assets.models.registry import DEFAULT_VERSION, load_registry\n"
        "from embedding_assets.quality.gates.data_quality import check_version_data_quality\n"
        "def judge():\n"
        f"    db = lancedb.connect({str(tmp_path)!r})\n"
        "    report = check_version_data_quality(db, load_registry().get(DEFAULT_VERSION))\n"
        "    assert not report.passed and report.validator_peak_rss_gib > 0, report\n"
        "    assert 'great_expectations' not in sys.modules\n"
        "if __name__ == '__main__':\n"
        "    run = multiprocessing.get_context('spawn').Process(target=judge)\n"
        "    run.start()\n"
        "    run.join(timeout=300)\n"
        "    ended = run.exitcode\n"
        "    run.kill()\n"
        "    assert ended == 0, f'the run process ended {ended} (None: still running)'\n",
    )


def test_a_validator_preloaded_for_gates_that_never_ran_is_stopped_and_one_in_use_is_kept(
    tmp_path: Path,
) -> None:
    """A refresh starts the validator before it knows whether any gate will run. With nothing to judge it
    is stopped mid-import (exit would wait for that import); once a validation has used it, it stays.
    In a process of its own, so this session's validator is left alone."""
    run_script(
        tmp_path,
        "import multiprocessing, lancedb\n"
        "from embedding_assets.models.registry import DEFAULT_VERSION, load_registry\n"
        "from embedding_assets.quality.gates import data_quality as dq\n"
        "if __name__ == '__main__':\n"
        "    dq.preload_expectations()\n"
        "    (worker,) = multiprocessing.active_children()\n"
        "    assert dq.stop_idle_validator() and not worker.is_alive() and not dq.stop_idle_validator()\n"
        f"    db = lancedb.connect({str(tmp_path)!r})\n"
        "    dq.preload_expectations()\n"
        "    report = dq.check_version_data_quality(db, load_registry().get(DEFAULT_VERSION))\n"
        "    assert not report.passed and report.validator_peak_rss_gib, report\n"
        "    (used,) = multiprocessing.active_children()\n"
        "    assert not dq.stop_idle_validator() and used.is_alive() and used.pid != worker.pid\n",
    )


def test_a_validator_that_died_is_replaced_and_the_gate_still_answers(tmp_path: Path, minilm) -> None:
    """The worker killed outright (as the kernel's OOM killer would): the next validation starts another."""
    worker = dq.validator().submit(os.getpid).result(timeout=600)
    os.kill(worker, signal.SIGKILL)
    report = check_version_data_quality(lancedb.connect(tmp_path), minilm)  # no tables: a report, no error
    assert not report.passed and report.validator_peak_rss_gib
    assert dq.validator().submit(os.getpid).result(timeout=600) != worker


def test_the_validator_runs_at_the_lowest_priority() -> None:
    """Its import and validations take the CPU the run leaves idle, not a share of the run's."""
    assert dq.validator().submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=600) == VALIDATOR_NICENESS


def stored_rows(
    version: ModelVersion, ids: list[str], texts: list[str], vectors: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """Chunk rows and index rows as the pipeline stores them."""
    now = datetime.now(UTC)
    chunk_records = [
        {
            "chunk_id": cid,
            "doc_id": cid.split("#")[0],
            "source_uri": f"file:///{cid.split('#')[0]}",
            "doc_checksum": "c0ffee",
            "chunk_ordinal": int(cid.split("#")[1]),
            "chunk_hash": f"h{cid}",
            "text": text,
            "char_start": 0,
            "char_end": len(text),
            "token_count": len(text.split()),
            "pipeline_config_hash": "p",
        }
        for cid, text in zip(ids, texts, strict=True)
    ]
    provenance = {"model_version": version.id, "model_fingerprint": version.fingerprint}
    index_records = [
        {**c, **provenance, "embedded_at": now, "indexed_at": now, "vector": v.tolist()}
        for c, v in zip(chunk_records, vectors, strict=True)
    ]
    return (
        pa.Table.from_pylist(chunk_records, schema=store.CHUNKS_SCHEMA),
        pa.Table.from_pylist(index_records, schema=store.index_schema(version.dimension)),
    )


def test_check_version_data_quality_reads_lancedb(tmp_path: Path, minilm: ModelVersion) -> None:
    db = lancedb.connect(tmp_path)
    missing = check_version_data_quality(db, minilm)
    assert {o.expectation for o in missing.failures()} == {"expect_table_row_count_to_be_between"}

    vectors = unit_vectors(len(IDS), minilm.dimension)
    vectors[2] *= 2.0
    chunk_rows, index_rows = stored_rows(minilm, IDS, SENTENCES, vectors)
    db.create_table(tables.chunks_table(minilm.id), chunk_rows)
    db.create_table(tables.index_table(minilm.id), index_rows)

    report = check_version_data_quality(db, minilm)
    assert (report.chunks, report.rows) == (len(IDS), len(IDS))
    assert failing(report) == {("vectors", "expect_column_values_to_be_between", "vector_norm")}
    assert report.failures()[0].observed["partial_unexpected_list"] == [IDS[2]]
    assert report.failures()[0].kwargs == {"min_value": 0.999, "max_value": 1.001}


def test_the_validated_frames_are_not_kept_after_the_report() -> None:
    """great-expectations keeps its last context alive; the frames it validated must not stay with it (at
    882,126 rows they held 1.9 GiB after the gate)."""
    chunks, rows = clean()
    chunk_frame = dq.chunk_frame(pa.table({k: pa.array(v) for k, v in chunks.items()}))
    vectors = pa.array(rows["vector"], pa.list_(pa.float32()))
    vector_frame = dq.vector_frame(pa.table({"chunk_id": pa.array(rows["chunk_id"]), "vector": vectors}))
    alive = [weakref.ref(chunk_frame), weakref.ref(vector_frame)]
    report = dq.validate_frames(
        chunk_frame,
        vector_frame,
        dimension=DIM,
        max_content_tokens=MAX_TOKENS - SPECIAL_TOKENS,
        normalize=True,
    )
    del chunk_frame, vector_frame
    gc.collect()
    assert report.passed and [ref() for ref in alive] == [None, None]


def test_after_a_validation_that_passed_only_rows_written_since_are_read_and_their_damage_is_found(
    tmp_path: Path, minilm: ModelVersion
) -> None:
    """A refresh reads what it wrote: rows past the last validated fragment, with every row sharing a key
    with one of them, so a damaged rewrite and a duplicated key are both still found."""
    db = lancedb.connect(tmp_path)
    chunk_rows, index_rows = stored_rows(minilm, IDS, SENTENCES, unit_vectors(len(IDS), minilm.dimension))
    chunks = db.create_table(tables.chunks_table(minilm.id), chunk_rows)
    index = db.create_table(tables.index_table(minilm.id), index_rows)

    def after(report: DataQualityReport) -> dict:
        return {md.GATE_LEVEL: "pass" if report.passed else "block", **report.to_metadata()}

    first = check_version_data_quality(db, minilm)
    assert first.passed and (first.chunks, first.rows) == (len(IDS), len(IDS))
    assert first.since == {dq.CHUNKS_SUITE: None, dq.VECTORS_SUITE: None}

    unchanged = check_version_data_quality(db, minilm, after(first))
    assert unchanged.passed and unchanged.outcomes == [] and (unchanged.chunks, unchanged.rows) == (0, 0)

    # One document edited: its chunk and index rows rewritten, the vector damaged (norm 2).
    damaged = unit_vectors(1, minilm.dimension, seed=7) * 2.0
    new_chunk, new_row = stored_rows(minilm, [IDS[3]], ["An edited sentence about JSON."], damaged)
    chunks.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(new_chunk)
    index.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(new_row)
    edited = check_version_data_quality(db, minilm, after(unchanged))
    assert (edited.chunks, edited.rows) == (1, 1)  # the rewritten rows, not the table
    assert failing(edited) == {("vectors", "expect_column_values_to_be_between", "vector_norm")}
    assert edited.failures()[0].observed["partial_unexpected_list"] == [IDS[3]]
    assert edited.to_metadata()["vectors_read"].startswith("rows written since table version")

    # The gate that failed is no ground to skip rows: the next validation reads every row again.
    assert check_version_data_quality(db, minilm, after(edited)).rows == len(IDS)

    # A row appended under a key the table already holds: it and the row it duplicates are read.
    repaired = stored_rows(minilm, [IDS[3]], [SENTENCES[3]], unit_vectors(1, minilm.dimension))[1]
    index.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(repaired)
    clean = check_version_data_quality(db, minilm)
    assert clean.passed
    clean_state = after(clean)
    index.add(stored_rows(minilm, [IDS[0]], [SENTENCES[0]], unit_vectors(1, minilm.dimension, seed=9))[1])
    duplicated = check_version_data_quality(db, minilm, clean_state)
    assert duplicated.rows == 2
    assert failing(duplicated) == {("vectors", "expect_column_values_to_be_unique", "chunk_id")}

    # A table dropped and made again restarts its versions and fragments: every row is read.
    db.drop_table(tables.index_table(minilm.id))
    db.create_table(tables.index_table(minilm.id), index_rows)
    remade = check_version_data_quality(db, minilm, clean_state)
    assert remade.rows == len(IDS) and remade.since[dq.VECTORS_SUITE] is None


def test_rows_a_compaction_moved_are_not_read_again_where_the_change_log_names_what_was_written(
    tmp_path: Path, minilm: ModelVersion
) -> None:
    """Index maintenance compacts fragments, which moves every row it touches into a new fragment. With
    the writes logged (as the pipeline logs them), the validation after a compaction and an edit reads
    the edited document's rows only, and still finds their damage."""
    db = lancedb.connect(tmp_path)
    chunk_rows, index_rows = stored_rows(minilm, IDS, SENTENCES, unit_vectors(len(IDS), minilm.dimension))
    names = (tables.chunks_table(minilm.id), tables.index_table(minilm.id))

    def logged_write(rows_of: dict[str, pa.Table], write: Callable[[str, pa.Table], None]) -> None:
        for name, rows in rows_of.items():
            with ChangeLog(db, name).write("settings", None) as logged:
                logged.touches(rows["doc_id"])
                write(name, rows)

    first, rest = (
        {n: r.slice(0, 3) for n, r in zip(names, (chunk_rows, index_rows), strict=True)},
        {n: r.slice(3) for n, r in zip(names, (chunk_rows, index_rows), strict=True)},
    )
    logged_write(first, lambda name, rows: db.create_table(name, rows))
    logged_write(rest, lambda name, rows: db.open_table(name).add(rows))  # a second fragment
    validated = check_version_data_quality(db, minilm)
    assert validated.passed and (validated.chunks, validated.rows) == (len(IDS), len(IDS))
    state = {md.GATE_LEVEL: "pass", **validated.to_metadata()}

    for name in names:
        with ChangeLog(db, name).same_rows():
            db.open_table(name).optimize()  # both fragments rewritten into one new fragment
    damaged = unit_vectors(1, minilm.dimension, seed=7) * 2.0
    edit = dict(
        zip(names, stored_rows(minilm, [IDS[3]], ["An edited sentence about JSON."], damaged), strict=True)
    )

    def upsert(name: str, rows: pa.Table) -> None:
        db.open_table(name).merge_insert(
            "chunk_id"
        ).when_matched_update_all().when_not_matched_insert_all().execute(rows)

    logged_write(edit, upsert)
    edited = check_version_data_quality(db, minilm, state)
    assert (edited.chunks, edited.rows) == (1, 1)  # the edited document's rows, not the compacted ones
    assert failing(edited) == {("vectors", "expect_column_values_to_be_between", "vector_norm")}
    assert edited.failures()[0].observed["partial_unexpected_list"] == [IDS[3]]
