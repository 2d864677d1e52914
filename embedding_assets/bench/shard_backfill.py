"""Benchmark: a sharded backfill of a new version on the production instance, 1, 2 and 4 shards side by
side in one run, against a build without shards.

Each configuration gets a fresh data folder and a fresh Dagster database on a throwaway PostgreSQL
server, with the shipped dagster.yaml (queued coordinator, run limits) and a real dagster-daemon; it runs
`embedding-assets backfill --launch`, so every shard is a run of its own, launched by the daemon in a
process of its own. The corpus is synthetic, made of real text (see `bench.corpus`); the version is the
static one, so the work fits 2 cores. Writes `docs/shards.md` and a JSON of every number behind it.

    python -m embedding_assets.bench.shard_backfill [--documents 50000] [--shards 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from embedding_assets import locations
from embedding_assets.bench.corpus import real_paragraphs, write_synthetic_corpus
from embedding_assets.cli.daemon import dagster_daemon
from embedding_assets.defs.checks.gates import COUNT_RECONCILIATION
from embedding_assets.index import store, tables
from embedding_assets.models.registry import STATIC_VERSION

BIN = Path(sys.executable).parent
PG_PORT = 55471
BEIR_TEXT = locations.PROJECT_ROOT.parent / "shared" / "datasets" / "cranfield"  # used when present


def _run(command: list, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], env=env, text=True, capture_output=True, **kwargs)


@contextmanager
def throwaway_postgres(folder: Path):
    """A PostgreSQL server of scripts/throwaway-postgres; its connection settings."""
    script = locations.PROJECT_ROOT / "scripts" / "throwaway-postgres"
    started = _run([script, "start", folder, PG_PORT], os.environ.copy(), check=True)
    settings = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line
    )
    try:
        yield {k: v.strip("'\"") for k, v in settings.items()}
    finally:
        _run([script, "stop", folder], os.environ.copy())


def _create_database(pg: dict, name: str) -> None:
    """A fresh, empty database `name` on the server, for one configuration's Dagster storage."""
    import psycopg2

    conn = psycopg2.connect(
        host=pg["EMBEDDING_ASSETS_PG_HOST"],
        port=pg["EMBEDDING_ASSETS_PG_PORT"],
        user=pg["EMBEDDING_ASSETS_PG_USER"],
        dbname=pg["EMBEDDING_ASSETS_PG_DB"],
    )
    conn.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def _deployment(root: Path, corpus: Path, shards: int) -> dict:
    """Environment of a fresh deployment under `root`: its data folder (the static model's built artifact
    copied in, so it is not distilled again), the shared synthetic corpus, `shards` corpus shards."""
    shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    shutil.copytree(locations.models_dir(locations.DEFAULT_DATA_DIR), locations.models_dir(data))
    return {
        **os.environ,
        "EMBEDDING_ASSETS_DATA": str(data),
        "EMBEDDING_ASSETS_SOURCE_PATH": str(corpus),
        "EMBEDDING_ASSETS_CORPUS_SHARDS": str(shards),
        "EMBEDDING_ASSETS_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }


def _phases(env: dict) -> dict[str, dict]:
    """Per job of the deployment's instance: its runs, from the first start to the last end, and the
    seconds they ran summed."""
    import dagster as dg

    saved = dict(os.environ)
    os.environ.update(env)  # the instance config reads DAGSTER_PG_* from the environment
    try:
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        records = instance.get_run_records()
        steps = {r.dagster_run.run_id: _step_seconds(instance, r.dagster_run.run_id) for r in records}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    phases: dict[str, dict] = {}
    for record in records:
        if record.start_time is None or record.end_time is None:
            continue
        phase = phases.setdefault(
            record.dagster_run.job_name,
            {"runs": 0, "start": record.start_time, "end": record.end_time, "busy": 0.0, "steps": {}},
        )
        phase["runs"] += 1
        phase["start"] = min(phase["start"], record.start_time)
        phase["end"] = max(phase["end"], record.end_time)
        phase["busy"] += record.end_time - record.start_time
        for step, seconds in steps[record.dagster_run.run_id].items():
            phase["steps"][step] = round(phase["steps"].get(step, 0.0) + seconds, 1)
    return {
        job: {
            "runs": p["runs"],
            "span_seconds": round(p["end"] - p["start"], 1),
            "run_seconds": round(p["busy"], 1),
            "step_seconds": p["steps"],
        }
        for job, p in phases.items()
    }


def _step_seconds(instance, run_id: str) -> dict[str, float]:
    """Seconds from each step's start to its end (success or failure) in one run."""
    starts, seconds = {}, {}
    for event in instance.all_logs(run_id):
        if not event.is_dagster_event or event.step_key is None:
            continue
        kind = event.dagster_event.event_type_value
        if kind == "STEP_START":
            starts[event.step_key] = event.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            seconds[event.step_key] = event.timestamp - starts[event.step_key]
    return seconds


def _outcome(env: dict, command: list[str], label: str, shards: int) -> dict:
    """Run one backfill or build command; wall time, what it reports, and the index it left."""
    started = time.perf_counter()
    done = _run([BIN / "embedding-assets", *command, "--json"], env, cwd=locations.PROJECT_ROOT)
    wall = time.perf_counter() - started
    if not done.stdout.strip().startswith("{"):
        raise RuntimeError(f"{label}: {' '.join(command)} failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout)
    build = report.get("build", report)
    if build is None:
        raise RuntimeError(f"{label}: the backfill stopped before its build: {report.get('errors')}")
    checks = {c["name"]: c for c in build["checks"]}
    count = checks.get(COUNT_RECONCILIATION, {})
    db = store.connect(locations.lancedb_dir(Path(env["EMBEDDING_ASSETS_DATA"])))
    index = db.open_table(tables.index_table(STATIC_VERSION)).to_arrow().select(["chunk_id"])
    shard_rows = report.get("shards", [])
    return {
        "label": label,
        "shards": shards,
        "wall_seconds": round(wall, 1),
        "stage_seconds_max": round(max((s["seconds"] or 0 for s in shard_rows), default=0), 1),
        "stage_seconds_sum": round(sum(s["seconds"] or 0 for s in shard_rows), 1),
        "build_and_gates_seconds": round(build["seconds"], 1),
        "gate_seconds": build["gate_seconds"],
        "documents": db.open_table(tables.DOCUMENTS_TABLE).count_rows(),
        "chunks": db.open_table(tables.chunks_table(STATIC_VERSION)).count_rows(),
        "rows": index.num_rows,
        "distinct_chunk_ids": len(set(index["chunk_id"].to_pylist())),
        "vectors_encoded_by_shards": sum(s["chunks_embedded"] or 0 for s in shard_rows),
        "reconciliation_passed": bool(count.get("passed")),
        "reconciliation": {k: v for k, v in count.get("metadata", {}).items() if isinstance(v, int | float)},
        "gates": {name: c["passed"] for name, c in checks.items()},
        "shard_runs": shard_rows,
        "phases": _phases(env),
    }


def measure(documents: int, shard_counts: list[int], out: Path) -> dict:
    corpus = out / f"corpus-{documents}"
    marker = out / f"corpus-{documents}.complete"
    if not marker.exists():
        # The shipped corpus itself (so the judged queries find their documents), then synthetic ones.
        shutil.rmtree(corpus, ignore_errors=True)
        shipped = locations.corpus_dir(locations.DEFAULT_DATA_DIR)
        shutil.copytree(shipped, corpus)
        extra = documents - sum(1 for p in corpus.rglob("*") if p.is_file())
        paragraphs = real_paragraphs(shipped, BEIR_TEXT)
        write_synthetic_corpus(corpus / "synthetic", extra, paragraphs)
        marker.write_text(f"{extra} synthetic documents from {len(paragraphs)} real paragraphs\n")
    results = []
    # A build without shards: one in-process run per step on a SQLite instance (the embedded default).
    env = _deployment(out / "no-shards", corpus, 1)
    env["DAGSTER_HOME"] = str(out / "no-shards" / "dagster_home")
    print("build without shards ...", file=sys.stderr)
    results.append(
        _outcome(env, ["materialize", "--version", STATIC_VERSION, "--no-promote"], "no shards", 0)
    )
    with throwaway_postgres(out / "postgres") as pg:
        for shards in shard_counts:
            root = out / f"shards-{shards}"
            env = _deployment(root, corpus, shards)
            home = root / "dagster_home"
            home.mkdir(parents=True)
            shutil.copyfile(locations.PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
            database = f"dagster_bench_shards_{shards}"
            _create_database(pg, database)
            env |= {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_USERNAME": pg["EMBEDDING_ASSETS_PG_USER"],
                "DAGSTER_PG_PASSWORD": "",
                "DAGSTER_PG_HOST": pg["EMBEDDING_ASSETS_PG_HOST"],
                "DAGSTER_PG_PORT": pg["EMBEDDING_ASSETS_PG_PORT"],
                "DAGSTER_PG_DB": database,
            }
            label = f"{shards} shard{'s' if shards > 1 else ''}"
            print(f"backfill with {label} ...", file=sys.stderr)
            with dagster_daemon(env, root / "daemon.log"):
                command = ["backfill", "--version", STATIC_VERSION, "--launch"]
                results.append(_outcome(env, command, label, shards))
    return {
        "command": "python -m embedding_assets.bench.shard_backfill "
        f"--documents {documents} --shards {','.join(map(str, shard_counts))}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "version": STATIC_VERSION,
        "documents": documents,
        "corpus_source": "the shipped corpus, and synthetic documents of its paragraphs"
        + (" and Cranfield's documents (../shared/datasets/cranfield)" if BEIR_TEXT.exists() else ""),
        "results": results,
    }


def markdown(report: dict) -> str:
    rows = report["results"]
    one = next((r for r in rows if r["shards"] == 1), rows[0])
    lines = [
        "# Sharded backfill",
        "",
        f"Measured {report['measured_at']} on {report['machine']['cpus']} CPUs "
        f"({report['machine']['platform']}), with:",
        "",
        f"    {report['command']}",
        "",
        f"A new version ({report['version']}, the static model: it fits 2 cores) built from "
        f"{report['documents']:,} documents of real text ({report['corpus_source']}). "
        "Each sharded row is a fresh deployment on the production instance (the shipped dagster.yaml on "
        "PostgreSQL, a real dagster-daemon, the queued coordinator): `embedding-assets backfill --launch` "
        "prepares once, submits one `backfill_shards` run per shard (the daemon launches each in a process "
        "of its own, at most four at a time), then one `build_index` run folds the shards in and a "
        "`check_index` run gates the whole version. The first row is a plain build, in process, on SQLite.",
        "",
        "| configuration | wall (s) | vs 1 shard | slowest shard (s) | shards summed (s) | build + gates (s) "
        "| documents | chunks | index rows | distinct ids | reconciliation |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['wall_seconds']} | {one['wall_seconds'] / r['wall_seconds']:.2f}x "
            f"| {r['stage_seconds_max']} | {r['stage_seconds_sum']} | {r['build_and_gates_seconds']} "
            f"| {r['documents']:,} | {r['chunks']:,} | {r['rows']:,} | {r['distinct_chunk_ids']:,} "
            f"| {'passed' if r['reconciliation_passed'] else 'FAILED'} |"
        )
    jobs = ["prepare_shards", "backfill_shards", "build_index", "check_index"]
    lines += [
        "",
        "Where the time went: each job's runs from the first start to the last end (and how many runs), "
        "and what is left of the wall time: starting processes, loading the code location, the queue.",
        "",
        "| configuration | " + " | ".join(f"{j} (s)" for j in jobs) + " | outside runs (s) "
        "| shard stage vs 1 shard |",
        "|---|" + "---|" * (len(jobs) + 2),
    ]
    one_stage = one["phases"].get("backfill_shards", {}).get("span_seconds")
    for r in rows:
        spans = [r["phases"].get(j) for j in jobs]
        cells = [f"{p['span_seconds']} ({p['runs']})" if p else "-" for p in spans]
        inside = sum(p["span_seconds"] for p in spans if p)
        stage = r["phases"].get("backfill_shards", {}).get("span_seconds")
        ratio = f"{one_stage / stage:.2f}x" if stage and one_stage else "-"
        lines.append(
            f"| {r['label']} | " + " | ".join(cells) + f" | {r['wall_seconds'] - inside:.1f} | {ratio} |"
        )
    steps = ["corpus", "chunks", "embeddings", "index"]
    lines += [
        "",
        "Inside `build_index`: after shards, `chunks` and `embeddings` fold the staged rows in instead of "
        "cutting and encoding.",
        "",
        "| configuration | " + " | ".join(f"{s} (s)" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for r in rows:
        seconds = r["phases"].get("build_index", {}).get("step_seconds", {})
        lines.append(f"| {r['label']} | " + " | ".join(str(seconds.get(s, "-")) for s in steps) + " |")
    lines += [
        "",
        "Wall time is the whole command, from a fresh data folder to gates done; a shard's time is its "
        "asset's own (cutting and encoding). Every gate result is in the JSON beside this file.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    parser.add_argument(
        "--out", type=Path, default=locations.scratch_dir(locations.DEFAULT_DATA_DIR) / "bench"
    )
    parser.add_argument("--doc", type=Path, default=locations.PROJECT_ROOT / "docs" / "shards.md")
    args = parser.parse_args(argv)
    report = measure(args.documents, [int(n) for n in args.shards.split(",")], args.out)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(markdown(report))
    args.doc.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
