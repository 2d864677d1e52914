"""Concurrent writers (issue 11): a CLI command is held at a failpoint (`Deployment.hold`) while a second
one runs, then let go; or two start side by side. Whatever the interleaving, the deployment ends where the
same commands run one after the other end: the same documents, chunks, index rows, cache and served rows
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
from embedding_assets.models.registry import DEFAULT_VERSION
from embedding_assets_tests.deployments import (
    CLI,
    MIGRATE,
    REFRESH,
    ROLLBACK,
    SECOND,
    Deployment,
    edit_corpus,
    run,
)

pytestmark = pytest.mark.slow
THIRD = f"{DEFAULT_VERSION}-third"  # MiniLM under a third id: its migration encodes nothing either


def succeeded(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def encoded(*reports: dict[str, Any]) -> int:
    return sum(r.get("chunks_embedded", 0) for r in reports)


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


@pytest.mark.parametrize("point", [faults.CORPUS_WRITTEN, faults.CHUNKS_WRITTEN, None])
def test_two_refreshes_converge_to_one(deployment_bases, tmp_path: Path, point: str | None):
    reference = edited(deployment_bases, tmp_path / "reference")
    expected = encoded(reference.run_here(REFRESH))
    deployment = edited(deployment_bases, tmp_path / "deployment")
    if point is None:  # side by side, from the same start
        writers = [started(deployment, REFRESH), started(deployment, REFRESH)]
        reports = [finished(w) for w in writers]
    else:  # the second starts while the first stands at `point`, writing the documents or the version
        held = deployment.hold(REFRESH, point)
        second = started(deployment, REFRESH)
        assert waits_for_a_lock(second), "the second refresh did not wait for the first"
        reports = [succeeded(held.release()), finished(second)]

    assert deployment.state() == reference.state()  # no row twice, none lost
    assert deployment.pointer().damage() == []
    assert encoded(*reports) == expected  # nothing encoded twice
    assert deployment.pointer().require_current().version == DEFAULT_VERSION


@pytest.mark.parametrize(
    ("point", "migration_waits"), [(faults.EMBEDDINGS_ENCODED, True), (faults.GATE_JUDGED, False)]
)
def test_a_refresh_and_a_migration(deployment_bases, tmp_path: Path, point: str, migration_waits: bool):
    """Held while encoding, the refresh holds the cache the migration's version shares: the migration
    waits, then encodes nothing. Held in its gates, it lets the migration promote, and then does not
    serve its own version again."""
    reference = edited(deployment_bases, tmp_path / "reference")
    reference.run_here(REFRESH)
    assert reference.run_here(MIGRATE)["promoted"]
    deployment = edited(deployment_bases, tmp_path / "deployment")
    held = deployment.hold(REFRESH, point)
    migration = started(deployment, MIGRATE)
    assert waits_for_a_lock(migration) == migration_waits
    if migration_waits:
        refreshed, migrated = succeeded(held.release()), finished(migration)
    else:
        migrated, refreshed = finished(migration), succeeded(held.release())

    assert migrated["promoted"] and deployment.pointer().require_current().version == SECOND
    [minilm] = [v for v in refreshed["versions"] if v["id"] == DEFAULT_VERSION]
    assert minilm["gates_passed"] and minilm["served"] == migration_waits
    assert deployment.state() == reference.state()
    assert deployment.pointer().damage() == []


def with_third(deployment: Deployment) -> Deployment:
    """The deployment's registry with THIRD added."""
    registry = yaml.safe_load(deployment.registry.read_text())
    [minilm] = [v for v in registry["versions"] if v["id"] == DEFAULT_VERSION]
    registry["versions"].append({**minilm, "id": THIRD, "description": "MiniLM under a third id"})
    deployment.registry.write_text(yaml.safe_dump(registry))
    return deployment


def test_a_migration_judged_before_a_rollback_is_refused_until_judged_again(deployment_bases, tmp_path: Path):
    deployment = with_third(Deployment(tmp_path / "deployment", deployment_bases["migrated"]))
    migrate_third = ("migrate", "--to", THIRD, "--json")
    held = deployment.hold(migrate_third, faults.GATE_JUDGED)  # judged against SECOND, which serves
    rolled = deployment.cli(ROLLBACK)
    refused = held.release()

    assert rolled["served_version"] == DEFAULT_VERSION
    assert refused.returncode != 0
    assert (
        f"the gates judged {THIRD} against {SECOND}, but {DEFAULT_VERSION} serves now"
        in refused.stdout + refused.stderr
    )
    assert deployment.pointer().require_current().version == DEFAULT_VERSION

    cached = deployment.cached()
    again = succeeded(run(deployment, *migrate_third))
    assert again["promoted"] and deployment.cached() == cached  # judged again; nothing encoded
    history = deployment.pointer().history()
    assert [s.version for s in history][-3:] == [SECOND, DEFAULT_VERSION, THIRD]
    assert history[history[-1].supersedes].version == DEFAULT_VERSION  # a rollback now goes to MiniLM
    assert deployment.pointer().damage() == []
