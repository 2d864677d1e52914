"""The pipeline as a user runs it, each command a process of its own on a fresh data folder (SQLite
Dagster storage, local LanceDB): a full build and its gates, a refresh after a 1% edit, a refresh with no
change, and (on the shipped corpus) the migration MiniLM -> int8 ONNX. Times inside the runs come from
the commands' own reports; wall time and peak RSS are the process's."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

from embedding_assets import locations
from embedding_assets.bench.measure import ChildRun, run_child
from embedding_assets.index import store, tables

BIN = Path(sys.executable).parent
EDIT_FRACTION = 0.01
# 1% edits in a row, each refreshed; the figure is the median refresh (one varied by 10-20% between runs
# minutes apart on the same VM), every round's time beside it.
EDIT_ROUNDS = 3
EDIT_SENTENCE = "\nThis paragraph was appended by the benchmark's {n}th edit, to change the document.\n"


def deployment(root: Path, corpus: Path) -> dict:
    """Environment of a fresh deployment under `root`: a copy of `corpus` (it gets edited), the built
    model artifacts of the default data folder when there are any (so the static model is not distilled
    again), its own Dagster home."""
    shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    shutil.copytree(corpus, locations.corpus_dir(data))
    models = locations.models_dir(locations.DEFAULT_DATA_DIR)
    if models.is_dir():
        shutil.copytree(models, locations.models_dir(data))
    (root / "dagster_home").mkdir(parents=True)
    return environment(root)


def environment(root: Path) -> dict:
    """The environment that points every command at the deployment under `root`."""
    data = root / "data"
    return {
        **os.environ,
        "EMBEDDING_ASSETS_DATA": str(data),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "EMBEDDING_ASSETS_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }


def cli(env: dict, *argv: str) -> tuple[ChildRun, dict]:
    """One `embedding-assets ... --json` command: how it ran, and the JSON it printed."""
    done = run_child([BIN / "embedding-assets", *argv, "--json"], env, cwd=locations.PROJECT_ROOT)
    if not done.stdout.strip().startswith("{"):
        raise RuntimeError(f"embedding-assets {' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    return done, json.loads(done.stdout)


def edit_documents(corpus: Path, fraction: float, seed: int) -> list[str]:
    """Append a sentence to `fraction` of the documents under `corpus` (at least one), drawn with `seed`."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    picked = random.Random(seed).sample(files, max(1, round(len(files) * fraction)))
    for path in picked:
        path.write_text(path.read_text(encoding="utf-8") + EDIT_SENTENCE.format(n=seed), encoding="utf-8")
    return [p.relative_to(corpus).as_posix() for p in picked]


def _gates(report: dict) -> dict[str, bool]:
    build = report.get("build", report)
    return {c["name"]: c["passed"] for c in build.get("checks", [])}


def _embedding_metadata(env: dict, version_id: str) -> dict:
    """The latest `embeddings` materialization's metadata for `version_id` in the deployment's instance."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("embeddings"), asset_partitions=[version_id]), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _validator_peak_gib(env: dict, version_id: str) -> float | None:
    """The data-quality validator's own peak RSS in the latest gate run of `version_id` (the validator is
    a process of its own, so the command's peak RSS leaves it out)."""
    import dagster as dg

    from embedding_assets.defs.assets.index import index
    from embedding_assets.defs.checks.gates import DATA_QUALITY
    from embedding_assets.defs.dagster_private import latest_check_evaluations

    key = dg.AssetCheckKey(index.key, DATA_QUALITY)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    evaluation = latest_check_evaluations(instance, [key], version_id)[key]
    peak = evaluation.metadata.get("validator_peak_rss_gib") if evaluation else None
    return peak.value if peak is not None else None


class BenchRunFailed(RuntimeError):
    """A command the bench times did not do what it was timed for (a gate failed or errored)."""


def _require(ok: bool, what: str, report: dict) -> None:
    if not ok:
        raise BenchRunFailed(
            f"{what} did not succeed, so its timing means nothing: {json.dumps(report)[:3000]}"
        )


def build_and_refresh(env: dict, version_id: str, *, serve: bool) -> dict:
    """Build `version_id` in the deployment `env` (migrate when `serve`, else a candidate build), edit 1%
    and refresh (EDIT_ROUNDS times: the median round is reported), refresh again with nothing changed."""
    if serve:
        full, report = cli(env, "migrate", "--to", version_id)
    else:
        full, report = cli(env, "materialize", "--version", version_id, "--no-promote")
    build = report.get("build", report)
    _require(all(_gates(report).values()) and (report.get("promoted") or not serve), "the build", report)
    built = _embedding_metadata(env, version_id)  # the full build's encoding, before a refresh replaces it
    built_validator = _validator_peak_gib(env, version_id)
    rounds = []
    for seed in range(1, EDIT_ROUNDS + 1):
        edited = edit_documents(locations.corpus_dir(Path(env["EMBEDDING_ASSETS_DATA"])), EDIT_FRACTION, seed)
        done, done_report = cli(env, "refresh")
        _require(all(v["gates_passed"] for v in done_report["versions"]), "a 1% edit refresh", done_report)
        rounds.append((edited, done, done_report))
    edit_validator = _validator_peak_gib(env, version_id)
    edited, edit, edit_report = sorted(rounds, key=lambda r: r[2]["seconds"])[len(rounds) // 2]
    still, still_report = cli(env, "refresh")
    _require(all(v["gates_passed"] for v in still_report["versions"]), "the no-change refresh", still_report)
    db = store.connect(locations.lancedb_dir(Path(env["EMBEDDING_ASSETS_DATA"])))
    return {
        "version": version_id,
        "documents": db.open_table(tables.DOCUMENTS_TABLE).count_rows(),
        "chunks": db.open_table(tables.chunks_table(version_id)).count_rows(),
        "full": {
            "wall_seconds": full.wall_seconds,
            "run_seconds": round(build["seconds"], 1),
            "gate_seconds": build["gate_seconds"],
            "peak_rss_gib": full.peak_rss_gib,
            "validator_peak_rss_gib": built_validator,
            "gates": _gates(report),
            "promoted": report.get("promoted"),
        },
        "edit": {
            "documents_edited": len(edited),
            "wall_seconds": edit.wall_seconds,
            "run_seconds": round(edit_report["seconds"], 1),
            "rounds_run_seconds": [round(r[2]["seconds"], 1) for r in rounds],
            "maintenance_seconds": round(edit_report.get("maintenance_seconds", 0.0), 1),
            "maintenance": edit_report.get("maintenance", []),
            "chunks_embedded": edit_report["chunks_embedded"],
            "peak_rss_gib": max(r[1].peak_rss_gib for r in rounds),
            "validator_peak_rss_gib": edit_validator,
        },
        "no_change": {
            "wall_seconds": still.wall_seconds,
            "run_seconds": round(still_report["seconds"], 1),
            "chunks_embedded": still_report["chunks_embedded"],
            "peak_rss_gib": still.peak_rss_gib,
        },
        "embeddings": built,
        "env": env,
    }


def migrate_to(env: dict, version_id: str) -> dict:
    """The migration of a deployment to `version_id`: wall time, gates, and how fast it encoded."""
    done, report = cli(env, "migrate", "--to", version_id)
    build = report.get("build", report)
    return {
        "version": version_id,
        "wall_seconds": done.wall_seconds,
        "run_seconds": round(build["seconds"], 1),
        "gate_seconds": build["gate_seconds"],
        "gates": _gates(report),
        "promoted": report.get("promoted"),
        "embeddings": _embedding_metadata(env, version_id),
    }
