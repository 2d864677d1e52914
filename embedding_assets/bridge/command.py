"""Fit and judge a bridge for one old/new pair, on the deployment's index or a BEIR dataset's scratch
index: every method on every sample size, the best stored when it reaches the retention bar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lancedb

from embedding_assets.bridge.fit import DEFAULT_SAMPLES, Measurement, measure
from embedding_assets.bridge.maps import METHODS
from embedding_assets.bridge.store import BridgeRefusedError, best_passing, save_bridge
from embedding_assets.index import store
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.evaluation import JudgedQueries, build_dataset_index, load_judged
from embedding_assets.quality.gates.outcome import markdown_table

BRIDGE_CACHE = "bridge"  # the scratch database caching the vectors bridges are fit on, for every corpus
TABLE_HEADER = ["method", "fit texts", "nDCG@10 bridged", "old nDCG@10", "retention", "Δ [95%]", "ms/query"]


@dataclass(frozen=True)
class BridgeVerdict:
    """A pair's measurement, and where its bridge was stored, or why none was."""

    measurement: Measurement
    stored: Path | None
    refused: BridgeRefusedError | None

    def to_json(self) -> dict:
        return {
            **self.measurement.to_json(),
            "stored": None if self.stored is None else str(self.stored),
            "refused": None if self.refused is None else str(self.refused),
        }

    def table(self) -> str:
        rows = [
            [
                t.method,
                t.samples,
                t.ndcg,
                t.old_ndcg,
                f"{t.retention:.3f}",
                f"{t.delta.mean:+.4f} [{t.delta.low:+.4f}, {t.delta.high:+.4f}]",
                f"{t.latency_ms:.4f}",
            ]
            for t in self.measurement.trials
        ]
        return markdown_table(TABLE_HEADER, rows)


def judge_pair(
    db: lancedb.DBConnection,
    scratch_dir: Path,
    old: ModelVersion,
    new: ModelVersion,
    judged: JudgedQueries,
    folder: Path,
    *,
    samples: tuple[int, ...] = DEFAULT_SAMPLES,
    methods: tuple[str, ...] = tuple(METHODS),
    context: dict | None = None,
) -> BridgeVerdict:
    """Measure every method on `old`'s index in `db`; store the best bridge in `folder` if it passes."""
    scratch = store.connect(scratch_dir / BRIDGE_CACHE)
    measurement = measure(db, scratch, old, new, judged, samples, methods)
    try:
        best = best_passing(measurement)
    except BridgeRefusedError as refused:
        return BridgeVerdict(measurement, None, refused)
    return BridgeVerdict(measurement, save_bridge(folder, measurement, best, context or {}), None)


def judge_pair_on_dataset(
    dataset: Path, scratch_dir: Path, old: ModelVersion, new: ModelVersion, **options
) -> BridgeVerdict:
    """`judge_pair` on a BEIR folder: `old`'s scratch index of it (built if missing, served index
    untouched) and its judged queries; the bridge is stored beside that scratch index."""
    db, build = build_dataset_index(dataset, old, scratch_dir)
    folder = Path(build["scratch"]) / "bridges"
    context = {"dataset": str(dataset)}
    return judge_pair(db, scratch_dir, old, new, load_judged(dataset), folder, context=context, **options)
