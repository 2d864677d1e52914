"""Concurrent writers (issue 11): a CLI command is held at a failpoint (`Deployment.hold`) while a second
one runs, then let go. Whatever the interleaving, the deployment ends where the same commands run one
after the other end: the same documents, chunks, index rows, cache and served rows
(no duplicate, none lost), a whole serving history, nothing embedded twice. A refresh never moves serving
back to a version a promotion replaced while it ran, and a promotion whose gates compared the candidate
with a version that no longer serves is refused as stale."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedding_assets import faults
from embedding_assets_tests.deployments import (
    CLI,
    FIRST,
    MIGRATE,
    REFRESH,
    ROLLBACK,
    SECOND,
    Deployment,
    edit_corpus,
    run,
)

pytestmark = pytest.mark.slow
THIRD = f"{FIRST}-third"  # FIRST under a third id: its migration encodes nothing either


def succeeded(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def encoded(*reports: dict[str, Any]) -> int:
    return sum(r.get("chunks_embedded", 0) for r in reports)


@pytest.fixture(scope="module")
def reference(deployment_bases, tmp_path_factory):
    """The state the edited served deployment reaches with `commands` run one after the other, and how
    many chunks they encoded; each sequence run once per module."""
    known: dict[tuple, tuple[dict[str, Any], int]] = {}

    def reached(*commands: tuple[str, ...]) -> tuple[dict[str, Any], int]:
        if commands not in known:
            deployment = edited(deployment_bases, tmp_path_factory.mktemp("reference") / "deployment")
            reports = [deployment.run_here(c) for c in commands]
            assert all(r.get("promoted", True) for r in reports)
            known[commands] = deployment.state(), encoded(*reports)
        return known[commands]

    return reached


def edited(bases: dict[str, Path], folder: Path) -> Deployment:
    deployment = Deployment(folder, bases["served"])
    edit_corpus(deployment.root)
    return deployment


def started(deployment: Deployment, argv: tuple[str, ...]) -> subprocess.Popen:
    return subprocess.Popen([CLI, *argv], env=deployment.env, text=True, stdout=-1, stderr=-1)


def finished(writer: subprocess.Popen) -> dict[str, Any]:
    out, err = writer.communicate(timeout=900)
    return succeeded(subprocess.CompletedProcess(writer.args, writer.returncode, out, err))


def waits_for_a_lock(writer: subprocess.Popen, seconds: float = 120) -> bool:
    """Whether `writer` comes to wait on a file lock (a blocked flock in /proc/locks) before it ends."""
    deadline = time.monotonic() + seconds
    while writer.poll() is None and time.monotonic() < deadline:
        locks = Path("/proc/locks").read_text().splitlines()
        if any("->" in line and f" {writer.pid} " in line for line in locks):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("point", [faults.CORPUS_WRITTEN, faults.CHUNKS_WRITTEN])
def test_two_refreshes_converge_to_one(deployment_bases, reference, tmp_path: Path, point: str):
    """The second starts while the first stands at `point`, writing the documents or the version."""
    state, expected = reference(REFRESH)
    deployment = edited(deployment_bases, tmp_path / "deployment")
    held = deployment.hold(REFRESH, point)
    second = started(deployment, REFRESH)
    assert waits_for_a_lock(second), "the second refresh did not wait for the first"
    reports = [succeeded(held.release()), finished(second)]

    assert deployment.state() == state  # no row twice, none lost
    assert deployment.pointer().damage() == []
    assert encoded(*reports) == expected  # nothing encoded twice
    assert deployment.pointer().require_current().version == FIRST


@pytest.mark.parametrize(
    ("point", "migration_waits"), [(faults.EMBEDDINGS_ENCODED, True), (faults.GATE_JUDGED, False)]
)
def test_a_refresh_and_a_migration(
    deployment_bases, reference, tmp_path: Path, point: str, migration_waits: bool
):
    """Held while encoding, the refresh holds the cache the migration's version shares: the migration
    waits, then encodes nothing. Held in its gates, it lets the migration promote, and then does not
    serve its own version again."""
    state, _ = reference(REFRESH, MIGRATE)
    deployment = edited(deployment_bases, tmp_path / "deployment")
    held = deployment.hold(REFRESH, point)
    migration = started(deployment, MIGRATE)
    assert waits_for_a_lock(migration) == migration_waits
    if migration_waits:
        refreshed, migrated = succeeded(held.release()), finished(migration)
    else:
        migrated, refreshed = finished(migration), succeeded(held.release())

    assert migrated["promoted"] and deployment.pointer().require_current().version == SECOND
    [minilm] = [v for v in refreshed["versions"] if v["id"] == FIRST]
    assert minilm["gates_passed"] and minilm["served"] == migration_waits
    assert deployment.state() == state
    assert deployment.pointer().damage() == []


def with_third(deployment: Deployment) -> Deployment:
    """The deployment's registry with THIRD added."""
    registry = yaml.safe_load(deployment.registry.read_text())
    [minilm] = [v for v in registry["versions"] if v["id"] == FIRST]
    registry["versions"].append({**minilm, "id": THIRD, "description": f"{FIRST} under a third id"})
    deployment.registry.write_text(yaml.safe_dump(registry))
    return deployment


def test_a_migration_judged_before_a_rollback_is_refused_until_judged_again(deployment_bases, tmp_path: Path):
    deployment = with_third(Deployment(tmp_path / "deployment", deployment_bases["migrated"]))
    migrate_third = ("migrate", "--to", THIRD, "--json")
    held = deployment.hold(migrate_third, faults.GATE_JUDGED)  # judged against SECOND, which serves
    rolled = deployment.cli(ROLLBACK)
    refused = held.release()

    assert rolled["served_version"] == FIRST
    assert refused.returncode != 0
    assert (
        f"the gates judged {THIRD} against {SECOND}, but {FIRST} serves now"
        in refused.stdout + refused.stderr
    )
    assert deployment.pointer().require_current().version == FIRST

    cached = deployment.cached()
    again = succeeded(run(deployment, *migrate_third))
    assert again["promoted"] and deployment.cached() == cached  # judged again; nothing encoded
    history = deployment.pointer().history()
    assert [s.version for s in history][-3:] == [SECOND, FIRST, THIRD]
    assert history[history[-1].supersedes].version == FIRST  # a rollback now goes to FIRST
    assert deployment.pointer().damage() == []
