"""What a finished run concluded, read from its events: the gates, whether serving moved, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.serving import serving_index
from embedding_assets.defs.checks.verdict import check_summary
from embedding_assets.serving.pointer import ServingPointer


@dataclass
class GateRun:
    """What a run that evaluates gates concluded: the checks, whether serving moved, and timings."""

    version: str
    promoted: bool
    served_version: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

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
        }


def gate_run(
    version_id: str, result: dg.ExecuteInProcessResult, seconds: float, pointer: ServingPointer
) -> GateRun:
    """Summarize a finished in-process run of `version_id` (a failed blocking check is not an error)."""
    promoted = any(e.asset_key == serving_index.key for e in result.get_asset_materialization_events())
    checks = [check_summary(e) for e in result.get_asset_check_evaluations() if e.asset_key == index.key]
    errors = [
        f"{e.step_key}: {e.event_specific_data.error.message.strip()}"
        for e in result.get_step_failure_events()
        if "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
    ]
    served = pointer.current()
    return GateRun(version_id, promoted, served.version if served else None, checks, errors, seconds)


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition) -> dict[str, Any]:
    """The metadata values of `asset`'s materialization in the run ({} when it did not materialize)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == asset.key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}
