"""A fitted bridge as an artifact: its map's arrays (`<old>--<new>.npz`) and a record beside them
(`.json`) of its measurements and both versions' pins. Loading refuses a bridge whose measured
retention is below the bar, whose pins are no longer the registry's, or whose arrays were altered."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from embedding_assets import locations
from embedding_assets.bridge.fit import Measurement, Trial
from embedding_assets.bridge.maps import BridgeMap, load_map
from embedding_assets.models.registry import ModelRegistry

# The bar: bridged nDCG@10 at least 90% of the old model's own (Drift-Adapter reports 95-99%
# within a model family); below it, queries are better refused than served through the bridge.
MIN_RETENTION = 0.90


class BridgeRefusedError(RuntimeError):
    """No bridge may serve this pair: none measured, none good enough, or its pins have moved."""


@dataclass(frozen=True)
class StoredBridge:
    """A loaded bridge that passed every check, with its record."""

    bridge: BridgeMap
    record: dict  # what `save_bridge` wrote: the measurements and both versions' pins


def bridge_paths(folder: Path, old: str, new: str) -> tuple[Path, Path]:
    """(arrays, record) of the bridge from `new` queries into `old`'s index."""
    stem = folder / f"{old}--{new}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def best_passing(measurement: Measurement, min_retention: float = MIN_RETENTION) -> Trial:
    """The best trial, or BridgeRefusedError naming every method's best retention and sample size."""
    best = measurement.best()
    if best.retention >= min_retention:
        return best
    per_method: dict[str, Trial] = {}
    for trial in measurement.trials:
        if trial.method not in per_method or trial.retention > per_method[trial.method].retention:
            per_method[trial.method] = trial
    found = ", ".join(
        f"{t.method} {t.retention:.3f} (nDCG@10 {t.ndcg:.4f}, {t.samples} texts)" for t in per_method.values()
    )
    raise BridgeRefusedError(
        f"no bridge brings {measurement.new.id} queries into {measurement.old.id}'s index to retention "
        f"{min_retention:.2f} of its own nDCG@10 {best.old_ndcg:.4f} on {measurement.queries} judged "
        f"queries: {found}; refusing to store or serve one"
    )


def save_bridge(folder: Path, measurement: Measurement, trial: Trial, context: dict) -> Path:
    """Write `trial`'s map and its record (measurements, both pins, `context`); the record's path."""
    locations.private_folder(folder)
    arrays_path, record_path = bridge_paths(folder, measurement.old.id, measurement.new.id)
    partial = arrays_path.with_suffix(".tmp.npz")
    np.savez(partial, **trial.bridge.arrays())
    partial.replace(arrays_path)
    record = {
        "old": measurement.old.id,
        "new": measurement.new.id,
        "old_fingerprint": measurement.old.pinned_fingerprint(),
        "new_fingerprint": measurement.new.pinned_fingerprint(),
        "arrays_sha256": _sha256(arrays_path),
        "min_retention": MIN_RETENTION,
        "fitted_at": datetime.now(UTC).isoformat(),
        **trial.to_json(),
        **context,
        "measurement": measurement.to_json(),
    }
    partial = record_path.with_suffix(".tmp.json")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial.replace(record_path)
    return record_path


def load_bridge(folder: Path, old: str, new: str, registry: ModelRegistry) -> StoredBridge:
    """The stored bridge from `new` queries into `old`'s index, after checking that its measured
    retention reaches MIN_RETENTION, that the registry still pins both versions as at its fit, and that
    its arrays are the ones measured; BridgeRefusedError saying which check failed otherwise."""
    arrays_path, record_path = bridge_paths(folder, old, new)
    if not record_path.exists() or not arrays_path.exists():
        raise BridgeRefusedError(
            f"no bridge from {new} into {old} in {folder}: fit one with "
            f"`embedding-assets bridge --old {old} --new {new}`"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if float(record["retention"]) < MIN_RETENTION:
        raise BridgeRefusedError(
            f"the bridge from {new} into {old} retains {record['retention']:.3f} of {old}'s nDCG@10, "
            f"below {MIN_RETENTION:.2f}; refusing to serve through it"
        )
    for side in ("old", "new"):
        pinned = registry.get(record[side]).pinned_fingerprint()
        if pinned != record[f"{side}_fingerprint"]:
            raise BridgeRefusedError(
                f"the bridge from {new} into {old} was fit with {record[side]} at "
                f"{record[f'{side}_fingerprint']}, but the registry now pins {pinned}; refit it"
            )
    if _sha256(arrays_path) != record["arrays_sha256"]:
        raise BridgeRefusedError(f"{arrays_path} is not the map its record measured; refit it")
    with np.load(arrays_path) as arrays:
        bridge = load_map(record["method"], {name: arrays[name] for name in arrays.files})
    return StoredBridge(bridge, record)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
