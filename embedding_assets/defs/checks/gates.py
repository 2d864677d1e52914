"""The gates on each version's index: blocking, partitioned asset checks built by one factory.

A gate that fails blocks with ERROR severity; a signal in its warning band fails with WARN and does not
block. Every check takes a launchpad config whose set fields override the registry's thresholds for that
one run; the override and its reason are recorded in the check's metadata and the serving history.
"""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import lancedb
from pydantic import Field

from embedding_assets import metadata as md
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
from embedding_assets.quality.gates.counts import count_gate
from embedding_assets.quality.gates.data_quality import check_version_data_quality, preload_expectations
from embedding_assets.quality.gates.golden import golden_quality
from embedding_assets.quality.gates.outcome import GateOutcome, Markdown
from embedding_assets.quality.gates.sentinels import sentinel_drift
from embedding_assets.quality.gates.stability import neighbour_stability
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.search import EncoderMismatchError, ServedStateMissingError

COUNT_RECONCILIATION = "count_reconciliation"
SENTINEL_DRIFT = "sentinel_drift"
NEIGHBOUR_STABILITY = "neighbour_stability"
GOLDEN_QUALITY = "golden_quality"
DATA_QUALITY = "data_quality"
GATES = (COUNT_RECONCILIATION, SENTINEL_DRIFT, NEIGHBOUR_STABILITY, GOLDEN_QUALITY, DATA_QUALITY)
ANN_RECALL = "ann_recall"  # a signal beside the gates: it warns, never blocks
INDEX_CHECKS = (*GATES, ANN_RECALL)

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


class GateOverride(dg.Config):
    """Why the thresholds of this run differ from the registry's (required with any override)."""

    override_reason: str = Field(
        "",
        description="why this run's thresholds differ from the registry's; required with any override, "
        "recorded in the check's metadata, the run's tags and the serving history",
    )


class NoOverride(GateOverride):
    pass


class SentinelDriftOverride(GateOverride):
    sentinel_warn: float | None = _override("sentinel_warn")
    sentinel_block: float | None = _override("sentinel_block")


class NeighbourStabilityOverride(GateOverride):
    stability_warn: float | None = _override("stability_warn")
    stability_block: float | None = _override("stability_block")


class GoldenQualityOverride(GateOverride):
    golden_ndcg_floor: float | None = _override("golden_ndcg_floor")
    golden_recall_floor: float | None = _override("golden_recall_floor")
    golden_ndcg_margin: float | None = _override("golden_ndcg_margin")


OVERRIDE_TYPES: dict[str, type[GateOverride]] = {
    COUNT_RECONCILIATION: NoOverride,
    SENTINEL_DRIFT: SentinelDriftOverride,
    NEIGHBOUR_STABILITY: NeighbourStabilityOverride,
    GOLDEN_QUALITY: GoldenQualityOverride,
    DATA_QUALITY: NoOverride,
    ANN_RECALL: NoOverride,
}


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


def _overrides(config: GateOverride) -> dict:
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


def gate_check(
    name: str, description: str, evaluate: Callable[[GateInputs], GateOutcome], *, blocking: bool = True
) -> dg.AssetChecksDefinition:
    """A partitioned check on `index` (blocking unless told) that runs `evaluate` and reports its outcome."""
    config_type = OVERRIDE_TYPES[name]

    @dg.asset_check(
        asset=index, name=name, blocking=blocking, partitions_def=model_versions, description=description
    )
    def _check(
        context: dg.AssetCheckExecutionContext,
        config: config_type,
        lancedb: LanceDBResource,
        model_registry: ModelRegistryResource,
        serving: ServingResource,
        golden_set: GoldenSetResource,
    ) -> dg.AssetCheckResult:
        preload_expectations()  # a run of gates alone: the data-quality gate's library loads meanwhile
        registry = model_registry.load()
        version = registry.get(context.partition_key)
        overrides = _overrides(config)
        thresholds = GateThresholds.model_validate({**version.gates.model_dump(), **overrides})
        inputs = GateInputs(
            lancedb.connect(),
            version,
            registry,
            serving.pointer(),
            golden_set,
            thresholds,
            _previous(context.instance, name, version.id),
        )
        outcome, metadata = _evaluated(name, evaluate, inputs, overrides, config.override_reason)
        context.log.info(f"{name} [{version.id}]: {outcome.level}: {outcome.summary}")
        return dg.AssetCheckResult(
            passed=outcome.passed, severity=_severity(outcome), description=outcome.summary, metadata=metadata
        )

    return _check


def _previous(instance: dg.DagsterInstance, name: str, version_id: str) -> dict:
    """Check `name`'s metadata from its last completed evaluation on the version ({} if none)."""
    key = dg.AssetCheckKey(index.key, name)
    last = latest_check_evaluations(instance, [key], version_id)[key]
    return {k: v.value for k, v in last.metadata.items()} if last else {}


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


count_reconciliation = gate_check(
    COUNT_RECONCILIATION,
    "Manifest vs chunks vs index rows: no orphan, stale, missing or duplicate rows; one model space.",
    lambda g: count_gate(g.db, g.version, g.previous),
)
sentinel_drift_check = gate_check(
    SENTINEL_DRIFT,
    "Sentinel chunks stored at the first build, re-embedded now: cosine distance p50/p95/max.",
    lambda g: sentinel_drift(g.db, g.version, current_encoder(g.version), g.thresholds),
)
neighbour_stability_check = gate_check(
    NEIGHBOUR_STABILITY,
    "Top-10 overlap of fixed queries with the last served state of this version.",
    lambda g: neighbour_stability(
        g.db, g.version, g.pointer, g.registry, g.golden.fixed_queries(), g.thresholds, g.previous
    ),
)
golden_quality_check = gate_check(
    GOLDEN_QUALITY,
    "nDCG@10 and recall@10 on judged queries: above the floors and within a margin of the served version.",
    lambda g: golden_quality(
        g.db, g.version, g.pointer, g.registry, g.golden.judged(), g.thresholds, GOLDEN_QUALITY
    ),
)
data_quality_check = gate_check(
    DATA_QUALITY,
    "great-expectations suites on chunks and vectors: unique ids, text, token limits, finite unit vectors.",
    _data_quality,
)


def _ann_recall(g: GateInputs) -> GateOutcome:
    return ann_recall(g.db, current_encoder(g.version), g.golden.fixed_queries(), g.previous)


ann_recall_check = gate_check(
    ANN_RECALL,
    "recall@10 of the ANN index against exact search on the judged queries; warns below 0.95, never "
    "blocks (a table under the ANN threshold searches exactly and passes).",
    _ann_recall,
    blocking=False,
)


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
    inputs = GateInputs(
        db, version, registry, pointer, golden, version.gates, _previous(instance, ANN_RECALL, version.id)
    )
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


index_checks = [
    count_reconciliation,
    sentinel_drift_check,
    neighbour_stability_check,
    golden_quality_check,
    data_quality_check,
    ann_recall_check,
]


def override_run_config(overrides: dict[str, float], reason: str) -> dict:
    """Run config setting threshold overrides (field -> value) on the checks that own them, with a reason."""
    owners = {
        field: name
        for name, config_type in OVERRIDE_TYPES.items()
        for field in config_type.model_fields
        if field != md.OVERRIDE_REASON
    }
    op_names = {next(iter(c.check_keys)).name: c.node_def.name for c in index_checks}
    ops: dict[str, dict] = {}
    for field, value in overrides.items():
        if field not in owners:
            raise ValueError(f"unknown threshold {field!r}; overridable: {sorted(owners)}")
        ops.setdefault(op_names[owners[field]], {"config": {md.OVERRIDE_REASON: reason}})["config"][field] = (
            value
        )
    return {"ops": ops}
