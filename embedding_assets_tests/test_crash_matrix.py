"""The crash matrix (issue 11): a real `embedding-assets` process is stopped at each failpoint
(`embedding_assets.faults`) and killed with SIGKILL, while a reader process queries the served index.

The reader sees no error and never a mixed answer: every answer comes from one recorded serving state, and
a query answered twice from one state gets the same hits. The next run converges to the state an
uninterrupted run reaches: the same documents, chunks, index rows, cache and served rows, a whole pointer
history, its gates passed, and nothing encoded beyond the batch the crash lost.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from embedding_assets import faults, locations
from embedding_assets.index import store, tables
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets_tests import crash_reader
from embedding_assets_tests.deployments import FIRST, MIGRATE, REFRESH, ROLLBACK, Deployment, edit_corpus, run

pytestmark = pytest.mark.slow


class Reader:
    """crash_reader's loop on a thread of the test process (a process apart from the writer, with the model
    already loaded), querying the deployment until stopped."""

    def __init__(self, deployment: Deployment):
        self.answers, self.stop_file = deployment.root / "answers.jsonl", deployment.root / "reader.stop"
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(deployment,), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 300
        while self.count() < len(crash_reader.QUERIES):
            assert self.thread.is_alive() and not self.failed, self.failed
            assert time.monotonic() < deadline, "the reader never answered"
            time.sleep(0.05)

    def _run(self, deployment: Deployment) -> None:
        try:
            crash_reader.main(deployment.root, deployment.registry, self.answers, self.stop_file)
        except BaseException as exc:  # reported by stop()
            self.failed.append(exc)

    def count(self) -> int:
        return len(self.answers.read_text().splitlines()) if self.answers.exists() else 0

    def stop(self) -> list[dict[str, Any]]:
        self.stop_file.touch()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive() and not self.failed, self.failed
        return [json.loads(line) for line in self.answers.read_text().splitlines()]


def check_answers(answers: list[dict[str, Any]], pointer: ServingPointer) -> None:
    """No error; each answer from a recorded serving state; one state, one query: one set of hits."""
    assert [a for a in answers if "error" in a] == []
    states = {(s.version, s.table_version) for s in pointer.history()}
    assert {(a["version"], a["table_version"]) for a in answers} <= states
    seen: dict[tuple, set] = defaultdict(set)
    for a in answers:
        seen[(a["version"], a["table_version"], a["query"])].add(json.dumps(a["hits"]))
    assert all(len(hits) == 1 for hits in seen.values()), {k: len(v) for k, v in seen.items()}


# (command, failpoint, deployment it starts from, the command that follows the crash, corpus edited first)
CASES = [
    (REFRESH, faults.CORPUS_WRITTEN, "served", REFRESH, True),
    (REFRESH, faults.CORPUS_SYNCED, "served", REFRESH, True),
    (REFRESH, faults.CHUNKS_WRITTEN, "served", REFRESH, True),
    (REFRESH, faults.EMBEDDINGS_ENCODED, "served", REFRESH, True),
    (REFRESH, faults.EMBEDDINGS_CACHED, "served", REFRESH, True),
    (REFRESH, faults.INDEX_UPSERTED, "served", REFRESH, True),
    (REFRESH, faults.INDEX_DELETED, "served", REFRESH, True),
    (REFRESH, faults.GATE_JUDGED, "served", REFRESH, True),
    (REFRESH, faults.POINTER_MOVED, "served", REFRESH, True),  # the refresh of the served version
    (MIGRATE, faults.SENTINELS_WRITTEN, "served", MIGRATE, False),
    (MIGRATE, faults.POINTER_MOVED, "served", MIGRATE, False),  # the promotion
    (ROLLBACK, faults.POINTER_MOVED, "migrated", REFRESH, False),  # a second rollback would walk further
]
_references: dict[tuple, tuple[dict[str, Any], int]] = {}


def reference(bases: dict[str, Path], tmp_path_factory, command, base: str, then, edited: bool):
    """The state (and chunks encoded) an uninterrupted `command` then `then` reaches from `base`."""
    key = (command, base, then, edited)
    if key not in _references:
        deployment = Deployment(tmp_path_factory.mktemp("reference") / "deployment", bases[base])
        if edited:
            edit_corpus(deployment.root)
        first = deployment.run_here(command)
        second = deployment.run_here(then)
        encoded = sum(r.get("chunks_embedded", 0) for r in (first, second))
        _references[key] = (deployment.state(), encoded)
    return _references[key]


FIRST_CASES = 5  # the rest run from test_crash_matrix_moves, so two test workers share the matrix


@pytest.mark.parametrize(
    ("command", "point", "base", "then", "edited"),
    CASES[:FIRST_CASES],
    ids=[f"{c[0][0]}-{c[1]}" for c in CASES[:FIRST_CASES]],
)
def test_a_crash_costs_nothing_and_no_reader_sees_it(
    deployment_bases, tmp_path, tmp_path_factory, command, point, base, then, edited
):
    crash_and_converge(deployment_bases, tmp_path, tmp_path_factory, command, point, base, then, edited)


def crash_and_converge(bases, tmp_path, tmp_path_factory, command, point, base, then, edited) -> None:
    """One case of the matrix: `command` killed at `point` under a reader, then `then`; see the module."""
    expected, encoded = reference(bases, tmp_path_factory, command, base, then, edited)
    deployment = Deployment(tmp_path / "deployment", bases[base])
    if edited:
        edit_corpus(deployment.root)
    cached_before = deployment.cached()
    reader = Reader(deployment)
    deployment.crash(command, point)
    kept = deployment.cached() - cached_before  # vectors the killed run committed
    resumed = deployment.run_here(then)  # the next run (in this process: the killed one was the CLI's)
    answers = reader.stop()

    check_answers(answers, deployment.pointer())
    assert deployment.pointer().damage() == []
    assert deployment.state() == expected
    assert kept + resumed.get("chunks_embedded", 0) == encoded  # only the lost batch was encoded again
    if then == REFRESH:
        assert all(v["indexed"] and v["gates_passed"] for v in resumed["versions"]), resumed["versions"]
    else:
        assert resumed["promoted"], resumed
    if report := os.environ.get("CRASH_MATRIX_REPORT"):  # the table for a closing note
        with open(report, "a", encoding="utf-8") as f:
            seen = sorted({(a["version"], a["table_version"]) for a in answers})
            f.write(
                json.dumps(
                    {
                        "killed": f"{' '.join(command[:-1])} at {point}",
                        "answers": len(answers),
                        "errors": sum("error" in a for a in answers),
                        "states_seen": seen,
                        "then": " ".join(then[:-1]),
                        "kept_from_killed_run": kept,
                        "encoded_after": resumed.get("chunks_embedded", 0),
                        "encoded_uninterrupted": encoded,
                        "recovered": resumed.get("recovered", []),
                    }
                )
                + "\n"
            )


INSERT = "INSERT INTO {t} (id, title, body) VALUES (%s, %s, %s)"
PG_ROWS = {
    "pg/kettle.md": ("Kettle", "Descale the office kettle each month with citric acid and rinse it twice."),
    "pg/ferns.md": ("Ferns", "Water the ferns on Mondays; the cactus wants water once a month at most."),
    "pg/lamps.md": ("Lamps", "Swap the desk lamp bulbs for warm LEDs when the old ones flicker."),
}


def judged_queries(folder: Path) -> Path:
    """A golden set for PG_ROWS: one query judged for each document."""
    folder.mkdir()
    queries = [("k", "how often is the kettle descaled"), ("f", "when are the ferns watered")]
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries)
    )
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nk\tpg/kettle.md\t2\nf\tpg/ferns.md\t2\n")
    return folder


def test_a_crash_before_the_change_capture_advance_replays_the_changes_and_converges(
    postgres, tmp_path: Path
):
    """PostgreSQL source: killed after every live version indexed a batch, before the slot advanced. The
    slot is never ahead of the index; the next run reads the same changes again and ends where an
    uninterrupted run does: the documents and index rows the table holds, nothing pending. (Nothing is
    served here, so no reader: the folder cases above cover readers.)"""
    from dataclasses import replace

    from embedding_assets.corpus.postgres.feed import PostgresChangeFeed
    from embedding_assets_tests.test_hostile_input import execute

    uid = uuid.uuid4().hex[:10]
    settings = replace(postgres, table=f"crash_{uid}", slot=f"crash_{uid}")
    feed = PostgresChangeFeed(settings)
    feed.ensure_table()
    for doc_id, (title, body) in PG_ROWS.items():
        execute(settings, INSERT, doc_id, title, body)
    deployment = Deployment(
        tmp_path / "deployment",
        None,
        EMBEDDING_ASSETS_SOURCE_KIND="postgres",
        EMBEDDING_ASSETS_PG_HOST=settings.host,
        EMBEDDING_ASSETS_PG_PORT=str(settings.port),
        EMBEDDING_ASSETS_PG_USER=settings.user,
        EMBEDDING_ASSETS_PG_DB=settings.dbname,
        EMBEDDING_ASSETS_PG_TABLE=settings.table,
        EMBEDDING_ASSETS_PG_SLOT=settings.slot,
        EMBEDDING_ASSETS_PG_PASSWORD=settings.password or "",
        EMBEDDING_ASSETS_GOLDEN_PATH=str(judged_queries(tmp_path / "golden")),
    )
    try:
        # The judged queries are about other documents: a floor of 0 lets this corpus be served.
        # Built beside nothing served: a live candidate (two judged queries are too few to promote on).
        built = run(deployment, "materialize", "--version", FIRST, "--no-promote", "--json")
        assert built.returncode in (0, 1) and json.loads(built.stdout)["gates_run_id"], built.stderr[-3000:]
        execute(settings, "UPDATE {t} SET body = body || ' Then dry it.' WHERE id = %s", "pg/kettle.md")
        execute(settings, "DELETE FROM {t} WHERE id = %s", "pg/lamps.md")
        execute(
            settings, "INSERT INTO {t} (id, title, body) VALUES (%s, %s, %s)", "pg/new.md", "New", "Otters."
        )
        before = feed.slot_position()["confirmed_flush_lsn"]
        pending = feed.peek().changes
        deployment.crash(REFRESH, faults.CDC_ADVANCING)
        assert feed.slot_position()["confirmed_flush_lsn"] == before  # never ahead of the index
        assert feed.peek().changes == pending  # the same changes come back
        resumed = json.loads(run(deployment, *REFRESH).stdout)
        left = feed.peek().changes
    finally:
        feed.drop_slot()
        execute(settings, "DROP TABLE IF EXISTS {t}")

    assert resumed["cdc"]["advanced"] and left == []
    assert (resumed["docs_added"], resumed["docs_changed"], resumed["docs_deleted"]) == (
        0,
        0,
        0,
    )  # replayed: idempotent
    assert [v["indexed"] for v in resumed["versions"]] == [True], resumed["versions"]
    live = ["pg/ferns.md", "pg/kettle.md", "pg/new.md"]
    db = store.connect(locations.lancedb_dir(deployment.root))
    for name in (tables.DOCUMENTS_TABLE, tables.index_table(FIRST)):
        assert sorted(set(db.open_table(name).to_arrow()["doc_id"].to_pylist())) == live, name
