"""Hostile input (issue 11): each refused with a specific reason, quarantined, nothing lost, the run goes on.

Files, BEIR lines and PostgreSQL rows are made for real; a broken model is a real copy of MiniLM's weights
with one tensor damaged, loaded and run like the pinned one.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embedding_assets import locations
from embedding_assets.corpus.postgres.settings import PostgresSettings
from embedding_assets.corpus.postgres.source import PostgresSource
from embedding_assets.corpus.sources import (
    MAX_DOCUMENT_BYTES,
    MAX_RUN_CHARS,
    VANISHED,
    BeirSource,
    Document,
    FolderSource,
    Quarantined,
)
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.index import store, tables
from embedding_assets.index.embeddings import encode_into
from embedding_assets.metadata import EXAMPLES
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.fingerprint import fingerprint_weights
from embedding_assets.models.registry import ModelRegistryError, WeightsSource, load_registry
from embedding_assets_tests.project import BUILD

TEA = "# Tea\n\nSteep green tea for two minutes in water just off the boil.\n"

# file name -> (its bytes, then either the text it is read as or a fragment of its quarantine reason)
HOSTILE_FILES: dict[str, tuple[bytes, str]] = {
    "binary.md": (bytes(range(256)) * 64, "not valid UTF-8 at byte 128"),
    "nul.txt": (b"text before\x00text after", "contains NUL bytes"),
    "a|pipe\nand newline.md": (b"\x00\x01", "contains NUL bytes"),
    "latin1.md": ("caf\u00e9 au lait".encode("latin-1"), "not valid UTF-8 at byte 3"),
    "crlf-bom8.md": (codecs.BOM_UTF8 + TEA.replace("\n", "\r\n").encode(), TEA),
    "bom16le.md": (codecs.BOM_UTF16_LE + TEA.encode("utf-16-le"), "a UTF-16 LE byte-order mark: not UTF-8"),
    "bom16be.txt": (codecs.BOM_UTF16_BE + TEA.encode("utf-16-be"), "a UTF-16 BE byte-order mark"),
    "bom32le.rst": (codecs.BOM_UTF32_LE + TEA.encode("utf-32-le"), "a UTF-32 LE byte-order mark"),
    "bom8-then-latin1.md": (codecs.BOM_UTF8 + b"caf\xe9", "not valid UTF-8 at byte 6"),
    "one-line.md": (b"x" * 1_048_576, "a run of 1,048,576 characters without whitespace at line 1"),
    "data-uri.md": (b"# Logo\n\n![l](data:image/png;base64," + b"QUJD" * 3000 + b")\n", "at line 3"),
    "blank.md": (b" \n\t\n", "empty or whitespace-only"),
    'it\'s "quoted" `x`.md': (TEA.encode(), TEA),
    "new\nline.md": (TEA.encode(), TEA),
    "\u65e5\u672c\u8a9e \u30c9\u30ad\u30e5\u30e1\u30f3\u30c8.md": (TEA.encode(), TEA),
}
BIG_FILE, BIG_BYTES = "big.md", 50 * 1024 * 1024
NOT_UTF8_NAME = b"caf\xe9.md"  # a Latin-1 file name


def write_hostile_folder(root: Path) -> None:
    """HOSTILE_FILES under `root`, a sparse 50 MB file, and a file whose name is not UTF-8."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in HOSTILE_FILES.items():
        (root / name).write_bytes(data)
    with open(root / BIG_FILE, "wb") as f:
        f.truncate(BIG_BYTES)
    fd = os.open(os.path.join(os.fsencode(root), NOT_UTF8_NAME), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, TEA.encode())
    os.close(fd)


def test_every_hostile_file_is_read_right_or_quarantined_with_its_reason(tmp_path: Path):
    write_hostile_folder(tmp_path)
    items = {item.doc_id: item for item in FolderSource(tmp_path).read()}
    for name, (_, expected) in HOSTILE_FILES.items():
        item = items[name]
        if expected == TEA:
            assert isinstance(item, Document) and item.text == TEA and item.title == "Tea", name
            assert item.stored_size == len(HOSTILE_FILES[name][0]), name  # what the next scan compares
        else:
            assert isinstance(item, Quarantined) and expected in item.reason, (name, item)
    assert f"{BIG_BYTES:,} bytes exceeds the {MAX_DOCUMENT_BYTES:,}-byte" in items[BIG_FILE].reason
    assert "not read" in items[BIG_FILE].reason
    shown = "caf\\xe9.md"
    assert items[shown].reason == "file name is not valid UTF-8; not read" and items[shown].forget
    assert MAX_RUN_CHARS < 12_000 < 1_048_576  # the data URI's run is 12,000 characters


def test_a_hostile_folder_syncs_its_good_files_and_a_rescan_reads_nothing(tmp_path: Path):
    root = tmp_path / "corpus"
    write_hostile_folder(root)
    db = store.connect(tmp_path / "db")
    first = sync_corpus(db, FolderSource(root))
    readable = {name for name, (_, expected) in HOSTILE_FILES.items() if expected == TEA}
    assert set(first.added) == readable and first.documents == len(readable)
    assert {q.doc_id for q in first.quarantined} == set(HOSTILE_FILES) - readable | {BIG_FILE, "caf\\xe9.md"}
    stored = db.open_table(tables.DOCUMENTS_TABLE).to_arrow().to_pylist()
    assert {row["doc_id"] for row in stored} == readable and {row["text"] for row in stored} == {TEA}
    reasons = db.open_table(tables.QUARANTINE_TABLE).to_arrow().to_pylist()
    assert len(reasons) == len(first.quarantined) and all(row["reason"] for row in reasons)

    read: list[str] = []

    class Watched(FolderSource):
        def _read_one(self, path, doc_id, size, mtime_ns):
            read.append(doc_id)
            return super()._read_one(path, doc_id, size, mtime_ns)

    again = sync_corpus(db, Watched(root))
    assert (again.added, again.changed, again.deleted) == ([], [], [])
    assert readable.isdisjoint(read)  # a byte-order mark, CRLF or UTF-16 does not make a file look changed


def test_a_file_that_vanishes_between_listing_and_reading_keeps_its_last_version(tmp_path: Path):
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (root / name).write_text(f"# {name}\n\nThe first version of {name}.\n")
    db = store.connect(tmp_path / "db")
    assert sync_corpus(db, FolderSource(root)).documents == 3

    class DeletesB(FolderSource):
        """Deletes b.md for real once the listing is taken and a.md is read: the race a live folder has."""

        def read(self, known=None):
            for item in super().read(known):
                yield item
                if item.doc_id == "a.md":
                    (root / "b.md").unlink()

    (root / "a.md").write_text("# a.md\n\nThe second version.\n")
    raced = sync_corpus(db, DeletesB(root))
    assert raced.changed == ["a.md"] and raced.deleted == []
    assert [(q.doc_id, q.reason) for q in raced.quarantined] == [("b.md", VANISHED)]
    assert db.open_table(tables.DOCUMENTS_TABLE).count_rows() == 3  # b.md's last version is kept
    settled = sync_corpus(db, FolderSource(root))
    assert settled.deleted == ["b.md"] and settled.quarantined == []


def test_a_beir_corpus_keeps_the_first_of_duplicate_ids_and_quarantines_bad_lines(tmp_path: Path):
    lines = [
        json.dumps({"_id": "d1", "title": "First", "text": "the first d1"}).encode(),
        json.dumps({"_id": "d2", "text": "plain d2"}).encode(),
        json.dumps({"_id": "d1", "title": "Again", "text": "a second d1"}).encode(),
        b'{"_id": "d3", "text": "caf\xe9"}',
        b'{"_id": "d4", "text": ["not", "a", "string"]}',
        b"[1, 2, 3]",
        b'{"title": "no id"}',
        b"",
        json.dumps({"_id": "d5", "text": "y" * (MAX_RUN_CHARS + 1)}).encode(),
    ]
    (tmp_path / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    items = list(BeirSource(tmp_path).read())
    documents = {i.doc_id: i.text for i in items if isinstance(i, Document)}
    assert documents == {"d1": "First\n\nthe first d1", "d2": "plain d2"}
    reasons = {i.doc_id: i.reason for i in items if isinstance(i, Quarantined)}
    assert reasons["line:3"] == "duplicate _id 'd1': line 1 has it; kept"
    assert reasons["line:4"] == "not valid UTF-8 at byte 26 of the line"
    assert reasons["line:5"].startswith("malformed corpus record: TypeError")
    assert reasons["line:6"].startswith("malformed corpus record")
    assert reasons["line:7"].startswith("malformed corpus record: KeyError")
    assert "without whitespace" in reasons["d5"] and len(reasons) == 6
    db = store.connect(tmp_path / "db")
    synced = sync_corpus(db, BeirSource(tmp_path))  # once refused the whole run: an id yielded twice
    assert synced.added == ["d1", "d2"] and len(synced.quarantined) == 6


@pytest.fixture
def pg_table(postgres: PostgresSettings) -> Iterator[PostgresSettings]:
    """Settings for a table of the user's making: body and updated_at may be NULL. Dropped afterwards."""
    uid = uuid.uuid4().hex[:10]
    settings = replace(postgres, table=f"hostile_{uid}", slot=f"hostile_{uid}")
    source = PostgresSource(settings)
    source.feed.ensure_table()
    execute(settings, "ALTER TABLE {t} ALTER body DROP NOT NULL, ALTER updated_at DROP NOT NULL")
    yield settings
    source.feed.drop_slot()
    execute(settings, "DROP TABLE {t}")


def execute(settings: PostgresSettings, statement: str, *params: object) -> None:
    from psycopg2 import sql

    with closing(settings.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(sql.SQL(statement).format(t=sql.Identifier(settings.table)), params)


def test_postgres_rows_with_a_null_or_enormous_body_are_quarantined_and_never_fetched_whole(pg_table):
    insert = "INSERT INTO {t} (id, title, body, updated_at) VALUES (%s, %s, %s, %s)"
    execute(pg_table, insert, "ok", "Tea", "Steep it.", None)
    execute(pg_table, insert, "null-body", "Title only", None, None)
    execute(pg_table, insert, "huge", "", "z " * (MAX_DOCUMENT_BYTES // 2 + 1), None)
    source = PostgresSource(pg_table)
    snapshot = {item.doc_id: item for item in source.read({})}
    assert isinstance(snapshot["ok"], Document) and snapshot["ok"].updated_at is not None
    assert snapshot["null-body"].reason == "body is NULL"
    assert snapshot["huge"].reason == f"body of {MAX_DOCUMENT_BYTES + 2:,} bytes exceeds the " + (
        f"{MAX_DOCUMENT_BYTES:,}-byte document limit; not read"
    )
    assert [row.body for row in source.feed.fetch(["huge"])] == [None]  # measured in the server, not sent
    if source.end_lsn:
        source.advance(source.end_lsn)

    execute(pg_table, "UPDATE {t} SET body = NULL WHERE id = %s", "ok")  # through change capture too
    execute(pg_table, "UPDATE {t} SET body = %s WHERE id = %s", "Now it has a body.", "null-body")
    changed = {item.doc_id: item for item in PostgresSource(pg_table).read({"ok": None})}
    assert changed["ok"].reason == "body is NULL" and not changed["ok"].forget
    assert changed["null-body"].text == "# Title only\n\nNow it has a body."


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("versions:", "versions:\n  - id: [unclosed", 1), "is not valid YAML"),
        (lambda text: text.replace("loader: sentence-transformers", "loader: tensorflow-hub", 1), "loader"),
        (lambda text: "- a list\n- not a registry\n", "the file: Input should be a valid dictionary"),
        (lambda text: text.replace("dimension: 384", "dimension: -384", 1), "dimension"),
    ],
    ids=["malformed-yaml", "unknown-loader", "not-a-mapping", "negative-dimension"],
)
def test_a_broken_registry_is_refused_naming_the_file_and_the_entry(tmp_path: Path, edit, message: str):
    path = tmp_path / "model_registry.yaml"
    path.write_text(edit(locations.SHIPPED_REGISTRY.read_text()))
    with pytest.raises(ModelRegistryError, match=message) as refused:
        load_registry(path)
    assert str(path) in str(refused.value)
    if message in ("loader", "dimension"):
        assert "versions[0] ('minilm-l6-v2')" in str(refused.value)


@pytest.fixture
def damaged_minilm(minilm, tmp_path: Path) -> Iterator:
    """`damage(tensor, value)`: a pinned version whose weights are MiniLM's with one tensor set to
    `value` (a real model that emits what that makes), with its embedder."""
    from safetensors.numpy import load_file, save_file

    made: list[Path] = []

    def damage(values: dict[str, float]):
        folder = Path(minilm.models_dir) / f"{tmp_path.name}-{len(made)}"
        shutil.copytree(minilm.weights_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
        made.append(folder)
        weights = load_file(str(minilm.weights_path() / "model.safetensors"))
        for name, value in values.items():
            weights[name] = np.full_like(weights[name], value)
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        version = minilm.model_copy(
            update={
                "weights": WeightsSource(artifact=folder.name),
                "fingerprint": fingerprint_weights(folder),
            }
        )
        return version, embedder_for(version)

    yield damage
    for folder in made:
        shutil.rmtree(folder)


LAST_NORM = "encoder.layer.5.output.LayerNorm"


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({f"{LAST_NORM}.weight": np.nan}, "NaN or infinite"),
        ({f"{LAST_NORM}.weight": np.inf}, "NaN or infinite"),
        ({f"{LAST_NORM}.weight": 0.0, f"{LAST_NORM}.bias": 0.0}, "all-zero"),
    ],
    ids=["nan", "infinite", "zero"],
)
def test_a_model_that_emits_nan_infinite_or_zero_vectors_is_refused_before_caching(
    damaged_minilm, tmp_path: Path, values: dict[str, float], refusal: str
):
    version, embedder = damaged_minilm(values)
    table = store.open_table(store.connect(tmp_path / "db"), "cache", store.cache_schema(version.dimension))
    texts = [f"A sentence about {refusal} vectors, case {i}." for i in range(3)]
    with pytest.raises(ValueError, match=f"produced 3 {refusal} vector\\(s\\) in a batch of 3"):
        encode_into(table, [([f"h{i}" for i in range(3)], texts)], 3, embedder)
    assert table.count_rows() == 0


def test_a_registry_dimension_that_lies_is_refused_before_caching(minilm_embedder, tmp_path: Path):
    """The pinned MiniLM (its real 384-d output) under an entry that says 512: nothing is cached."""
    lying = copy.copy(minilm_embedder)
    lying.version = minilm_embedder.version.model_copy(update={"dimension": 512})
    table = store.open_table(store.connect(tmp_path / "db"), "cache", store.cache_schema(512))
    with pytest.raises(ValueError, match=r"produced shape \(1, 384\) for 1 texts; the registry says 512-d"):
        encode_into(table, [(["h"], ["A registry entry that claims 512 dimensions."])], 1, lying)
    assert table.count_rows() == 0


def test_the_pipeline_indexes_the_good_hostile_files_quarantines_the_rest_and_its_gates_pass(
    built_project, tmp_path: Path
):
    """Through Dagster, into the index: odd names (quotes, a newline, Japanese) and marked encodings are
    documents like any other; the refused files are listed with their reasons and the run goes on."""
    project = built_project.copy(tmp_path / "deployment")
    write_hostile_folder(project.corpus / "hostile")
    result = project.materialize(BUILD)
    assert result.success
    corpus_meta = project.metadata(result, "corpus")
    readable = {f"hostile/{name}" for name, (_, expected) in HOSTILE_FILES.items() if expected == TEA}
    refused = len(HOSTILE_FILES) + 2 - len(readable)
    assert corpus_meta["docs_added"] == len(readable) and corpus_meta["docs_quarantined"] == refused
    table = corpus_meta["quarantine"].splitlines()  # one line a row, whatever the names hold
    assert len(table) == 2 + EXAMPLES and "| hostile/a\\|pipe\\nand newline.md | contains NUL" in table[2]
    indexed = set(project.index_rows().column("doc_id").to_pylist())
    assert readable <= indexed and not any(i.startswith("hostile/") for i in indexed - readable)
    assert project.metadata(result, "embeddings")["chunks_embedded"] == 1  # one text, content-addressed
    gates = project.gates()
    assert gates.gates_passed, gates.checks
