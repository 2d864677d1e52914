"""The gate verdict of a version: did every blocking check pass on its latest index materialization?

Dagster's blocking checks stop `serving_index` within one run; this verdict makes the same rule hold
when serving is materialized in a later run (a UI click, `promote`): it reads the instance's records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.dagster_private import latest_check_evaluations
from embedding_assets.serving.pointer import ANY_SERVED

INDEX_KEY = index.key
KEPT_IN_HISTORY = (md.PER_QUERY_NDCG,)  # structured metadata the serving history keeps


def jsonable(value: Any) -> Any:
    """A metadata value as plain JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def check_summary(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    """`{"name", "passed", "severity", "description", "metadata"}` of one check evaluation."""
    return {
        "name": evaluation.check_name,
        "passed": evaluation.passed,
        "severity": evaluation.severity.value,
        "description": evaluation.description,
        "metadata": {k: jsonable(v.value) for k, v in evaluation.metadata.items()},
    }


@dataclass(frozen=True)
class GateVerdict:
    """Whether `version` may serve, which Lance table version the gates judged, and why not if not."""

    version: str
    table_version: int | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.blockers

    def overrides(self) -> dict[str, Any]:
        return {
            c["name"]: {
                "thresholds": c["metadata"][md.OVERRIDES],
                "reason": c["metadata"].get(md.OVERRIDE_REASON),
            }
            for c in self.checks
            if c["metadata"].get(md.OVERRIDES)
        }

    def compared_with(self, gate: str) -> str | None:
        """The version `gate` compared the candidate with (None: nothing served then); ANY_SERVED when
        the verdict has no such comparison."""
        for check in self.checks:
            if check["name"] == gate:
                return check["metadata"].get(md.SERVED_VERSION)
        return ANY_SERVED

    def history_record(self) -> dict[str, Any]:
        """The compact summary kept with a promotion: each gate's verdict, level and numbers, and the
        per-query scores a later paired comparison with this state reads."""
        return {
            c["name"]: {
                "passed": c["passed"],
                "severity": c["severity"],
                "summary": c["description"],
                **{
                    k: v
                    for k, v in c["metadata"].items()
                    if isinstance(v, int | float | bool) or k in KEPT_IN_HISTORY
                },
            }
            for c in self.checks
        }


def latest_verdict(instance: dg.DagsterInstance, version_id: str, gates: tuple[str, ...]) -> GateVerdict:
    """Read the latest index materialization of the partition and the latest run of every gate on it."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INDEX_KEY, asset_partitions=[version_id]), limit=1
    ).records
    if not records:
        return GateVerdict(version_id, None, blockers=[f"index has never been materialized for {version_id}"])
    materialization = records[0]
    meta = materialization.asset_materialization.metadata
    table_version = meta[md.LANCE_TABLE_VERSION].value if md.LANCE_TABLE_VERSION in meta else None
    latest = latest_check_evaluations(instance, [dg.AssetCheckKey(INDEX_KEY, g) for g in gates], version_id)
    checks, blockers = [], []
    for gate in gates:
        evaluation = latest[dg.AssetCheckKey(INDEX_KEY, gate)]
        if evaluation is None:
            blockers.append(f"{gate}: has not run on {version_id}")
            continue
        checks.append(check_summary(evaluation))
        target = evaluation.target_materialization_data
        if target is None or target.storage_id != materialization.storage_id:
            blockers.append(
                f"{gate}: last ran on an earlier materialization of index[{version_id}]; re-run the gates"
            )
        elif not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            blockers.append(f"{gate}: {evaluation.description}")
    return GateVerdict(version_id, table_version, checks, blockers)
