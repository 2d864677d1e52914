"""Change logs on real LanceDB with the real MiniLM: after adds, edits, deletes and renames, stages that
read only the documents the logs name leave every table where a whole-table diff would (a whole-table pass
right after finds nothing to do); a write the log did not see, or one that crashed before its commit,
sends the next stage back to whole tables once."""

from pathlib import Path

import pytest
from lancedb.index import BTree

from embedding_assets.corpus.sources import FolderSource
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.index import change_log, compaction, embeddings, store, tables
from embedding_assets.index.change_log import ChangeLog
from embedding_assets.index.chunking import Chunker
from embedding_assets.index.chunks import sync_chunks
from embedding_assets.index.embeddings import sync_embeddings
from embedding_assets.index.rows import sync_index
from embedding_assets.quality.gates.counts import reconcile, table_states

TOPICS = ["lighthouse", "glacier", "orchard", "foundry", "estuary", "observatory", "monastery", "quarry"]


def _write(root: Path, name: str, words: str) -> None:
    path = root / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name}\n\nA note on the {words} kept by the change log tests.\n")


class Stages:
    """The corpus, chunks, embeddings and index stages of MiniLM over one folder, and what each read."""

    def __init__(self, root: Path, db, version, embedder):
        self.root, self.db, self.version, self.embedder = root, db, version, embedder
        self.chunker = Chunker(embedder.tokenizer, version.chunking, version.max_tokens)
        self.scopes: list[object] = []

    def run(self):
        corpus = sync_corpus(self.db, FolderSource(self.root))
        chunks = sync_chunks(self.db, self.version, self.chunker)
        embedded = sync_embeddings(self.db, self.embedder)
        indexed = sync_index(self.db, self.version)
        return corpus, chunks, embedded, indexed


@pytest.fixture
def stages(tmp_path, minilm, minilm_embedder, monkeypatch):
    root = tmp_path / "corpus"
    for n, topic in enumerate(TOPICS):
        _write(root, f"notes/{topic}", f"{topic} and its {n} keepers")
    done = Stages(root, store.connect(tmp_path / "lancedb"), minilm, minilm_embedder)
    real_scope = change_log.scope

    def spied(*args, **kwargs):
        found = real_scope(*args, **kwargs)
        done.scopes.append(found.docs)
        return found

    monkeypatch.setattr(change_log, "scope", spied)
    done.run()
    return done


def _whole_table_pass_finds_nothing(stages: Stages, monkeypatch) -> None:
    real_scope = change_log.scope
    monkeypatch.setattr(change_log, "scope", lambda *a: change_log.Scope(None, real_scope(*a).input_seq))
    _, chunks, embedded, indexed = stages.run()
    monkeypatch.setattr(change_log, "scope", real_scope)
    assert (chunks.chunks_written, chunks.chunks_deleted, embedded.encoded) == (0, 0, 0)
    assert (indexed.rows_upserted, indexed.rows_deleted) == (0, 0)
    counts = reconcile(stages.db, stages.version)
    assert counts.passed, counts.examples()


def test_stages_that_read_only_logged_documents_reach_what_a_whole_table_diff_does(stages, monkeypatch):
    root = stages.root
    rounds = [
        lambda: _write(root, "notes/harbour", "harbour and its cranes"),  # add
        lambda: _write(root, "notes/glacier", "glacier, now retreating"),  # edit
        lambda: (root / "notes/orchard.md").unlink(),  # delete
        lambda: (root / "notes/foundry.md").rename(root / "notes/forge.md"),  # rename: a delete and an add
    ]
    touched = [{"harbour"}, {"glacier"}, {"orchard"}, {"foundry", "forge"}]
    for change, expected in zip(rounds, touched, strict=True):
        change()
        stages.scopes.clear()
        corpus, chunks, embedded, indexed = stages.run()
        read = [set(s.to_pylist()) if s is not None else None for s in stages.scopes]
        assert read == [{f"notes/{name}.md" for name in expected}] * 3, (
            read
        )  # chunks, embeddings and index each read only those
        assert chunks.documents_chunked == len(set(corpus.added) | set(corpus.changed))
        assert indexed.rows_upserted + indexed.rows_deleted > 0
        _whole_table_pass_finds_nothing(stages, monkeypatch)


def test_a_write_the_log_did_not_see_sends_readers_to_whole_tables_once(stages, monkeypatch):
    documents = stages.db.open_table(tables.DOCUMENTS_TABLE)
    row = documents.search().where("doc_id = 'notes/quarry.md'").limit(1).to_arrow()
    edited = row.set_column(row.schema.get_field_index("doc_checksum"), "doc_checksum", [["edited"]])
    store.upsert(documents, edited, "doc_id")  # behind the log's back
    assert ChangeLog(stages.db, tables.DOCUMENTS_TABLE).head() is None

    _write(stages.root, "notes/estuary", "estuary at low tide")
    stages.scopes.clear()
    stages.run()
    assert stages.scopes[0] is None  # the sync's commit is not continuous: chunks diffs whole tables
    _whole_table_pass_finds_nothing(stages, monkeypatch)

    _write(stages.root, "notes/lighthouse", "lighthouse lamp, rebuilt")
    stages.scopes.clear()
    stages.run()
    assert [set(s.to_pylist()) for s in stages.scopes] == [{"notes/lighthouse.md"}] * 3


def test_a_write_that_crashed_before_its_commit_is_redone_from_whole_tables(stages, monkeypatch):
    _write(stages.root, "notes/monastery", "monastery bells at dawn")
    sync_corpus(stages.db, FolderSource(stages.root))
    real_delete = store.delete_keys

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the chunk writes and the deletes")

    monkeypatch.setattr(store, "delete_keys", crash)
    with pytest.raises(KeyboardInterrupt):
        sync_chunks(stages.db, stages.version, stages.chunker)
    monkeypatch.setattr(store, "delete_keys", real_delete)
    assert ChangeLog(stages.db, tables.chunks_table(stages.version.id)).head() is None

    stages.scopes.clear()
    stages.run()
    assert stages.scopes == [None] * 3  # the chunks' log no longer names its table: whole tables, once
    _whole_table_pass_finds_nothing(stages, monkeypatch)


def test_a_write_that_changes_no_row_keeps_the_log_usable(stages):
    name = tables.index_table(stages.version.id)
    log = ChangeLog(stages.db, name)
    with log.same_rows():
        stages.db.open_table(name).create_index("doc_id", config=BTree(), replace=True)
    assert log.head() is not None
    stages.db.open_table(name).create_index("chunk_id", config=BTree(), replace=True)  # unlogged
    assert log.head() is None


def test_reconciliation_compares_only_logged_documents_and_still_finds_their_damage(stages):
    db, version = stages.db, stages.version
    passed_at = table_states(db, version)
    _write(stages.root, "notes/observatory", "observatory dome at night")
    stages.run()
    since = reconcile(db, version, passed_at)
    assert since.passed and since.from_change_logs and since.documents_compared == 1
    assert (since.chunks, since.rows) == (reconcile(db, version).chunks, reconcile(db, version).rows)

    passed_at = table_states(db, version)
    index = db.open_table(tables.index_table(version.id))
    log = ChangeLog(db, index.name)
    head = log.head()
    with log.write(head.settings, head.input_seq) as logged:  # a logged write that loses a row
        logged.touches(["notes/glacier.md"])
        index.delete("chunk_id = 'notes/glacier.md#0'")
    damaged = reconcile(db, version, passed_at)
    assert damaged.from_change_logs and damaged.problems["missing_rows"] == ["notes/glacier.md#0"]

    passed_at = table_states(db, version)
    index.delete("chunk_id = 'notes/estuary.md#0'")  # unlogged: every document is compared
    unlogged = reconcile(db, version, passed_at)
    assert not unlogged.from_change_logs and unlogged.documents_compared == len(TOPICS)
    assert set(unlogged.problems["missing_rows"]) == {"notes/glacier.md#0", "notes/estuary.md#0"}


def test_a_log_that_names_the_wrong_document_is_caught_by_the_totals(stages):
    db, version = stages.db, stages.version
    passed_at = table_states(db, version)
    index = db.open_table(tables.index_table(version.id))
    log = ChangeLog(db, index.name)
    head = log.head()
    with log.write(head.settings, head.input_seq) as logged:
        logged.touches(["notes/glacier.md"])
        index.delete("chunk_id = 'notes/quarry.md#0'")  # not the document it logged
    wrong = reconcile(db, version, passed_at)
    assert not wrong.from_change_logs and wrong.problems["missing_rows"] == ["notes/quarry.md#0"]


def test_compaction_merges_small_fragments_moves_no_row_and_keeps_the_logs_usable(stages, monkeypatch):
    """Each refresh appends a fragment to every table; maintenance compacts the documents, chunks and
    cache tables and the change logs once past the limit, and the next refresh still reads only the
    documents its logs name."""
    monkeypatch.setattr(compaction, "MAX_SMALL_FRAGMENTS", 2)
    for n, topic in enumerate(TOPICS[:3]):
        _write(stages.root, f"notes/{topic}", f"{topic} and its {n} keepers, edited for compaction")
        stages.run()
    keys = {
        tables.DOCUMENTS_TABLE: ["doc_id", "doc_checksum"],
        tables.chunks_table(stages.version.id): ["chunk_id", "chunk_hash"],
        tables.cache_table(stages.version.encoder_key()): ["chunk_hash"],
    }

    def rows() -> dict[str, list]:
        return {
            name: sorted(store.read_columns(stages.db, name, c).to_pylist(), key=str)
            for name, c in keys.items()
        }

    before = rows()
    due = set(compaction.fragmented(stages.db, stages.version))
    assert set(keys) <= due and tables.change_log_table(tables.index_table(stages.version.id)) in due
    done = compaction.compact_pipeline_tables(stages.db, stages.version)
    assert {c.table for c in done} == due
    assert all(c.small_fragments_after < c.small_fragments_before for c in done)
    assert compaction.fragmented(stages.db, stages.version) == []
    assert rows() == before

    stages.scopes.clear()
    _write(stages.root, "notes/quarry", "quarry and its keepers, edited after compaction")
    stages.run()
    assert [s.to_pylist() for s in stages.scopes] == [["notes/quarry.md"]] * 3  # logs still name the change
    _whole_table_pass_finds_nothing(stages, monkeypatch)


def test_a_build_that_writes_many_cache_batches_leaves_the_cache_compacted(
    tmp_path, minilm, minilm_embedder, monkeypatch
):
    """A full build writes the cache a batch per commit (so a crash keeps what was encoded), then merges
    those fragments before a refresh has to look keys up in them."""
    monkeypatch.setattr(embeddings, "CACHE_WRITE_BATCH", 1)
    monkeypatch.setattr(compaction, "MAX_SMALL_FRAGMENTS", 2)
    root = tmp_path / "corpus"
    for n, topic in enumerate(TOPICS[:4]):
        _write(root, f"built/{topic}", f"{topic} built in one batch per chunk, number {n}")
    built = Stages(root, store.connect(tmp_path / "lancedb"), minilm, minilm_embedder)
    *_, embedded, _ = built.run()
    cache = built.db.open_table(tables.cache_table(minilm.encoder_key()))
    assert embedded.encoded == 4 and cache.count_rows() == 4
    assert compaction.small_fragments(cache) == 1
    assert ChangeLog(built.db, cache.name).head() is not None  # the merge is logged as moving no row
