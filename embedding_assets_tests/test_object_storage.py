"""LanceDB on object storage, end to end through the real CLI: the database at s3://BUCKET/PREFIX on an
S3-compatible server (moto's standalone server stands in for S3), its storage options from the
EMBEDDING_ASSETS_S3_* variables. Migrate (build, gates, promote) two versions, search, refresh a corpus
with a document added and one removed, roll back; the secret access key never shows in output, Dagster's
run storage or the data folder.

A deployment base's database (FIRST built, `deployments`) is uploaded as it is, embedding cache included,
and the second version is FIRST again under another id (same encoder key, so the same cache): only the
document the test adds is ever encoded."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from embedding_assets import locations
from embedding_assets.definitions import build_resources
from embedding_assets.defs.checks.gates import COUNT_RECONCILIATION, INDEX_CHECKS
from embedding_assets.index import tables
from embedding_assets.quality.evaluation import load_judged
from embedding_assets.wiring import initialized
from embedding_assets_tests.deployments import FIRST, SECOND

pytestmark = pytest.mark.slow
CLI = Path(sys.executable).parent / "embedding-assets"
PREFIX = "deployments/object-storage"
ADDED = "notes/object-storage.md"
ADDED_TEXT = (
    "# Quokka ledger replication\n\n"
    "The quokka ledger replicates every marsupial census entry to three burrows before it acknowledges "
    "the write. A census entry that reaches fewer burrows is retried by the ledger keeper at dusk.\n"
)
ADDED_QUERY = "how does the quokka ledger replicate marsupial census entries to burrows"
QUERY = "how do I read a csv file with a header row"


class Deployment:
    """A data folder (corpus, serving pointer), a registry and a Dagster home here; LanceDB on S3."""

    def __init__(self, root: Path, s3_server, corpus: Path):
        self.data, self.home = root / "data", root / "dagster_home"
        shutil.copytree(corpus, locations.corpus_dir(self.data))
        registry = yaml.safe_load(locations.SHIPPED_REGISTRY.read_text())
        [first] = [v for v in registry["versions"] if v["id"] == FIRST]
        registry["versions"].append({**first, "id": SECOND, "description": f"{FIRST} under another id"})
        (root / "model_registry.yaml").write_text(yaml.safe_dump(registry))
        self.secret = s3_server.secret
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMBEDDING_ASSETS_")},
            **s3_server.env,
            "EMBEDDING_ASSETS_DATA": str(self.data),
            "EMBEDDING_ASSETS_LANCEDB_URI": s3_server.uri(PREFIX),
            "EMBEDDING_ASSETS_REGISTRY": str(root / "model_registry.yaml"),
            "DAGSTER_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
        }
        self.outputs: list[str] = []
        self.seconds: dict[str, float] = {}

    def cli(self, *argv: str, expect: int = 0) -> dict:
        started = time.perf_counter()
        done = subprocess.run([CLI, *argv], env=self.env, capture_output=True, text=True, timeout=900)
        self.seconds[argv[0]] = round(self.seconds.get(argv[0], 0.0) + time.perf_counter() - started, 1)
        self.outputs += [done.stdout, done.stderr]
        assert done.returncode == expect, f"{argv}: exit {done.returncode}\n{done.stderr[-4000:]}"
        return json.loads(done.stdout) if "--json" in argv and expect == 0 else {}

    def db(self):
        """The S3 database, reached as every entry point reaches it: the resource definitions.py builds."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                if name.startswith("EMBEDDING_ASSETS_"):
                    patch.setenv(name, value)
            return initialized(build_resources()["lancedb"]).connect()

    def pointer(self) -> dict:
        return json.loads((locations.serving_dir(self.data) / "pointer.json").read_text())

    def served_table(self, pointer: dict):
        """The S3 table the pointer names, at the version its tag names."""
        table = self.db().open_table(pointer["table"])
        assert table.tags.list()[pointer["lance_tag"]]["version"] == pointer["table_version"]
        table.checkout(pointer["lance_tag"])
        return table


def _unjudged_document(table) -> tuple[str, int]:
    """A document no judged query names (removing it moves no quality gate) with the fewest chunks."""
    judged = {doc for grades in load_judged(locations.SHIPPED_GOLDEN_DIR).qrels.values() for doc in grades}
    counts = table.to_arrow().group_by("doc_id").aggregate([("chunk_id", "count")]).to_pylist()
    fewest = min((c["chunk_id_count"], c["doc_id"]) for c in counts if c["doc_id"] not in judged)
    return fewest[1], fewest[0]


def _gates_passed(run: dict) -> dict:
    """The passed gates' metadata by name."""
    assert {c["name"] for c in run["checks"]} == set(INDEX_CHECKS)
    assert all(c["passed"] for c in run["checks"]), [c for c in run["checks"] if not c["passed"]]
    return {c["name"]: c["metadata"] for c in run["checks"]}


def test_lancedb_on_s3_end_to_end(deployment_bases, s3_server, tmp_path):
    started = time.perf_counter()
    base = deployment_bases["served"]
    deployment = Deployment(tmp_path, s3_server, locations.corpus_dir(base))
    uploaded = s3_server.upload(locations.lancedb_dir(base), PREFIX)
    built_rows = deployment.db().open_table(tables.index_table(FIRST)).count_rows()

    # Build (incremental: nothing to encode), gate and promote, all on S3; then search it.
    first = deployment.cli("migrate", "--to", FIRST, "--json")
    assert first["promoted"] and first["served_version"] == FIRST
    counts = _gates_passed(first)[COUNT_RECONCILIATION]
    status = deployment.cli("status", "--json")
    assert status["served_version"] == FIRST and status["documents"] > 0
    assert status["rows"] == status["served_rows"] == status["chunks"] == built_rows
    served = deployment.pointer()
    assert served["table"] == tables.index_table(FIRST)
    assert status["served_table_version"] == served["table_version"]
    assert deployment.served_table(served).count_rows() == built_rows
    hits = deployment.cli("search", QUERY, "--k", "5", "--json")
    assert hits["table_version"] == served["table_version"] and len(hits["hits"]) == 5
    assert any(h["doc_id"].startswith("library/csv/") for h in hits["hits"])

    # A second version (the same encoder: its vectors come from the S3 cache) replaces it.
    second = deployment.cli("migrate", "--to", SECOND, "--json")
    assert second["promoted"] and second["served_version"] == SECOND
    _gates_passed(second)
    assert deployment.pointer()["rows"] == built_rows

    # A new document and a removed one: the refresh embeds only the new chunks, upserts and deletes rows
    # in both live versions' S3 tables.
    corpus = locations.corpus_dir(deployment.data)
    removed, removed_rows = _unjudged_document(deployment.db().open_table(tables.index_table(SECOND)))
    (corpus / removed).unlink()
    (corpus / ADDED).parent.mkdir(parents=True, exist_ok=True)
    (corpus / ADDED).write_text(ADDED_TEXT)
    refreshed = deployment.cli("refresh", "--json")
    assert (refreshed["docs_added"], refreshed["docs_changed"], refreshed["docs_deleted"]) == (1, 0, 1)
    assert 1 <= refreshed["chunks_embedded"] <= 2
    assert {v["id"] for v in refreshed["versions"]} == {FIRST, SECOND}
    assert all(v["rows_deleted"] == removed_rows and v["gates_passed"] for v in refreshed["versions"])
    fresh = deployment.pointer()
    assert fresh["version"] == SECOND
    assert fresh["rows"] == built_rows + refreshed["chunks_embedded"] - removed_rows
    assert deployment.served_table(fresh).count_rows(f"doc_id = '{removed}'") == 0
    found = deployment.cli("search", ADDED_QUERY, "--k", "3", "--json")
    assert found["table_version"] == fresh["table_version"] and found["hits"][0]["doc_id"] == ADDED

    # Roll back: MiniLM serves again, at its refreshed and gated S3 table version (dual write).
    rolled = deployment.cli("rollback", "--json")
    assert rolled == {"served_version": FIRST, "previous_version": SECOND}
    back = deployment.pointer()
    assert back["version"] == FIRST and back["table_version"] > served["table_version"]
    rolled_table = deployment.served_table(back)
    assert rolled_table.count_rows(f"doc_id = '{ADDED}'") == refreshed["chunks_embedded"]
    assert rolled_table.count_rows(f"doc_id = '{removed}'") == 0
    again = deployment.cli("search", ADDED_QUERY, "--k", "3", "--json")
    assert again["table_version"] == back["table_version"] and again["hits"][0]["doc_id"] == ADDED
    deployment.cli("rollback", "--json", expect=2)  # MiniLM's first promotion replaced nothing

    # Everything lived on S3: no local database folder; the bucket holds every table.
    assert not locations.lancedb_dir(deployment.data).exists()
    keys = s3_server.keys(PREFIX)
    names = deployment.db().list_tables().tables
    assert {tables.index_table(FIRST), tables.index_table(SECOND)} <= set(names)
    # The secret key stays an EnvVar: never printed, never in run config, the event log or the data.
    stored = [p for root in (deployment.home, deployment.data) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in stored)  # the SQLite run and event storage is among them
    assert all(deployment.secret.encode() not in p.read_bytes() for p in stored)
    assert all(deployment.secret not in out for out in deployment.outputs)
    versions = deployment.db().open_table(back["table"]).list_versions()
    print(
        f"\nobject storage round trip: {uploaded} objects uploaded, {len(keys)} after; {built_rows} rows "
        f"built, {fresh['rows']} after refresh (removed {removed}: {removed_rows} rows); MiniLM served at "
        f"table version {served['table_version']}, rolled back to {back['table_version']} "
        f"(of {len(versions)}); {len(names)} tables; counts {counts}; refresh {refreshed}; "
        f"CLI seconds {deployment.seconds}; total {time.perf_counter() - started:.1f}s"
    )
