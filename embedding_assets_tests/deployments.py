"""Test deployments driven through the real CLI in processes of their own: a copy of a deployment folder
(corpus, LanceDB, serving pointer, registry) with a Dagster home of its own. The crash and damaged-storage
tests start from the bases `conftest.deployment_bases` builds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from embedding_assets import faults, locations
from embedding_assets.index import store, tables
from embedding_assets.models.registry import ONNX_INT8_VERSION, load_registry
from embedding_assets.serving.pointer import ServingPointer

CLI = Path(sys.executable).parent / "embedding-assets"
# The version the deployments serve first: MiniLM as int8 ONNX (a process loads it without importing
# sentence-transformers), and SECOND, the same under another id: the same cache, so a migration encodes
# nothing.
FIRST = ONNX_INT8_VERSION
SECOND = f"{FIRST}-again"
REFRESH = ("refresh", "--json")
MIGRATE = ("migrate", "--to", SECOND, "--json")
ROLLBACK = ("rollback", "--json")
ADDED = {
    "crash/ledger.md": "# Otter ledger\n\nThe otter ledger counts river stones at each weir every spring.\n",
    "crash/bells.md": "# Bell tower\n\nThe bell tower rings the tide table out to the harbour boats.\n",
}
CHANGED = "library/csv/field_size_limit.md"  # neither is a judged document
DELETED = "library/argparse/MetavarTypeHelpFormatter.md"


def edit_corpus(root: Path) -> None:
    """Two documents added, one changed, one deleted: every stage has something to write and delete."""
    corpus = locations.corpus_dir(root)
    for name, text in ADDED.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    changed = corpus / CHANGED
    changed.write_text(changed.read_text() + "\nA writer flushes the otter ledger after each row.\n")
    (corpus / DELETED).unlink()


class Deployment:
    """A copy of a deployment folder (corpus, lancedb, serving, registry) with a Dagster home of its own,
    driven through the real CLI."""

    def __init__(self, root: Path, base: Path | None, **env: str):
        """A copy of `base` (its registry beside it), or an empty folder on the shipped registry."""
        if base is not None:
            shutil.copytree(base, root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.registry = root / "model_registry.yaml" if base else locations.SHIPPED_REGISTRY
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMBEDDING_ASSETS_")},
            "DAGSTER_HOME": str(root / "dagster_home"),
            "EMBEDDING_ASSETS_DATA": str(root),
            "EMBEDDING_ASSETS_REGISTRY": str(self.registry),
            "HF_HUB_OFFLINE": "1",
            **env,
        }

    def cli(self, argv: tuple[str, ...]) -> dict[str, Any]:
        done = subprocess.run([CLI, *argv], env=self.env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stderr[-4000:]}"
        return json.loads(done.stdout)

    def run_here(self, argv: tuple[str, ...]) -> dict[str, Any]:
        """`argv` (refresh, migrate or rollback) run by the runner in this process, its JSON as the CLI
        prints it: the same runs without a process's start-up (Dagster, the model) each time."""
        from embedding_assets.cli import runner
        from embedding_assets_tests.project import in_process

        job = in_process(self.root, self.registry)
        if argv[0] == "refresh":
            return runner.refresh(**job).to_json()
        if argv[0] == "migrate":
            return runner.migrate(argv[argv.index("--to") + 1], **job).to_json()
        if argv[0] == "rollback":
            return runner.rollback(**job)
        raise ValueError(f"no in-process form of {argv}")

    def hold(self, argv: tuple[str, ...], point: str) -> Held:
        """Start `argv` and wait until it stands at `point`."""
        marker = self.root / f"failpoint-{len(list(self.root.glob('failpoint-*')))}.pid"
        env = {**self.env, faults.FAILPOINT_ENV: point, faults.MARKER_ENV: str(marker)}
        writer = subprocess.Popen(
            [CLI, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while not marker.exists():
            if writer.poll() is not None:
                _, err = writer.communicate()
                pytest.fail(f"{argv} exited {writer.returncode} before {point}:\n{err.decode()[-3000:]}")
            assert time.monotonic() < deadline, f"{argv} never reached {point}"
            time.sleep(0.05)
        return Held(argv, writer, marker)

    def crash(self, argv: tuple[str, ...], point: str) -> None:
        """Run `argv` until it stands at `point`, then SIGKILL it (and anything it started)."""
        held = self.hold(argv, point)
        time.sleep(0.5)  # the reader keeps querying while the writer stands between two writes
        os.killpg(held.process.pid, signal.SIGKILL)
        held.process.communicate()
        assert held.process.returncode == -signal.SIGKILL

    def pointer(self) -> ServingPointer:
        return ServingPointer(locations.serving_dir(self.root))

    def state(self) -> dict[str, Any]:
        """Everything a converged deployment must agree on, by content (table version numbers may differ)."""
        db = store.connect(locations.lancedb_dir(self.root))
        names = set(store.table_names(db))

        def keys(name: str, columns: list[str], version: int | None = None) -> list[tuple]:
            table = db.open_table(name)
            if version is not None:
                table.checkout(version)
            rows = table.to_arrow().select(columns).to_pylist()
            return sorted(tuple(r.values()) for r in rows)

        served = self.pointer().require_current()
        found: dict[str, Any] = {
            "documents": keys(tables.DOCUMENTS_TABLE, ["doc_id", "doc_checksum"]),
            "served": (served.version, served.rows),
            "served_rows": keys(served.table, ["chunk_id", "chunk_hash"], served.table_version),
        }
        for version in load_registry(self.registry).ids:
            for name in (tables.chunks_table(version), tables.index_table(version)):
                if name in names:
                    found[name] = keys(name, ["chunk_id", "chunk_hash"])
        caches = sorted(n for n in names if n.startswith(tables.CACHE_TABLE_PREFIX))
        found["cache"] = sorted(h for name in caches for h in keys(name, ["chunk_hash"]))
        return found

    def cached(self) -> int:
        db = store.connect(locations.lancedb_dir(self.root))
        caches = [n for n in store.table_names(db) if n.startswith(tables.CACHE_TABLE_PREFIX)]
        return sum(db.open_table(name).count_rows() for name in caches)


class Held:
    """A CLI process standing at a failpoint until released."""

    def __init__(self, argv: tuple[str, ...], process: subprocess.Popen, marker: Path):
        self.argv, self.process, self.marker = argv, process, marker

    def release(self) -> subprocess.CompletedProcess[str]:
        """Let it go on from the failpoint; how it ended."""
        self.marker.unlink()
        out, err = self.process.communicate(timeout=900)
        return subprocess.CompletedProcess(self.argv, self.process.returncode, out.decode(), err.decode())


def run(deployment: Deployment, *argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI in `deployment`, whatever its exit code."""
    return subprocess.run([CLI, *argv], env=deployment.env, capture_output=True, text=True, timeout=900)
