"""What a finished run concluded, read from its events: the gates, whether serving moved, errors.

The same summary holds for a run executed in this process and for one launched on the instance's queue
and followed to its end: both are read from the run's Dagster events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.checks.verdict import check_summary
from embedding_assets.serving.pointer import ServingPointer


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its id, whether it succeeded, and its Dagster events in order."""

    run_id: str
    success: bool
    events: list[dg.DagsterEvent]

    @classmethod
    def of_result(cls, result: dg.ExecuteInProcessResult) -> RunOutcome:
        return cls(result.run_id, result.success, list(result.all_events))

    @classmethod
    def of_run(cls, instance: dg.DagsterInstance, run_id: str) -> RunOutcome:
        run = instance.get_run_by_id(run_id)
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.is_dagster_event]
        return cls(run_id, run is not None and run.status == dg.DagsterRunStatus.SUCCESS, events)

    def materializations(self) -> list[dg.DagsterEvent]:
        return [e for e in self.events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]

    def check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [
            e.event_specific_data
            for e in self.events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]

    def errors(self) -> list[str]:
        """Why the run failed, except a blocking check that failed (that is a verdict, not an error): its
        step failures, or the run's own failure when no step failed (a run worker that died, a cancel)."""
        steps = [e for e in self.events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        if not steps and not self.success:
            return [
                e.message or "" for e in self.events if e.event_type == dg.DagsterEventType.RUN_FAILURE
            ] or ["the run did not succeed"]
        return [
            f"{e.step_key}: {_root_cause(e.event_specific_data.error)}"
            for e in steps
            if "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
        ]


def _root_cause(error) -> str:
    """The user's own error under Dagster's wrappers ("Error occurred while executing op ...")."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


@dataclass
class GateRun:
    """What a run that evaluates gates concluded: the checks, whether serving moved, and timings."""

    version: str
    promoted: bool
    served_version: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run_id: str = ""
    gates_run_id: str = ""  # a build is gated in a run of its own
    promote_run_id: str = ""  # and a migration promotes in another

    @property
    def gates_passed(self) -> bool:
        return not self.errors and all(c["passed"] or c["severity"] != "ERROR" for c in self.checks)

    @property
    def gate_seconds(self) -> float:
        return round(sum(float(c["metadata"].get(md.SECONDS, 0)) for c in self.checks), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "version": self.version,
            "served_version": self.served_version,
            "checks": [{k: c[k] for k in ("name", "passed", "severity", "metadata")} for c in self.checks],
            "errors": self.errors,
            md.SECONDS: round(self.seconds, 2),
            "gate_seconds": self.gate_seconds,
            "run_id": self.run_id,
            "gates_run_id": self.gates_run_id,
            "promote_run_id": self.promote_run_id,
        }


def gate_run(version_id: str, outcome: RunOutcome, seconds: float, pointer: ServingPointer) -> GateRun:
    """Summarize a finished run of `version_id` (a failed blocking check is not an error)."""
    promoted = any(e.asset_key == serving_index.key for e in outcome.materializations())
    checks = [check_summary(c) for c in outcome.check_evaluations() if c.asset_key == index.key]
    served = pointer.current()
    return GateRun(
        version_id,
        promoted,
        served.version if served else None,
        checks,
        outcome.errors(),
        seconds,
        outcome.run_id,
    )


def materialization_metadata(outcome: RunOutcome, asset_key: dg.AssetKey) -> dict[str, Any]:
    """The metadata values of the asset's last materialization in the run ({} when it did not)."""
    found: dict[str, Any] = {}
    for event in outcome.materializations():
        if event.asset_key == asset_key:
            found = {k: v.value for k, v in event.materialization.metadata.items()}
    return found


def observation_metadata(outcome: RunOutcome, asset_key: dg.AssetKey) -> dict[str, Any]:
    """The metadata values of the asset's last observation in the run ({} when it logged none)."""
    found: dict[str, Any] = {}
    for event in outcome.events:
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION and event.asset_key == asset_key:
            observation = event.event_specific_data.asset_observation
            found = {k: v.value for k, v in observation.metadata.items()}
    return found
