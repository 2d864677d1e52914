"""Damaged storage (issue 11): a deleted or truncated Lance data file, a torn or deleted pointer, a full
disk and a read-only data folder, each on a real deployment driven through the real CLI.

Each is detected with an error that names it; queries go on from the last whole state the pointer's
history holds; `verify` reports every table and the pointer; `repair` restores and the refresh it runs
re-applies the delta, after which `verify` passes and nothing is lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from embedding_assets import locations
from embedding_assets.index import store, tables
from embedding_assets.models.registry import load_registry
from embedding_assets.serving.search import ServedSearch
from embedding_assets_tests.deployments import FIRST, REFRESH, Deployment, run

pytestmark = pytest.mark.slow
NOTE = "notes/damage.md"
NOTE_TEXT = "# Heron survey\n\nThe heron survey counts nests along the canal every third week of May.\n"
NOTE_QUERY = "when are heron nests counted along the canal"


def searched(deployment: Deployment) -> ServedSearch:
    return ServedSearch(
        store.connect(locations.lancedb_dir(deployment.root)),
        deployment.pointer(),
        load_registry(deployment.registry),
    )


def newest_data_file(deployment: Deployment, table: str) -> Path:
    folder = locations.lancedb_dir(deployment.root) / f"{table}.lance" / "data"
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_data_file_is_named_served_around_and_repaired(
    deployment_bases, tmp_path: Path, damage: str
):
    deployment = Deployment(tmp_path / "deployment", deployment_bases["served"])
    before = deployment.pointer().require_current()
    (locations.corpus_dir(deployment.root) / NOTE).parent.mkdir(parents=True, exist_ok=True)
    (locations.corpus_dir(deployment.root) / NOTE).write_text(NOTE_TEXT)
    assert deployment.cli(REFRESH)["versions"][0]["served"]
    refreshed = deployment.pointer().require_current()
    assert refreshed.table_version > before.table_version

    broken = newest_data_file(deployment, tables.index_table(FIRST))  # the note's rows
    if damage == "deleted":
        broken.unlink()
    else:
        with open(broken, "r+b") as f:
            f.truncate(broken.stat().st_size // 2)

    checked = run(deployment, "verify", "--json")
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    index = next(t for t in report["tables"] if t["name"] == tables.index_table(FIRST))
    assert not index["whole"] and (broken.name in index["damage"] or "LanceError(IO)" in index["damage"])
    assert report["served"]["damage"] and (damage == "truncated" or broken.name in report["served"]["damage"])

    found = searched(deployment).search(NOTE_QUERY, 3)  # queries go on, from the last whole state
    assert found.table_version == before.table_version and NOTE not in {h["doc_id"] for h in found.hits}
    if damage == "truncated":
        return  # repaired like a deleted file: one walk of repair and its refresh is enough for the suite

    repaired = run(deployment, "repair", "--json")
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
    result = json.loads(repaired.stdout)
    assert any("serving moved back" in line for line in result["repaired"])
    assert any("restored to v" in line for line in result["repaired"])
    assert result["ok"] and result["refresh"]["chunks_embedded"] == 0  # re-applied from the cache
    found = searched(deployment).search(NOTE_QUERY, 3)
    assert found.hits[0]["doc_id"] == NOTE and found.table_version > refreshed.table_version
    assert run(deployment, "verify").returncode == 0


@pytest.mark.parametrize("damage", ["deleted", "torn"])
def test_a_deleted_or_torn_pointer_is_verified_searched_around_and_repaired(
    deployment_bases, tmp_path, damage
):
    deployment = Deployment(tmp_path / "deployment", deployment_bases["migrated"])
    served = deployment.pointer().require_current()
    pointer_file = deployment.pointer().pointer_path
    if damage == "deleted":
        pointer_file.unlink()
    else:
        pointer_file.write_text(pointer_file.read_text()[:40])
    checked = run(deployment, "verify")
    assert checked.returncode == 1 and "pointer.json is" in checked.stdout
    found = searched(deployment).search(NOTE_QUERY, 3)
    assert (found.model_version, found.table_version) == (served.version, served.table_version)
    repaired = run(deployment, "repair", "--no-refresh")
    assert repaired.returncode == 0 and "serving pointer" in repaired.stdout
    assert deployment.pointer().damage() == [] and deployment.pointer().require_current() == served


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs mount of our own (needs CAP_SYS_ADMIN: root on a VM or CI runner), unmounted after."""
    mount = tmp_path / "disk"
    if not _mount(mount, "size=64m,mode=0700"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _deploy_on(disk: Path, base: Path, tmp_path: Path) -> Deployment:
    deployment = Deployment(disk / "deployment", base)
    deployment.env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")  # Dagster's own storage elsewhere
    (locations.corpus_dir(deployment.root) / NOTE).parent.mkdir(parents=True, exist_ok=True)
    (locations.corpus_dir(deployment.root) / NOTE).write_text(NOTE_TEXT)
    return deployment


def test_a_full_disk_fails_the_refresh_by_name_and_serving_stays_whole(
    deployment_bases, small_disk, tmp_path
):
    deployment = _deploy_on(small_disk, deployment_bases["served"], tmp_path)
    served = deployment.pointer().require_current()
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave a few kilobytes
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    assert shutil.disk_usage(small_disk).free < 1024 * 1024
    failed = run(deployment, "refresh", "--json")
    assert failed.returncode != 0 and "No space left on device" in failed.stdout + failed.stderr
    assert deployment.pointer().require_current() == served and deployment.pointer().damage() == []
    assert searched(deployment).search(NOTE_QUERY, 3).table_version == served.table_version
    filler.unlink()  # space again: the next refresh converges
    assert deployment.cli(REFRESH)["versions"][0]["served"]
    assert searched(deployment).search(NOTE_QUERY, 3).hits[0]["doc_id"] == NOTE
    assert run(deployment, "verify").returncode == 0


def test_a_read_only_data_folder_fails_the_refresh_by_name_and_still_serves(
    deployment_bases, small_disk, tmp_path
):
    deployment = _deploy_on(small_disk, deployment_bases["served"], tmp_path)
    served = deployment.pointer().require_current()
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    failed = run(deployment, "refresh", "--json")
    assert failed.returncode != 0 and "Read-only file system" in failed.stdout + failed.stderr
    assert searched(deployment).search(NOTE_QUERY, 3).table_version == served.table_version
    assert run(deployment, "verify").returncode == 0  # verify only reads
