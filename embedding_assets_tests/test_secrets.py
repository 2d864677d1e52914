"""Secrets and exposure (issue 11): a password is used, never shown; what a run writes only its owner reads.

The full run is the real CLI against a real PostgreSQL source, its password set the way a deployment sets
it (EMBEDDING_ASSETS_PG_PASSWORD). The throwaway server trusts 127.0.0.1, so any password connects: what
is tested is where the string goes. (The S3 secret key gets the same test in test_object_storage.)
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from embedding_assets import locations
from embedding_assets.cli.main import build_parser
from embedding_assets.corpus.postgres.feed import PostgresChangeFeed
from embedding_assets.corpus.postgres.settings import PostgresSettings
from embedding_assets.index import store
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets.serving.service import LOOPBACK, MAX_BODY_BYTES
from embedding_assets_tests import pg

pytestmark = pytest.mark.slow
CLI = Path(sys.executable).parent / "embedding-assets"
DOCUMENTS = [
    ("notes/kettle.md", "Kettle descaling", "Descale the office kettle monthly with citric acid."),
    ("notes/plants.md", "Plant watering", "Water the ferns on Mondays and the cactus once a month."),
]


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.fixture
def source_table(postgres: PostgresSettings):
    """A documents table of this test's own (and its slot), dropped afterwards."""
    uid = uuid.uuid4().hex[:10]
    settings = replace(postgres, table=f"secrets_{uid}", slot=f"secrets_{uid}")
    feed = PostgresChangeFeed(settings)
    feed.ensure_table()
    with closing(settings.connect()) as conn, conn, conn.cursor() as cur:
        for row in DOCUMENTS:
            insert = sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)")
            cur.execute(insert.format(sql.Identifier(settings.table)), row)
    yield settings
    feed.drop_slot()
    with closing(settings.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(settings.table)))


def test_a_full_run_never_shows_the_postgres_password_and_keeps_its_files_private(
    source_table: PostgresSettings, tmp_path: Path
):
    password = f"pw-{uuid.uuid4().hex}"
    try:
        replace(source_table, password=password).connect().close()
    except psycopg2.OperationalError:
        pytest.skip("the server checks passwords; this test needs one that trusts 127.0.0.1 (the throwaway)")
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDING_ASSETS_", "PG"))},
        "DAGSTER_HOME": str(home),
        "EMBEDDING_ASSETS_DATA": str(data),
        "EMBEDDING_ASSETS_SOURCE_KIND": "postgres",
        "EMBEDDING_ASSETS_PG_HOST": source_table.host,
        "EMBEDDING_ASSETS_PG_PORT": str(source_table.port),
        "EMBEDDING_ASSETS_PG_USER": source_table.user,
        "EMBEDDING_ASSETS_PG_DB": source_table.dbname,
        "EMBEDDING_ASSETS_PG_TABLE": source_table.table,
        "EMBEDDING_ASSETS_PG_SLOT": source_table.slot,
        "EMBEDDING_ASSETS_PG_PASSWORD": password,
        "HF_HUB_OFFLINE": "1",
    }
    outputs: list[str] = []

    def cli(*argv: str, **changes: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CLI, *argv], env={**env, **changes}, capture_output=True, text=True, timeout=900
        )
        outputs.extend([done.stdout, done.stderr])
        return done

    built = cli("materialize", "--no-promote", "--json")  # the judged queries are not in this corpus
    assert built.returncode in (0, 1), built.stderr[-3000:]
    report = json.loads(built.stdout)
    assert {c["name"] for c in report["checks"]} >= {"count_reconciliation", "data_quality"}
    assert next(c for c in report["checks"] if c["name"] == "count_reconciliation")["passed"]
    failed = cli("refresh", "--json", EMBEDDING_ASSETS_PG_PORT=str(pg.free_port()))  # nothing listens
    assert failed.returncode != 0 and "connect" in (failed.stdout + failed.stderr).lower()

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in written)  # Dagster's SQLite run and event storage was searched
    leaked = [p for p in written if password.encode() in p.read_bytes()]
    assert leaked == [] and not any(password in out for out in outputs), leaked
    for folder in (home, locations.lancedb_dir(data)):
        assert private(folder), (folder, oct(folder.stat().st_mode))


def test_the_pointer_its_history_and_lock_are_the_owners_alone(tmp_path: Path):
    pointer = ServingPointer(tmp_path / "serving")
    pointer.move_to(
        ServingState(
            version="v",
            model_fingerprint="sha256:" + "0" * 64,
            pipeline_config_hash="h",
            table="index__v",
            table_version=1,
            lance_tag="served-v-v1",
            rows=1,
        )
    )
    assert private(pointer.folder)
    files = sorted(pointer.folder.iterdir())
    assert len(files) == 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files


def test_a_database_folder_others_could_enter_is_tightened(tmp_path: Path):
    shared = tmp_path / "lancedb"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    store.connect(shared).create_table("t", data=[{"x": 1}])
    assert private(shared)
    store.connect(f"file://{tmp_path / 'by-uri'}")
    assert private(tmp_path / "by-uri")


def test_serve_binds_loopback_unless_told_and_caps_a_request_body():
    args = build_parser().parse_args(["serve"])
    assert args.host == LOOPBACK == "127.0.0.1" and MAX_BODY_BYTES == 64 * 1024
    assert build_parser().parse_args(["serve", "--host", "0.0.0.0"]).host == "0.0.0.0"
