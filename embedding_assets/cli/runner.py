"""Run the project's Dagster jobs from a shell on the instance in DAGSTER_HOME (a local SQLite one by
default), with the resources of the Definitions: one wiring path for every entry point.

Two ways to run a job: in this process (`execute_in_process`, the embedded default and the tests), or
`launch=True`: submitted to the instance's run queue with `dagster job launch`, so the deployment's
coordinator, concurrency limits, run launcher and retries apply, and followed here until it ends."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy.exc

from embedding_assets import locations
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.serving import ROLLBACK_KEYS, serving_index
from embedding_assets.defs.checks.gates import DATA_QUALITY
from embedding_assets.defs.jobs import (
    BACKFILL_SHARDS_JOB,
    BUILD_INDEX_JOB,
    CHECK_JOB,
    MIGRATE_JOB,
    OPTIMIZE_JOB,
    PREPARE_SHARDS_JOB,
    PROMOTE_JOB,
    ROLLBACK_JOB,
)
from embedding_assets.defs.partitions import model_versions, shard_partition, shards_of
from embedding_assets.defs.refresh import RefreshReport, refresh_live_versions, refresh_plan
from embedding_assets.defs.run_results import (
    GateRun,
    RunOutcome,
    gate_run,
    materialization_metadata,
    observation_metadata,
)
from embedding_assets.defs.tags import (
    BUILD,
    CLI_DRIVEN,
    LAUNCHED_BY,
    MIGRATION,
    PARTITION,
    PARTITION_DIMENSION,
    REFRESH,
    SHARDS,
    run_tags,
)
from embedding_assets.index import store, tables
from embedding_assets.memory import freeze_loaded
from embedding_assets.models.registry import ModelRegistry
from embedding_assets.quality.gates.data_quality import preload_expectations, stop_idle_validator
from embedding_assets.wiring import initialized, project_definitions, wiring

FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
POLL_SECONDS = 1.0
DAEMON_HEARTBEAT_SECONDS = 120  # a queued run needs a daemon that beat this recently
RETRY_WAIT_SECONDS = 30  # how long a failed run's retry may take to appear
PARENT_RUN_ID = "dagster/parent_run_id"  # Dagster's tags on a retried run and on the run it retries
WILL_RETRY = "dagster/will_retry"
INSTANCE_LOCK = ".instance.lock"
PARTITION_ADD_ATTEMPTS = 3  # reads of the instance's partitions, each after another process added some
LOCAL_INSTANCE_CONFIG = (
    "# Local instance: SQLite storage in this folder (Dagster's default).\ntelemetry:\n  enabled: false\n"
)


def dagster_instance() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME; without one, a local SQLite instance under the project."""
    home = Path(os.environ.get("DAGSTER_HOME") or locations.DEFAULT_DAGSTER_HOME)
    os.environ["DAGSTER_HOME"] = str(home)
    locations.private_folder(home)
    with locations.exclusive(home / INSTANCE_LOCK):  # two commands on a new home: one creates its storage
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text(LOCAL_INSTANCE_CONFIG)
        return dg.DagsterInstance.get()


def sync_partitions(instance: dg.DagsterInstance, registry: ModelRegistry) -> list[str]:
    """Add a partition for every registered version the instance lacks; return the ones added.

    Dagster reads which partitions exist, then inserts the rest: two commands starting together on a new
    instance both find a version missing, and the second insert breaks the unique key. That one reads
    again and adds what is still missing."""
    added: list[str] = []
    for attempt in range(PARTITION_ADD_ATTEMPTS):
        known = set(instance.get_dynamic_partitions(model_versions.name))
        new = [v for v in registry.ids if v not in known]
        if not new:
            break
        try:
            instance.add_dynamic_partitions(model_versions.name, new)
        except sqlalchemy.exc.IntegrityError:  # another process added some of them meanwhile
            if attempt + 1 == PARTITION_ADD_ATTEMPTS:
                raise
            continue
        added += new
        break
    return added


def _known_partition(instance: dg.DagsterInstance, version_id: str | None, defs: dg.Definitions) -> None:
    """A clear error for an unknown or moving version before Dagster starts; its partition added."""
    if version_id is not None:
        registry = initialized(defs.resources["model_registry"], instance).load()
        registry.get(version_id)
        sync_partitions(instance, registry)


def run_job(
    job_name: str,
    version_id: str | None,
    instance: dg.DagsterInstance | None = None,
    *,
    defs: dg.Definitions | None = None,
    ops_config: dict | None = None,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute `job_name` for one model-version partition (or none); raises on failure unless told not to.

    `partition_key` names another partition of that version (a version × shard one); `defs` defaults
    to the project's Definitions (resources from the environment); tests pass their own.
    """
    defs = defs or project_definitions()
    instance = instance or dagster_instance()
    _known_partition(instance, version_id, defs)
    job_def = defs.resolve_job_def(job_name)
    if DATA_QUALITY in {key.name for key in job_def.asset_layer.asset_graph.asset_check_keys}:
        preload_expectations()  # the gate's validator starts with the run, not three steps in
    freeze_loaded()
    with _one_writer(defs, instance, version_id):
        return job_def.execute_in_process(
            instance=instance,
            run_config=_run_config(ops_config),
            raise_on_error=raise_on_error,
            partition_key=partition_key or version_id,
            tags=tags,
        )


def _one_writer(
    defs: dg.Definitions, instance: dg.DagsterInstance, version_id: str | None
) -> AbstractContextManager[None]:
    """In-process runs of one model version take turns, as the instance's tag concurrency limit makes
    queued runs of one partition do: two refreshes never write the same version's tables at once."""
    if version_id is None:
        return nullcontext()
    db = initialized(defs.resources["lancedb"], instance).connect()
    log = dg.get_dagster_logger()
    return store.writer_lock(
        db,
        tables.version_tables(version_id),
        lambda: log.info(f"waiting for another run writing {version_id} to finish"),
    )


def _run_config(ops_config: dict | None) -> dict:
    level = os.environ.get("EMBEDDING_ASSETS_LOG_LEVEL", "INFO")
    return {"loggers": {"console": {"config": {"log_level": level}}}, **(ops_config or {})}


def _require_daemon(instance: dg.DagsterInstance) -> None:
    """A queued run launches only when a dagster-daemon serves this instance: say so instead of waiting
    forever (a daemon that is just starting gets a minute to send its first heartbeat)."""
    if not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return
    deadline = time.monotonic() + DAEMON_HEARTBEAT_SECONDS / 2
    while True:
        beats = instance.get_daemon_heartbeats().values()
        if any(
            b.daemon_type == "QUEUED_RUN_COORDINATOR" and time.time() - b.timestamp < DAEMON_HEARTBEAT_SECONDS
            for b in beats
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the instance in {instance.root_directory} queues runs, but no dagster-daemon serves it "
                f"(no heartbeat in {DAEMON_HEARTBEAT_SECONDS}s): start `dagster-daemon run -w workspace.yaml`"
            )
        time.sleep(POLL_SECONDS)


def submit_job(
    job_name: str,
    version_id: str | None,
    *,
    ops_config: dict | None = None,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
    partition: dg.MultiPartitionKey | None = None,
) -> str:
    """Submit `job_name` for one partition (or none) to the instance's queue; its run id.

    The run is submitted by `dagster job launch` on the project's workspace, so the deployment's run
    coordinator, tag concurrency limits, pools, run launcher and retries all apply. `partition` names a
    version × shard partition of `version_id`."""
    instance = instance or dagster_instance()
    _require_daemon(instance)
    _known_partition(instance, version_id, project_definitions())
    run_id = str(uuid.uuid4())
    all_tags = {**(tags or {}), LAUNCHED_BY: "cli"}
    if partition is not None:
        all_tags[PARTITION] = str(partition)
        all_tags.update({PARTITION_DIMENSION + d: k for d, k in partition.keys_by_dimension.items()})
    elif version_id is not None:
        all_tags[PARTITION] = version_id
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "job",
        "launch",
        "-w",
        str(locations.PROJECT_ROOT / "workspace.yaml"),
        "-j",
        job_name,
        "--run-id",
        run_id,
        "--tags",
        json.dumps(all_tags),
        "--config-json",
        json.dumps(_run_config(ops_config)),
    ]
    submitted = subprocess.run(command, cwd=locations.PROJECT_ROOT, capture_output=True, text=True)
    if submitted.returncode != 0:
        raise RuntimeError(f"dagster job launch {job_name} failed: {submitted.stderr.strip()[-2000:]}")
    return run_id


def launch_job(
    job_name: str,
    version_id: str | None,
    *,
    ops_config: dict | None = None,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> RunOutcome:
    """Submit `job_name` for one partition (or none) to the instance's queue (`submit_job`) and follow
    it to its end: status changes go to stderr; a retried run is followed to its last retry."""
    instance = instance or dagster_instance()
    run_id = submit_job(job_name, version_id, ops_config=ops_config, tags=tags, instance=instance)
    return follow_run(instance, run_id)


def follow_run(instance: dg.DagsterInstance, run_id: str) -> RunOutcome:
    """Wait for a run to end, and for the retries Dagster starts after it; status changes go to stderr."""
    seen = None
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise RuntimeError(f"run {run_id} is not on the instance in {instance.root_directory}")
        if run.status != seen:
            seen = run.status
            print(f"run {run_id[:8]} ({run.job_name}): {seen.value}", file=sys.stderr)
        if run.status in FINISHED:
            retry = _retry_of(instance, run)
            if retry is None:
                return RunOutcome.of_run(instance, run_id)
            print(f"run {run_id[:8]} is retried as {retry[:8]}", file=sys.stderr)
            run_id, seen = retry, None
        time.sleep(POLL_SECONDS)


def _retry_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """The run that Dagster's run retries started after `run` failed, if it retries it."""
    if run.status != dg.DagsterRunStatus.FAILURE or not instance.run_retries_enabled:
        return None
    deadline = time.monotonic() + RETRY_WAIT_SECONDS
    while True:
        retries = instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_ID: run.run_id}), limit=1)
        if retries:
            return retries[0].run_id
        latest = instance.get_run_by_id(run.run_id)
        if (latest and latest.tags.get(WILL_RETRY) == "false") or time.monotonic() > deadline:
            return None
        time.sleep(POLL_SECONDS)


def execute(
    job_name: str,
    version_id: str | None,
    *,
    launch: bool = False,
    ops_config: dict | None = None,
    tags: dict[str, str] | None = None,
    **job: Any,
) -> RunOutcome:
    """Run `job_name` in this process, or with `launch` on the instance's queue; never raises on failure.
    The run is tagged with its trigger (`cli` unless `tags` say otherwise) and its version."""
    tags = {**run_tags("cli", version_id), **(tags or {})}
    if launch:
        instance = job.get("instance")
        return launch_job(job_name, version_id, ops_config=ops_config, tags=tags, instance=instance)
    result = run_job(job_name, version_id, ops_config=ops_config, raise_on_error=False, tags=tags, **job)
    return RunOutcome.of_result(result)


def _gated_run(job_name: str, version_id: str, **job: Any) -> GateRun:
    started = time.perf_counter()
    outcome = execute(job_name, version_id, **job)
    pointer = wiring(job.get("defs")).serving.pointer()
    return gate_run(version_id, outcome, time.perf_counter() - started, pointer)


def _build_and_gate(
    job_name: str, version_id: str, ops_config: dict | None, tags: dict[str, str], **job: Any
) -> GateRun:
    """Build a version (`job_name`), then, if the build succeeded, gate it in a check_index run of its
    own (with the threshold overrides in `ops_config`): a build that fails never plans its gates."""
    started = time.perf_counter()
    tags = {**tags, CLI_DRIVEN: "1"}
    built = _gated_run(job_name, version_id, tags=tags, **job)
    if built.errors:
        return built
    gates_tags = {**tags, BUILD: built.run_id}
    if job_name == MIGRATE_JOB:
        gates_tags[MIGRATION] = built.run_id
    gated = _gated_run(CHECK_JOB, version_id, ops_config=ops_config, tags=gates_tags, **job)
    gated.run_id, gated.gates_run_id = built.run_id, gated.run_id
    gated.seconds = time.perf_counter() - started
    return gated


def migrate(
    version_id: str, overrides: dict[str, float] | None = None, reason: str = "", **job: Any
) -> GateRun:
    """Build `version_id` beside serving, gate it, and promote it only if every gate passes, each step a
    run of its own: a failed build plans no gates, and a blocked migration plans no serving move.

    `job` takes run_job's `defs` and `instance`, for running against other resources.
    """
    from embedding_assets.defs.checks.gates import override_run_config

    started = time.perf_counter()
    ops_config = override_run_config(overrides, reason) if overrides else None
    run_tags_ = run_tags("cli", version_id, reason=reason, overrides=overrides)
    gated = _build_and_gate(MIGRATE_JOB, version_id, ops_config, run_tags_, **job)
    if not gated.gates_passed:
        if not job.get("launch"):  # a launched run is recorded by blocked_promotion_sensor; this one is not
            _record_blocked(gated.gates_run_id or gated.run_id, **job)
        return gated
    promote_tags = {**run_tags_, CLI_DRIVEN: "1", MIGRATION: gated.run_id}
    promoted = _gated_run(PROMOTE_JOB, version_id, tags=promote_tags, **job)
    gated.promoted, gated.served_version = promoted.promoted, promoted.served_version
    gated.errors += promoted.errors
    gated.promote_run_id = promoted.run_id
    gated.seconds = time.perf_counter() - started
    return gated


def _record_blocked(run_id: str, **job: Any) -> None:
    """Record on serving_index why an in-process migration did not promote (Dagster's run status sensors
    watch only runs launched from a code location, so the CLI records its own)."""
    from embedding_assets.defs.sensors import blocked_promotion

    instance = job.get("instance") or dagster_instance()
    run = instance.get_run_by_id(run_id)
    observation = blocked_promotion(instance, run, wiring(job.get("defs")).serving) if run else None
    if observation is not None:
        instance.report_runless_asset_event(observation)


def run_gates(version_id: str, **job: Any) -> GateRun:
    """Re-run every gate on the version's index as it is now; serving does not move."""
    return _gated_run(CHECK_JOB, version_id, **job)


def build(version_id: str, **job: Any) -> GateRun:
    """Materialize corpus → chunks → embeddings → index for a version, then run its gates in a run of
    their own; serving untouched."""
    return _build_and_gate(BUILD_INDEX_JOB, version_id, None, run_tags("cli", version_id), **job)


def rollback(**job: Any) -> dict[str, Any]:
    """Serve the state the current one replaced, through the rollback job so Dagster records it."""
    outcome = execute(ROLLBACK_JOB, None, **job)
    if not outcome.success:
        raise RuntimeError(f"rollback run {outcome.run_id[:8]} failed: " + "; ".join(outcome.errors()))
    moved = materialization_metadata(outcome, serving_index.key)
    return {key: moved[key] for key in ROLLBACK_KEYS}


def promote_version(version_id: str, **job: Any) -> dg.ExecuteInProcessResult:
    """Serve a built version, if its gates passed on its latest index build."""
    return run_job(PROMOTE_JOB, version_id, **job)


def refresh(*, force: bool = False, **job: Any) -> RefreshReport:
    """Sync the corpus once, then bring every live version up to date (dual write): the refresh plan the
    sensors follow in a deployment, with each step a run of its own on this instance, one after another.
    `force` runs every live version, even one that is up to date (its gates run again)."""
    job = {**job, "instance": job.get("instance") or dagster_instance()}  # one for every step's run
    wired = wiring(job.get("defs"), job["instance"])

    def launch(job_name: str, version_id: str | None) -> RunOutcome:
        return execute(job_name, version_id, tags={REFRESH: "1", CLI_DRIVEN: "1"}, **job)

    # Runs in this process: the data-quality gate's validator imports its library on the core the corpus
    # sync leaves idle (a walk of the source is one thread); started with the version's run, it competed
    # with that run's stages.
    if not job.get("launch"):
        preload_expectations()
    try:
        return refresh_live_versions(
            launch,
            wired.lancedb,
            wired.model_registry,
            wired.serving,
            wired.corpus_source,
            job["instance"],
            force=force,
        )
    finally:
        stop_idle_validator()  # nothing changed, so no gate ran: exit does not wait for its import


def optimize(version_id: str | None = None, **job: Any) -> list[dict[str, Any]]:
    """An optimize_index run for `version_id`, or for every live version: unindexed rows folded into the
    vector index, and serving moved to the maintained table version when it served the one maintained."""
    wired = wiring(job.get("defs"))
    if version_id is None:
        versions = [v.id for _, v in refresh_plan(wired.lancedb, wired.model_registry, wired.serving)]
    else:
        versions = [wired.model_registry.load().get(version_id).id]
    done = []
    for version in versions:
        outcome = execute(OPTIMIZE_JOB, version, **job)
        observed = observation_metadata(outcome, index.key)
        done.append({"id": version, "run_id": outcome.run_id, "ok": outcome.success, **observed})
        if not outcome.success:
            raise RuntimeError(
                f"optimize_index run {outcome.run_id[:8]} failed: " + "; ".join(outcome.errors())
            )
    return done


@dataclass
class BackfillReport:
    """A sharded backfill: each shard's run and what it staged, then the build that folded them in and
    the gates that judged the whole version."""

    version: str
    shards: list[dict[str, Any]] = field(default_factory=list)
    build: GateRun | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.build is not None and not self.build.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "shards": self.shards,
            "build": self.build.to_json() if self.build else None,
            "errors": self.errors + (self.build.errors if self.build else []),
        }


SHARD_REPORT_KEYS = ("shard_documents", "documents_chunked", "chunks_staged", "chunks_embedded", "seconds")


def shard_keys_of(defs: dg.Definitions | None = None) -> list[str]:
    """The corpus shard keys of the deployment (`EMBEDDING_ASSETS_CORPUS_SHARDS`)."""
    return shards_of((defs or project_definitions()).resolve_job_def(BACKFILL_SHARDS_JOB).partitions_def)


def backfill(version_id: str, *, launch: bool = False, **job: Any) -> BackfillReport:
    """Build `version_id` by corpus shards: sync the corpus and verify the weights once, stage every
    shard in a run of its own (side by side through the instance's queue with `launch`, or in worker
    processes of this machine), then build the version, folding the shards in, and gate the whole.
    Serving does not move: promote it after, if its gates passed."""
    from embedding_assets.defs.assets.shards import SHARD_VECTORS

    started = time.perf_counter()
    report = BackfillReport(version_id)
    keys = shard_keys_of(job.get("defs"))
    tags = {**run_tags("cli", version_id), CLI_DRIVEN: "1"}
    prepared = execute(PREPARE_SHARDS_JOB, version_id, launch=launch, tags=tags, **job)
    if not prepared.success:
        report.errors = [f"{PREPARE_SHARDS_JOB}: {e}" for e in prepared.errors()]
        return report
    partitions = [shard_partition(version_id, key) for key in keys]
    for partition, outcome in zip(
        partitions, _stage_shards(version_id, partitions, tags, launch, job), strict=True
    ):
        staged = materialization_metadata(outcome, SHARD_VECTORS) if outcome.success else {}
        report.shards.append(
            {
                "shard": partition.keys_by_dimension["shard"],
                "run_id": outcome.run_id,
                "success": outcome.success,
                **{k: staged.get(k) for k in SHARD_REPORT_KEYS},
            }
        )
        report.errors += [f"shard {partition}: {e}" for e in outcome.errors()]
    if not report.errors:
        build_tags = {**run_tags("cli", version_id), SHARDS: str(len(keys))}
        report.build = _build_and_gate(BUILD_INDEX_JOB, version_id, None, build_tags, launch=launch, **job)
    report.seconds = time.perf_counter() - started
    return report


def _stage_shards(
    version_id: str, partitions: list[dg.MultiPartitionKey], tags: dict[str, str], launch: bool, job: dict
) -> list[RunOutcome]:
    """Run every shard: submitted together to the queue, or in worker processes of this machine (one
    after another in this process when the caller passed its own Definitions or instance, as tests do)."""
    instance = job.get("instance") or dagster_instance()
    if launch:  # submitted side by side: each `dagster job launch` loads the workspace for seconds
        with ThreadPoolExecutor(max_workers=len(partitions)) as pool:
            run_ids = list(
                pool.map(
                    lambda p: submit_job(
                        BACKFILL_SHARDS_JOB, version_id, tags=tags, instance=instance, partition=p
                    ),
                    partitions,
                )
            )
        return [follow_run(instance, run_id) for run_id in run_ids]
    if job.get("defs") is not None or job.get("instance") is not None:
        return [
            RunOutcome.of_result(
                run_job(
                    BACKFILL_SHARDS_JOB,
                    version_id,
                    raise_on_error=False,
                    tags=tags,
                    partition_key=str(p),
                    **job,
                )
            )
            for p in partitions
        ]
    workers = min(len(partitions), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        run_ids = list(
            pool.map(
                _stage_shard_here,
                [version_id] * len(partitions),
                map(str, partitions),
                [tags] * len(partitions),
            )
        )
    return [RunOutcome.of_run(instance, run_id) for run_id in run_ids]


def _stage_shard_here(version_id: str, partition: str, tags: dict[str, str]) -> str:
    """One shard's run in this (worker) process, on the instance in DAGSTER_HOME; its run id."""
    result = run_job(
        BACKFILL_SHARDS_JOB, version_id, raise_on_error=False, tags=tags, partition_key=partition
    )
    return result.run_id
