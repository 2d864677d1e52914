"""The gates on each version's index: blocking, partitioned asset checks evaluated by one op.

A gate that fails blocks with ERROR severity; a signal in its warning band fails with WARN and does not
block. The op's launchpad config overrides registry thresholds for that one run (each gate records the
overrides of its own thresholds, with the reason, in its metadata and the serving history).

The gates run side by side in a few threads: each spends most of its time in LanceDB scans and searches
or waiting on the data-quality validator's process, none of which holds the interpreter lock. A 1% edit
refresh at 248k chunks judged its six gates in 1.73-1.90 s on two threads, 2.06-2.26 s one after another.
"""

import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import lancedb
from pydantic import Field

from embedding_assets import faults
from embedding_assets import metadata as md
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.dagster_private import latest_check_evaluations
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import (
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.index.rows import MissingEmbeddingsError
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import GateThresholds, ModelRegistry, ModelRegistryError, ModelVersion
from embedding_assets.quality.gates.ann_recall import ann_recall
from embedding_assets.quality.gates.calibration import score_calibration
from embedding_assets.quality.gates.counts import count_gate
from embedding_assets.quality.gates.data_quality import check_version_data_quality, preload_expectations
from embedding_assets.quality.gates.golden import golden_quality
from embedding_assets.quality.gates.outcome import GateOutcome, Markdown
from embedding_assets.quality.gates.sentinels import sentinel_drift
from embedding_assets.quality.gates.shadow import shadow_agreement
from embedding_assets.quality.gates.stability import neighbour_stability
from embedding_assets.serving.pointer import ServingPointer, ServingState
from embedding_assets.serving.search import (
    EncoderMismatchError,
    Searcher,
    ServedStateMissingError,
    searcher_for_state,
)

COUNT_RECONCILIATION = "count_reconciliation"
SENTINEL_DRIFT = "sentinel_drift"
NEIGHBOUR_STABILITY = "neighbour_stability"
GOLDEN_QUALITY = "golden_quality"
DATA_QUALITY = "data_quality"
SHADOW_AGREEMENT = "shadow_agreement"
GATES = (
    COUNT_RECONCILIATION,
    SENTINEL_DRIFT,
    NEIGHBOUR_STABILITY,
    GOLDEN_QUALITY,
    DATA_QUALITY,
    SHADOW_AGREEMENT,
)
ANN_RECALL = "ann_recall"  # signals beside the gates: they warn, never block
SCORE_CALIBRATION = "score_calibration"
MIGRATION_REPORT = "migration_report"  # the observation's markdown: the whole report
INDEX_CHECKS = (*GATES, ANN_RECALL, SCORE_CALIBRATION)

# Partitioned asset checks are a Dagster preview feature; the warning repeats on every import.
warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)

current_encoder = embedder_for  # the model as this process loads it now (fingerprint verified)
# Errors that mean "this index cannot be judged as it stands" (mixed spaces, missing vectors or weights).
GATE_REFUSALS = (
    EncoderMismatchError,
    MissingEmbeddingsError,
    ModelRegistryError,
    ServedStateMissingError,
    FileNotFoundError,
)


def _override(threshold: str):
    """A launchpad field overriding one registry threshold for this run only."""
    meaning = GateThresholds.model_fields[threshold].description
    return Field(None, description=f"this run only: {meaning} (unset: the registry's value)")


class GateOverrides(dg.Config):
    """Thresholds of this run that differ from the registry's, and why (required with any override)."""

    override_reason: str = Field(
        "",
        description="why this run's thresholds differ from the registry's; required with any override, "
        "recorded in the checks' metadata, the run's tags and the serving history",
    )
    sentinel_warn: float | None = _override("sentinel_warn")
    sentinel_block: float | None = _override("sentinel_block")
    stability_warn: float | None = _override("stability_warn")
    stability_block: float | None = _override("stability_block")
    golden_ndcg_floor: float | None = _override("golden_ndcg_floor")
    golden_recall_floor: float | None = _override("golden_recall_floor")
    golden_ndcg_margin: float | None = _override("golden_ndcg_margin")
    golden_slice_margin: float | None = _override("golden_slice_margin")
    shadow_queries: int | None = _override("shadow_queries")


OVERRIDABLE: dict[str, tuple[str, ...]] = {  # the thresholds each gate reads
    SENTINEL_DRIFT: ("sentinel_warn", "sentinel_block"),
    NEIGHBOUR_STABILITY: ("stability_warn", "stability_block"),
    GOLDEN_QUALITY: ("golden_ndcg_floor", "golden_recall_floor", "golden_ndcg_margin", "golden_slice_margin"),
    SHADOW_AGREEMENT: ("shadow_queries",),
}
GATES_OP = "index_gates"
GATE_THREADS = 2  # six threads contended in LanceDB and took longer than one (2.09 s against 1.82 s)
RUN_ORDER = (
    DATA_QUALITY,
    GOLDEN_QUALITY,
    NEIGHBOUR_STABILITY,
    COUNT_RECONCILIATION,
    ANN_RECALL,
    SCORE_CALIBRATION,
    SHADOW_AGREEMENT,
    SENTINEL_DRIFT,
)


@dataclass(frozen=True)
class GateInputs:
    """Everything a gate reads, resolved once per check execution."""

    db: lancedb.DBConnection
    version: ModelVersion
    registry: ModelRegistry
    pointer: ServingPointer
    golden: GoldenSetResource
    thresholds: GateThresholds
    previous: dict  # this check's metadata from its last completed run on the version ({} if none)


def _overrides(config: GateOverrides) -> dict:
    values = {k: v for k, v in config.model_dump().items() if k != md.OVERRIDE_REASON and v is not None}
    if values and not config.override_reason.strip():
        raise dg.Failure(f"threshold overrides {values} need an override_reason, which the history records")
    return values


def _metadata(outcome: GateOutcome, inputs: GateInputs, overrides: dict, reason: str, seconds: float):
    metadata = {
        k: dg.MetadataValue.md(v) if isinstance(v, Markdown) else v for k, v in outcome.metadata.items()
    }
    metadata.update(
        {md.MODEL_VERSION: inputs.version.id, md.GATE_LEVEL: outcome.level, md.SECONDS: round(seconds, 2)}
    )
    if overrides:
        metadata.update({md.OVERRIDES: overrides, md.OVERRIDE_REASON: reason})
    return metadata


def _previous(instance: dg.DagsterInstance, names: list[str], version_id: str) -> dict[str, dict]:
    """Each check's metadata from its last completed evaluation on the version ({} where none)."""
    keys = [dg.AssetCheckKey(index.key, name) for name in names]
    latest = latest_check_evaluations(instance, keys, version_id)
    return {
        key.name: {k: v.value for k, v in last.metadata.items()} if (last := latest[key]) else {}
        for key in keys
    }


def _evaluated(
    name: str, evaluate: Callable[[GateInputs], GateOutcome], inputs: GateInputs, overrides: dict, reason: str
) -> tuple[GateOutcome, dict]:
    started = time.perf_counter()
    try:
        outcome = evaluate(inputs)
    except GATE_REFUSALS as exc:  # the gate could not even measure: that blocks, with the reason
        outcome = GateOutcome("block", f"{type(exc).__name__}: {exc}")
    return outcome, _metadata(outcome, inputs, overrides, reason, time.perf_counter() - started)


def _severity(outcome: GateOutcome) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.WARN if outcome.level == "warn" else dg.AssetCheckSeverity.ERROR


def _data_quality(inputs: GateInputs) -> GateOutcome:
    report = check_version_data_quality(inputs.db, inputs.version, inputs.previous)
    failures = report.failures()
    if not report.outcomes and report.passed:
        summary = "no chunk or vector written since the last validation, which passed"
    elif report.passed:
        summary = (
            f"{len(report.outcomes)} expectations met on {report.chunks} chunks and {report.rows} vectors"
        )
    else:
        summary = "; ".join(f"{f.suite}.{f.column}: {f.expectation}" for f in failures)
    return GateOutcome(
        "pass" if report.passed else "block",
        summary,
        {
            "chunks": report.chunks,
            "rows": report.rows,
            "expectations": len(report.outcomes),
            "failed_expectations": len(failures),
            "validator_peak_rss_gib": report.validator_peak_rss_gib,
            **report.to_metadata(),
            "results": report.table(),
            "failures": [{"expectation": f.expectation, "column": f.column, **f.observed} for f in failures],
        },
    )


def _ann_recall(g: GateInputs) -> GateOutcome:
    return ann_recall(g.db, current_encoder(g.version), g.golden.fixed_queries(), g.previous)


def ann_recall_after_maintenance(
    instance: dg.DagsterInstance,
    db: lancedb.DBConnection,
    registry: ModelRegistry,
    version: ModelVersion,
    pointer: ServingPointer,
    golden: GoldenSetResource,
) -> dg.AssetCheckEvaluation:
    """The ann_recall check, evaluated by a run that changed the version's vector index without running
    its checks (index maintenance), as the evaluation that run logs: the recall is measured where the
    index changed, and the next refresh's check, finding the same index, reports it again."""
    previous = _previous(instance, [ANN_RECALL], version.id)[ANN_RECALL]
    inputs = GateInputs(db, version, registry, pointer, golden, version.gates, previous)
    outcome, metadata = _evaluated(ANN_RECALL, _ann_recall, inputs, {}, "")
    return dg.AssetCheckEvaluation(
        asset_key=index.key,
        check_name=ANN_RECALL,
        passed=outcome.passed,
        metadata=metadata,
        severity=_severity(outcome),
        description=outcome.summary,
        blocking=False,
        partition=version.id,
    )


@dataclass(frozen=True)
class Gate:
    """What one check on `index` measures and how: `evaluate` gives its outcome."""

    description: str
    evaluate: Callable[[GateInputs], GateOutcome]
    blocking: bool = True


GATE_DEFINITIONS: dict[str, Gate] = {
    COUNT_RECONCILIATION: Gate(
        "Manifest vs chunks vs index rows: no orphan, stale, missing or duplicate rows; one model space.",
        lambda g: count_gate(g.db, g.version, g.previous),
    ),
    SENTINEL_DRIFT: Gate(
        "Sentinel chunks stored at the first build, re-embedded now: cosine distance p50/p95/max.",
        lambda g: sentinel_drift(g.db, g.version, current_encoder(g.version), g.thresholds),
    ),
    NEIGHBOUR_STABILITY: Gate(
        "Top-10 overlap of fixed queries with the last served state of this version.",
        lambda g: neighbour_stability(
            g.db, g.version, g.pointer, g.registry, g.golden.fixed_queries(), g.thresholds, g.previous
        ),
    ),
    GOLDEN_QUALITY: Gate(
        "nDCG@10 and recall@10 on judged queries: above the floors and within a margin of the served "
        "version.",
        lambda g: golden_quality(
            g.db, g.version, g.pointer, g.registry, g.golden.judged(), g.thresholds, GOLDEN_QUALITY
        ),
    ),
    DATA_QUALITY: Gate(
        "great-expectations suites on chunks and vectors: unique ids, text, token limits, finite unit "
        "vectors.",
        _data_quality,
    ),
    SHADOW_AGREEMENT: Gate(
        "Live queries mirrored to this version by `serve --shadow`: top-1 match and top-10 overlap with "
        "the served version; blocks until the registry's shadow_queries have been answered.",
        lambda g: shadow_agreement(g.version, g.pointer, g.thresholds),
    ),
    ANN_RECALL: Gate(
        "recall@10 of the ANN index against exact search on the judged queries; warns below 0.95, never "
        "blocks (a table under the ANN threshold searches exactly and passes).",
        _ann_recall,
        blocking=False,
    ),
    SCORE_CALIBRATION: Gate(
        "The served version's thresholds (registry `thresholds:`) mapped into this version's space by "
        "quantile of their score profiles, with the pair decisions that flip; warns when this version "
        "does not carry them, never blocks.",
        lambda g: score_calibration(g.db, g.version, g.pointer, g.registry, g.golden.judged()),
        blocking=False,
    ),
}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            name,
            asset=index,
            description=gate.description,
            blocking=gate.blocking,
            partitions_def=model_versions,
        )
        for name, gate in GATE_DEFINITIONS.items()
    ],
    name=GATES_OP,
    can_subset=True,
    description="The gates on one version's index, judged side by side; a run may select any of them.",
)
def index_gates(
    context: dg.AssetCheckExecutionContext,
    config: GateOverrides,
    lancedb: LanceDBResource,
    model_registry: ModelRegistryResource,
    serving: ServingResource,
    golden_set: GoldenSetResource,
) -> Iterator[dg.AssetCheckResult]:
    """Judge the selected gates in GATE_THREADS threads, then report each. A gate that raises (rather than
    refusing to judge, which blocks) fails the step once the others have reported."""
    preload_expectations()  # a run of gates alone: the data-quality gate's library loads meanwhile
    overrides = _overrides(config)
    registry = model_registry.load()
    version = registry.get(context.partition_key)
    thresholds = GateThresholds.model_validate({**version.gates.model_dump(), **overrides})
    selected = [n for n in RUN_ORDER if dg.AssetCheckKey(index.key, n) in context.selected_asset_check_keys]
    previous = _previous(context.instance, selected, version.id)
    pointer = serving.pointer()

    def judge(name: str) -> tuple[GateOutcome, dict]:
        inputs = GateInputs(
            lancedb.connect(), version, registry, pointer, golden_set, thresholds, previous[name]
        )
        own = {k: v for k, v in overrides.items() if k in OVERRIDABLE.get(name, ())}
        return _evaluated(name, GATE_DEFINITIONS[name].evaluate, inputs, own, config.override_reason)

    with ThreadPoolExecutor(GATE_THREADS, thread_name_prefix="gate") as pool:
        judged = {name: pool.submit(judge, name) for name in selected}
    error: Exception | None = None
    reported: dict[str, GateOutcome] = {}
    for name in (n for n in INDEX_CHECKS if n in judged):
        try:
            outcome, metadata = judged[name].result()
        except Exception as exc:  # the other gates still report; the step fails below
            context.log.error(f"{name} [{version.id}] raised {type(exc).__name__}: {exc}")
            error = error or exc
            continue
        reported[name] = outcome
        context.log.info(f"{name} [{version.id}]: {outcome.level}: {outcome.summary}")
        yield dg.AssetCheckResult(
            asset_key=index.key,
            check_name=name,
            passed=outcome.passed,
            severity=_severity(outcome),
            description=outcome.summary,
            metadata=metadata,
        )
        faults.failpoint(faults.GATE_JUDGED)
    if error is not None:
        raise error
    served = pointer.current()
    if len(reported) == len(INDEX_CHECKS) and served is not None and served.version != version.id:
        observation = migration_report(
            context, lancedb.connect(), registry, version, served, serving, golden_set, reported
        )
        if observation is not None:
            context.op_execution_context.log_event(observation)


def migration_report(
    context: dg.AssetCheckExecutionContext,
    db: lancedb.DBConnection,
    registry: ModelRegistry,
    version: ModelVersion,
    served: ServingState,
    serving: ServingResource,
    golden_set: GoldenSetResource,
    reported: dict[str, GateOutcome],
) -> dg.AssetObservation | None:
    """Write the migration report of `version` against what serves, as an observation of its index
    partition; a report that cannot be written is logged, never a reason to fail the gates."""
    # Imported here: matplotlib would add 0.4 s to every process that loads the definitions.
    from embedding_assets.quality.migration_report import MigrationInputs, write_report

    try:
        embedded = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=embeddings.key, asset_partitions=[version.id]), limit=1
        ).records
        inputs = MigrationInputs(
            candidate=version,
            served=registry.get(served.version),
            served_table_version=served.table_version,
            checks=reported,
            blocking={n for n, gate in GATE_DEFINITIONS.items() if gate.blocking},
            embedded={k: v.value for k, v in embedded[0].asset_materialization.metadata.items()}
            if embedded
            else {},
            price_per_million_tokens=serving.price_per_million_tokens,
            run_id=context.run.run_id,
        )
        path, summary = write_report(
            db,
            Path(serving.folder),
            inputs,
            Searcher(db, version),
            searcher_for_state(served, db, registry),
            golden_set.judged(),
        )
    except Exception as exc:  # noqa: BLE001  (the gates judged; the report only tells their story)
        context.log.error(
            f"the migration report of {version.id} could not be written: {type(exc).__name__}: {exc}"
        )
        return None
    context.log.info(f"migration report: {path}")
    return dg.AssetObservation(
        asset_key=index.key,
        partition=version.id,
        description=f"migration report: {served.version} -> {version.id}",
        metadata={
            **{k: dg.MetadataValue.path(v) if k == "report" else v for k, v in summary.items()},
            MIGRATION_REPORT: dg.MetadataValue.md(path.read_text(encoding="utf-8")),
        },
    )


def override_run_config(overrides: dict[str, float], reason: str) -> dict:
    """Run config setting threshold overrides (field -> value) on the gates' op, with a reason."""
    overridable = sorted(f for fields in OVERRIDABLE.values() for f in fields)
    unknown = sorted(set(overrides) - set(overridable))
    if unknown:
        raise ValueError(f"unknown threshold {unknown[0]!r}; overridable: {overridable}")
    return {"ops": {GATES_OP: {"config": {md.OVERRIDE_REASON: reason, **overrides}}}}
