"""End to end on a real corpus: the real MiniLM model, LanceDB on disk, an ephemeral Dagster instance."""

import dagster as dg
import pyarrow.compute as pc
import pytest

from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.checks.gates import COUNT_RECONCILIATION, index_gates
from embedding_assets.defs.jobs import PER_VERSION
from embedding_assets.index import tables
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets.serving import search as search_module
from embedding_assets.serving.search import Searcher, ServedSearch, served_searcher
from embedding_assets_tests.project import BUILD, Project

pytestmark = pytest.mark.slow
PROVENANCE = [
    "doc_id",
    "source_uri",
    "doc_checksum",
    "chunk_id",
    "chunk_ordinal",
    "chunk_hash",
    "text",
    "model_version",
    "model_fingerprint",
    "pipeline_config_hash",
    "embedded_at",
    "indexed_at",
    "vector",
]


@pytest.fixture(scope="module")
def project(built_project, tmp_path_factory) -> Project:
    project = built_project.copy(tmp_path_factory.mktemp("pipeline"))
    project.first = built_project.first
    return project


def test_first_build_reconciles_documents_chunks_and_rows(project):
    assert project.first.success
    docs = project.metadata(project.first, "corpus")["documents"]
    chunks = project.metadata(project.first, "chunks")["chunks"]
    index = project.metadata(project.first, "index")
    assert docs == len(list(project.corpus.rglob("*.*"))) and docs >= 30
    assert index["rows"] == chunks == project.metadata(project.first, "embeddings")["chunks_embedded"]
    rows = project.index_rows()
    assert len(set(rows["doc_id"].to_pylist())) == docs
    assert rows.column_names == PROVENANCE
    assert len(set(rows["chunk_id"].to_pylist())) == rows.num_rows
    assert not any(rows[c].null_count for c in PROVENANCE)
    assert set(rows["model_fingerprint"].to_pylist()) == {
        project.resources["model_registry"].version(DEFAULT_VERSION).fingerprint
    }


def test_rerun_is_idempotent_and_embeds_nothing(project):
    before = project.index_rows().num_rows
    again = project.materialize(BUILD)
    assert project.metadata(again, "embeddings")["chunks_embedded"] == 0
    assert project.metadata(again, "chunks")["chunks_written"] == 0
    assert project.metadata(again, "index")["rows_upserted"] == 0
    assert project.index_rows().num_rows == before


def test_promoted_search_returns_provenance(project):
    migration = project.migrate(DEFAULT_VERSION)
    assert migration.promoted, migration.to_json()
    searcher = served_searcher(project.db(), project.pointer, project.registry())
    result = searcher.search("how do I parse command line options", 5)
    assert result.model_version == DEFAULT_VERSION
    assert result.hits[0]["doc_id"].startswith(("library/getopt/", "library/argparse/", "source/getopt"))
    assert [h["score"] for h in result.hits] == sorted((h["score"] for h in result.hits), reverse=True)
    # Many queries in one multi-vector search: each query's hits as its own search gives them.
    vectors = searcher.encode_queries(["parse command line options", "read a csv file", "sort"])
    one_by_one = [searcher.search_vector(v, 20, ["chunk_id"]) for v in vectors]
    assert searcher.search_vectors(vectors, 20, ["chunk_id"]) == one_by_one
    for hit in result.hits:
        assert (
            hit["doc_checksum"] and hit["pipeline_config_hash"] and hit["embedded_at"] and hit["chunk_hash"]
        )
    assert (
        project.pointer.require_current().table_version
        == project.db().open_table(tables.index_table(DEFAULT_VERSION)).version
    )


def test_served_search_proves_a_table_state_once_and_follows_the_pointer(project, monkeypatch):
    """The fingerprint scan belongs to a table version: a kept searcher answers many queries with one
    proof, and a new serving state (here a refresh of the served version) is opened on the next query."""
    scans = []
    original = Searcher._refuse_foreign_vectors
    monkeypatch.setattr(Searcher, "_refuse_foreign_vectors", lambda self: scans.append(1) or original(self))
    monkeypatch.setattr(search_module, "_PROVEN_STATES", set())
    served = ServedSearch(project.db(), project.pointer, project.registry())
    first = [served.search(q, 3) for q in ("parse options", "read a csv file", "json dumps", "for loop")]
    assert len(scans) == 1 and len({id(served.searcher())}) == 1
    assert {r.table_version for r in first} == {project.pointer.require_current().table_version}
    again = ServedSearch(project.db(), project.pointer, project.registry())
    again.search("parse options", 3)
    assert len(scans) == 1  # the same table state is not scanned again in this process
    before = served.searcher()
    state = project.pointer.require_current()
    project.pointer.move_to(state.model_copy(update={"action": "refresh", "supersedes": state.supersedes}))
    assert served.search("parse options", 3).hits and served.searcher() is not before


def test_bad_documents_are_quarantined_and_the_run_goes_on(project):
    (project.corpus / "broken.md").write_bytes(b"\xff\xfe not utf-8 \x00")
    (project.corpus / "empty.txt").write_text("   \n")
    result = project.materialize([corpus])
    meta = project.metadata(result, "corpus")
    assert meta["docs_quarantined"] == 2 and "broken.md" in meta["quarantine"]
    assert meta["docs_added"] == 0
    (project.corpus / "broken.md").unlink()
    (project.corpus / "empty.txt").unlink()


def test_progress_inside_a_run_goes_to_the_run_log_not_a_terminal_bar(project, capfd):
    (project.corpus / "topics/progress.md").write_text(
        "# Progress\n\nA run reports how many chunks it embedded through Dagster's log, not a bar.\n"
    )
    result = project.materialize(BUILD)
    assert project.metadata(result, "embeddings")["chunks_embedded"] >= 1
    err = capfd.readouterr().err
    assert "chunk/s" not in err and "\r" not in err, err[-500:]  # tqdm draws with carriage returns
    logged = [
        e.message
        for e in project.instance.all_logs(result.run_id)
        if e.message and "embedded" in e.message and "chunks/s" in e.message
    ]
    assert logged, "progress was not logged through Dagster"


def test_edit_and_delete_touch_only_those_documents(project):
    edited = project.corpus / "topics/for.md"
    edited.write_text(
        edited.read_text() + "\nA loop can also be left early with break; else runs when it was not.\n"
    )
    deleted_id = "library/json/dumps.md"
    (project.corpus / deleted_id).unlink()
    result = project.materialize(BUILD)
    corpus_meta = project.metadata(result, "corpus")
    assert (corpus_meta["docs_changed"], corpus_meta["docs_deleted"]) == (1, 1)
    assert project.metadata(result, "chunks")["documents_chunked"] == 1
    assert 1 <= project.metadata(result, "embeddings")["chunks_embedded"] <= 3
    rows = project.index_rows()
    assert deleted_id not in set(rows["doc_id"].to_pylist())
    assert rows.num_rows == project.metadata(result, "chunks")["chunks"]


def test_cli_search_and_status_speak_json(project, monkeypatch, capsys):
    import json

    from embedding_assets import wiring
    from embedding_assets.cli.main import main

    monkeypatch.setattr(wiring, "project_definitions", lambda: project.defs)
    assert main(["search", "how do I parse command line options", "--k", "5", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["model_version"] == DEFAULT_VERSION and len(found["hits"]) == 5
    assert {
        "doc_id",
        "chunk_id",
        "score",
        "text",
        "doc_checksum",
        "pipeline_config_hash",
        "embedded_at",
        "model_version",
        "model_fingerprint",
        "source_uri",
    } <= set(found["hits"][0])
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["served_version"] == DEFAULT_VERSION
    assert status["served_fingerprint"] == found["model_fingerprint"]
    served = next(v for v in status["versions"] if v["id"] == DEFAULT_VERSION)
    assert served["state"] == "served" and served["rows"] == served["chunks"] == status["rows"] > 0
    assert status["documents"] == len([p for p in project.corpus.rglob("*") if p.is_file()])


def test_static_version_is_built_from_its_recipe_and_indexed(project, registry):
    static = next(v for v in registry.versions if v.loader == "model2vec")
    result = project.materialize(BUILD, version=static.id)
    weights = project.metadata(result, "model_weights")
    assert weights["model_fingerprint"] == static.fingerprint  # the pinned recipe
    assert weights["weights_fingerprint"].startswith("sha256:")  # the bytes this machine built
    index_meta = project.metadata(result, "index")
    assert index_meta["rows"] == project.metadata(result, "chunks")["chunks"] > 0
    table = project.db().open_table(tables.index_table(static.id))
    assert table.schema.field("vector").type.list_size == static.dimension == 256


def _reconciliation(project, result) -> dg.AssetCheckEvaluation:
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == COUNT_RECONCILIATION
    return evaluation


def _check(project):
    """Run count reconciliation alone (a subset of the gates' op) on the index as it stands."""
    only = dg.define_asset_job(
        "count_reconciliation_only",
        selection=dg.AssetSelection.checks(dg.AssetCheckKey(index.key, COUNT_RECONCILIATION)),
        config=PER_VERSION,
    )
    checks = dg.Definitions(
        assets=[index], asset_checks=[index_gates], jobs=[only], resources=project.resources
    )
    result = checks.resolve_job_def("count_reconciliation_only").execute_in_process(
        partition_key=DEFAULT_VERSION, instance=project.instance, raise_on_error=False
    )
    return _reconciliation(project, result)


def test_count_reconciliation_passes_a_clean_build(project):
    evaluation = _check(project)
    assert evaluation.passed, evaluation.metadata


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("delete_rows", "missing_rows"),
        ("duplicate_rows", "duplicate_rows"),
        ("foreign_fingerprint", "foreign_fingerprint"),
        ("delete_document_only", "orphan_rows"),
    ],
)
def test_count_reconciliation_blocks_real_damage(project, damage, problem):
    db = project.db()
    table = db.open_table(tables.index_table(DEFAULT_VERSION))
    victim = "library/json/loads.md"
    if damage == "delete_rows":
        table.delete(f"doc_id = '{victim}'")
    elif damage == "duplicate_rows":
        rows = table.to_arrow()
        table.add(rows.filter(pc.equal(rows["doc_id"], victim)))
    elif damage == "foreign_fingerprint":
        table.update(where=f"doc_id = '{victim}'", values={"model_fingerprint": "sha256:" + "0" * 64})
    else:
        db.open_table(tables.DOCUMENTS_TABLE).delete(f"doc_id = '{victim}'")
    evaluation = _check(project)
    assert not evaluation.passed and evaluation.metadata[problem].value >= 1
    assert victim in str(evaluation.metadata["examples"].value)
    # repair through the pipeline itself: re-sync the corpus and index; no text is embedded twice
    rebuilt = project.materialize(BUILD)
    assert project.metadata(rebuilt, "embeddings")["chunks_embedded"] == 0
    if damage == "delete_document_only":  # the source still has the file, so the corpus stage restores it
        assert project.metadata(rebuilt, "corpus")["docs_added"] == 1
    repaired = _check(project)
    assert repaired.passed, {k: v.value for k, v in repaired.metadata.items()}


@pytest.fixture
def search_service(project):
    """`embedding-assets serve`'s app on a free loopback port, in a thread of this process."""
    import socket
    import threading
    import time

    import uvicorn

    from embedding_assets.serving.service import SearchService, create_app

    service = SearchService(ServedSearch(project.db(), project.pointer, project.registry()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_like_search_json_refuses_bad_requests_and_follows_a_promotion(project, search_service):
    import json
    import threading
    from urllib.parse import quote

    from embedding_assets.serving.search import MAX_K
    from embedding_assets.serving.service import MAX_BODY_BYTES

    status, found = _http(f"{search_service}/search?q={quote('parse command line options')}&k=5")
    assert status == 200 and found["model_version"] == DEFAULT_VERSION and len(found["hits"]) == 5
    served_before = project.pointer.require_current().table_version
    assert found["table_version"] == served_before
    status, posted = _http(
        f"{search_service}/search", json.dumps({"query": "parse command line options", "k": 5}).encode()
    )
    assert status == 200 and [h["chunk_id"] for h in posted["hits"]] == [h["chunk_id"] for h in found["hits"]]
    for url, body, code in [
        (f"{search_service}/search?q=", None, 400),
        (f"{search_service}/search?q=x&k=0", None, 400),
        (f"{search_service}/search?q=x&k={MAX_K + 1}", None, 400),
        (f"{search_service}/search", b"not json", 400),
        (f"{search_service}/search", json.dumps({"query": "x" * (MAX_BODY_BYTES + 1)}).encode(), 413),
    ]:
        assert _http(url, body)[0] == code, url

    # A new table version of the served model is promoted while clients keep querying: every answer
    # comes from one state, the old until the move and the new after it, without a restart.
    (project.corpus / "topics/served.md").write_text("# Serving\n\nA search service follows the pointer.\n")
    answers: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, body = _http(f"{search_service}/search?q={quote('a search service')}&k=3")
            assert status == 200
            answers.append(body["table_version"])

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        migration = project.migrate(DEFAULT_VERSION)
        assert migration.promoted, migration.to_json()
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    served_after = project.pointer.require_current().table_version
    assert served_after != served_before
    status, after = _http(f"{search_service}/search?q={quote('a search service')}&k=3")
    assert after["table_version"] == served_after and after["hits"][0]["doc_id"] == "topics/served.md"
    assert set(answers) <= {served_before, served_after} and served_before in answers
    # The refresh left no rollback path to the table version it replaced: its serving tag is released,
    # so cleanup may reclaim it; the state now served keeps its own.
    tags = project.db().open_table(tables.index_table(DEFAULT_VERSION)).tags.list()
    assert project.pointer.require_current().lance_tag in tags
    assert f"served-{DEFAULT_VERSION}-v{served_before}" not in tags
    _, health = _http(f"{search_service}/health")
    assert health["model_version"] == DEFAULT_VERSION and health["table_version"] == served_after


INJECTIONS = [
    "' OR 1=1 --",
    "x' OR doc_id LIKE '%",
    "library/%",
    "library/_",
    '") OR TRUE --',
    "'; DROP TABLE documents; --",
    "\\' OR 1=1 /*",
    "library/argparse/' AND '1'='1",
]


def test_search_filters_are_typed_and_an_injection_attempt_matches_only_itself(
    project, search_service, monkeypatch, capsys
):
    """Document id prefix, source prefix and a time range, through the Python API, the CLI and HTTP:
    every hit satisfies the filter; text that would break out of a SQL string or act as a LIKE wildcard
    is only ever a literal (nothing starts with it, so nothing comes back), and no table is touched."""
    import json
    from datetime import UTC, datetime, timedelta
    from urllib.parse import quote

    from embedding_assets import wiring
    from embedding_assets.cli.main import main
    from embedding_assets.serving.filters import SearchFilter

    if project.pointer.current() is None:  # run on its own: serve the module's build first
        assert project.migrate(DEFAULT_VERSION).promoted
    query = "parse command line options"
    served = ServedSearch(project.db(), project.pointer, project.registry())
    unfiltered = served.search(query, 10).hits
    prefix = "library/argparse/"
    hits = served.search(query, 10, SearchFilter(doc_id_prefix=prefix)).hits
    assert hits and all(h["doc_id"].startswith(prefix) for h in hits)
    source = unfiltered[0]["source_uri"].rsplit("/", 1)[0] + "/"
    hits = served.search(query, 10, SearchFilter(source_prefix=source)).hits
    assert hits and all(h["source_uri"].startswith(source) for h in hits)
    now = datetime.now(UTC)
    assert not served.search(query, 10, SearchFilter(embedded_after=now + timedelta(days=1))).hits
    same = served.search(query, 10, SearchFilter(embedded_before=now + timedelta(days=1))).hits
    assert [h["chunk_id"] for h in same] == [h["chunk_id"] for h in unfiltered]

    rows_before = {name: project.db().open_table(name).count_rows() for name in project.db().table_names()}
    for text in INJECTIONS:
        for field in ("doc_id_prefix", "source_prefix"):
            assert served.search(query, 10, SearchFilter(**{field: text})).hits == [], (field, text)
        assert len(served.search(text, 3).hits) == 3  # as a query it is only text to encode
    assert {n: project.db().open_table(n).count_rows() for n in project.db().table_names()} == rows_before

    monkeypatch.setattr(wiring, "project_definitions", lambda: project.defs)
    assert main(["search", query, "--doc-id-prefix", INJECTIONS[-1], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == []
    assert main(["search", query, "--doc-id-prefix", prefix, "--k", "3", "--json"]) == 0
    assert all(h["doc_id"].startswith(prefix) for h in json.loads(capsys.readouterr().out)["hits"])

    status, found = _http(
        f"{search_service}/search", json.dumps({"query": query, "filter": {"doc_id_prefix": prefix}}).encode()
    )
    assert status == 200 and found["hits"] and all(h["doc_id"].startswith(prefix) for h in found["hits"])
    status, found = _http(f"{search_service}/search?q={quote(query)}&doc_id_prefix={quote(INJECTIONS[0])}")
    assert (status, found["hits"]) == (200, [])
    for bad in [
        {"doc_id_prefix": ""},
        {"doc_id_prefix": "x" * 2000},
        {"unknown": "x"},
        {"embedded_after": "2026-01-01T00:00:00"},  # no zone: which moment is it?
        {"embedded_after": "2026-02-01T00:00:00Z", "embedded_before": "2026-01-01T00:00:00Z"},
        "doc_id LIKE 'library/%'",  # a filter is fields, never SQL
    ]:
        status, refused = _http(
            f"{search_service}/search", json.dumps({"query": query, "filter": bad}).encode()
        )
        assert status == 400 and "filter" in refused["error"], (bad, status, refused)


def test_search_refuses_a_blank_or_huge_query_and_a_k_out_of_range_in_python_and_the_cli(
    project, monkeypatch, capsys
):
    """The same refusals as serve's (HTTP 400/413), before anything is encoded or searched."""
    from embedding_assets import wiring
    from embedding_assets.cli.main import main
    from embedding_assets.serving.search import MAX_QUERY_CHARS, InvalidSearchError

    if project.pointer.current() is None:  # run on its own: serve the module's build first
        assert project.migrate(DEFAULT_VERSION).promoted
    served = ServedSearch(project.db(), project.pointer, project.registry())
    for query, k, reason in [
        ("", 5, "non-blank"),
        (" \n\t", 5, "non-blank"),
        (None, 5, "non-blank"),
        ("x" * (MAX_QUERY_CHARS + 1), 5, "characters"),
        ("x " * 500_000, 5, "1000000 characters"),
        ("csv", 0, "k must be"),
        ("csv", -3, "k must be"),
        ("csv", 1_000_000, "k must be"),
        ("csv", True, "k must be"),
        ("csv", "5", "k must be"),
    ]:
        with pytest.raises(InvalidSearchError, match=reason) as refused:
            served.search(query, k)
        assert refused.value.too_large == (reason.endswith("characters"))
    monkeypatch.setattr(wiring, "project_definitions", lambda: project.defs)
    for argv in (["search", "csv", "--k", "0"], ["search", "  "], ["search", "csv", "--k", "-1"]):
        assert main(argv) == 2, argv
        assert "error: " in capsys.readouterr().err
    assert len(served.search("csv", 1).hits) == 1
