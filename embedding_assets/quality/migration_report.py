"""The migration report: what judging a candidate against the served version found, as one markdown file
with its plots, written beside the serving history (`reports/`) and summarized in Dagster metadata.

It gathers what the gates measured (each verdict, the golden interval and slices, thresholds mapped) and
adds what only a comparison of two versions shows: the per-query overlap of their top 10, how deep in the
served top-K the candidate's top 10 lies (containment), the cost of embedding the corpus in the candidate's
model, and the dimension tax (storage per million vectors, full and as the ANN index's codes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow.compute as pc

from embedding_assets.index import ann, store, tables
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality import plots
from embedding_assets.quality.calibration import PAIR_KINDS, load_profile
from embedding_assets.quality.evaluation import JudgedQueries, ranked_documents
from embedding_assets.quality.gates.outcome import GateOutcome, markdown_table
from embedding_assets.quality.gates.sentinels import DISTANCES
from embedding_assets.quality.gates.stability import CROSS_VERSION_OVERLAPS
from embedding_assets.serving.search import Searcher

REPORTS_FOLDER = "reports"  # in the serving folder, beside the pointer and its history
REPORT_FILE = "report.md"
CONTAINMENT_DEPTHS = (10, 50, 100)
NEW_TOP = 10
FLOAT_BYTES = 4
MILLION = 1_000_000
# Sections of gate metadata copied into the report as they are (markdown tables).
GOLDEN_TABLES = ("slices", "queries_moved", "comparison")
CALIBRATION_TABLES = ("thresholds", "flipped_pairs", "score_quantiles")


@dataclass
class MigrationInputs:
    """What a report is made of: the two versions, each check's outcome and metadata, and the build."""

    candidate: ModelVersion
    served: ModelVersion
    served_table_version: int
    checks: dict[str, GateOutcome]
    blocking: set[str]
    embedded: dict[str, Any] = field(default_factory=dict)  # the candidate's latest embeddings metadata
    price_per_million_tokens: float = 0.0
    run_id: str = ""


def containment(new_top: list[list[str]], old_ranked: list[list[str]]) -> dict[int, float]:
    """Per depth K, the mean share of each query's new top 10 found in its old top K."""
    shares: dict[int, float] = {}
    for depth in CONTAINMENT_DEPTHS:
        per_query = [
            len(set(new) & set(old[:depth])) / len(new)
            for new, old in zip(new_top, old_ranked, strict=True)
            if new
        ]
        shares[depth] = round(float(np.mean(per_query)), 4) if per_query else 0.0
    return shares


def dimension_tax(version: ModelVersion) -> dict[str, Any]:
    """Bytes per million vectors of `version`: float32, and as the IVF_RQ index's codes."""
    full = version.dimension * FLOAT_BYTES * MILLION
    codes = version.dimension * ann.RQ_BITS * MILLION // 8
    return {"dimension": version.dimension, "float32_per_million": full, "rq_codes_per_million": codes}


def corpus_tokens(db: lancedb.DBConnection, version: ModelVersion) -> tuple[int, int]:
    """Distinct chunk texts of the version and their model tokens: what embedding its corpus costs."""
    chunks = store.read_columns(db, tables.chunks_table(version.id), ["chunk_hash", "token_count"])
    first = pc.index_in(pc.unique(chunks["chunk_hash"]), chunks["chunk_hash"])
    tokens = pc.sum(pc.take(chunks["token_count"], first)).as_py() or 0
    return len(first), int(tokens)


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def write_report(
    db: lancedb.DBConnection,
    serving_folder: Path,
    inputs: MigrationInputs,
    candidate: Searcher,
    served: Searcher,
    judged: JudgedQueries,
) -> tuple[Path, dict[str, Any]]:
    """Write the report and its plots to a folder of their own under `serving_folder`/reports; return
    the report's path and its headline figures for Dagster metadata."""
    at = datetime.now(UTC)
    name = f"{at:%Y%m%dT%H%M%SZ}-{inputs.served.id}-to-{inputs.candidate.id}"
    folder = serving_folder / REPORTS_FOLDER / re.sub(r"[^A-Za-z0-9._-]", "_", name)
    folder.mkdir(parents=True, exist_ok=True)
    queries = list(judged.queries.values())
    new_top = ranked_documents(candidate, queries, NEW_TOP)
    contained = containment(new_top, ranked_documents(served, queries, max(CONTAINMENT_DEPTHS)))
    texts, tokens = corpus_tokens(db, inputs.candidate)
    cost = round(tokens / MILLION * inputs.price_per_million_tokens, 4)
    figures: dict[str, Path] = {}
    lines = [
        *_gates_section(inputs, at),
        *_golden_section(inputs),
        *_neighbours_section(inputs, contained, len(queries), folder, figures),
        *_thresholds_section(db, inputs, folder, figures),
        *_cost_section(inputs, texts, tokens, cost),
        *_tax_section(inputs),
    ]
    if figures:
        lines += ["", "## Plots", ""] + [f"![{key}]({path.name})" for key, path in figures.items()]
    path = folder / REPORT_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "report": str(path),
        **{f"containment@{k}": v for k, v in contained.items()},
        "corpus_tokens": tokens,
        "embedding_cost": cost,
    }
    return path, summary


def _metadata_with(inputs: MigrationInputs, key: str) -> dict[str, Any]:
    """The metadata of the first check that reported `key` ({} if none did)."""
    return next((o.metadata for o in inputs.checks.values() if key in o.metadata), {})


def _gates_section(inputs: MigrationInputs, at: datetime) -> list[str]:
    blocked = [n for n, o in inputs.checks.items() if n in inputs.blocking and o.level == "block"]
    verdict = f"**blocked** by {', '.join(blocked)}." if blocked else "**promotable**: no gate blocks."
    return [
        f"# Migration report: {inputs.served.id} → {inputs.candidate.id}",
        "",
        f"Judged {at:%Y-%m-%d %H:%M:%S} UTC (run {inputs.run_id or '—'}) against {inputs.served.id} as "
        f"served (table v{inputs.served_table_version}). Verdict: {verdict}",
        "",
        "## Gates",
        "",
        markdown_table(
            ["check", "verdict", "blocks", "summary"],
            [[n, o.level, n in inputs.blocking, o.summary] for n, o in inputs.checks.items()],
        ),
    ]


def _golden_section(inputs: MigrationInputs) -> list[str]:
    golden = _metadata_with(inputs, "delta_ndcg@10")
    if not golden:
        return []
    interval = (
        f"Δ {golden['delta_ndcg@10']:+.4f} [{golden['delta_ndcg@10_low']:+.4f}, "
        f"{golden['delta_ndcg@10_high']:+.4f}]"
    )
    lines = [
        "",
        "## Golden quality",
        "",
        f"nDCG@10 {golden.get('served_ndcg@10')} → {golden.get('ndcg@10')}: {interval} (paired bootstrap, "
        f"{golden.get('confidence', 0.95):.0%}); {golden.get('queries_better')} queries better, "
        f"{golden.get('queries_worse')} worse, {golden.get('queries_tied')} tied.",
    ]
    return lines + [
        f"\n### {t.replace('_', ' ').capitalize()}\n\n{golden[t]}" for t in GOLDEN_TABLES if t in golden
    ]


def _neighbours_section(
    inputs: MigrationInputs, contained: dict[int, float], queries: int, folder: Path, figures: dict
) -> list[str]:
    overlaps = _metadata_with(inputs, CROSS_VERSION_OVERLAPS).get(CROSS_VERSION_OVERLAPS, [])
    lines = ["", "## Neighbours", ""]
    if overlaps:
        p10, p50, p90 = np.quantile(overlaps, [0.1, 0.5, 0.9])
        lines.append(
            f"Top-10 document overlap with {inputs.served.id} on {len(overlaps)} fixed queries: mean "
            f"{np.mean(overlaps):.3f}, p10 {p10:.2f}, median {p50:.2f}, p90 {p90:.2f}, "
            f"min {min(overlaps):.2f}."
        )
        ordered = sorted(overlaps)
        figures["overlap"] = plots.bars(
            folder / "overlap.png",
            [str(i) for i in range(len(ordered))],
            ordered,
            title=f"top-10 overlap, {inputs.candidate.id} vs {inputs.served.id}",
            ylabel="overlap",
        )
    return lines + [
        "",
        f"Containment: the share of the candidate's top {NEW_TOP} documents found in the served version's "
        f"top K, over {queries} judged queries.",
        "",
        markdown_table(
            ["K", "share of the new top 10 in the old top K"], [[k, v] for k, v in contained.items()]
        ),
    ]


def _thresholds_section(
    db: lancedb.DBConnection, inputs: MigrationInputs, folder: Path, figures: dict
) -> list[str]:
    calibration = _metadata_with(inputs, "thresholds_mapped")
    lines = ["", "## Thresholds and score distributions", ""]
    if calibration:
        lines += [f"{calibration[t]}\n" for t in CALIBRATION_TABLES if t in calibration]
    else:
        lines.append(f"{inputs.served.id} names no thresholds (registry `thresholds:`) to map.")
    profiles = {v.id: load_profile(db, v.id) for v in (inputs.served, inputs.candidate)}
    if all(profiles.values()):
        for kind in PAIR_KINDS:
            series = {v: [s for k, _, _, s in p.pairs if k == kind] for v, p in profiles.items()}
            figures[f"scores_{kind}"] = plots.histogram(
                folder / f"scores_{kind}.png",
                series,
                title=f"{kind.replace('_', ' ')} scores",
                xlabel="cosine",
            )
    distances = _metadata_with(inputs, DISTANCES).get(DISTANCES, [])
    if distances:
        figures["drift"] = plots.histogram(
            folder / "drift.png",
            {inputs.candidate.id: distances},
            title="sentinel drift: stored vs re-embedded now",
            xlabel="cosine distance",
        )
    return lines


def _cost_section(inputs: MigrationInputs, texts: int, tokens: int, cost: float) -> list[str]:
    encoded = inputs.embedded.get("chunks_embedded", "—")
    seconds = inputs.embedded.get("encode_seconds", "—")
    return [
        "",
        "## Cost",
        "",
        markdown_table(
            ["", inputs.candidate.id],
            [
                ["distinct chunk texts", texts],
                ["model tokens in them", tokens],
                ["texts embedded by this build", encoded],
                ["encode seconds", seconds],
                [f"cost of its tokens at {inputs.price_per_million_tokens:g} per million", cost],
            ],
        ),
    ]


def _tax_section(inputs: MigrationInputs) -> list[str]:
    header = [
        "version",
        "dimension",
        "float32 per million vectors",
        f"IVF_RQ {ann.RQ_BITS}-bit codes per million",
    ]
    rows = [
        [v.id, t["dimension"], _gib(t["float32_per_million"]), _gib(t["rq_codes_per_million"])]
        for v, t in ((v, dimension_tax(v)) for v in (inputs.served, inputs.candidate))
    ]
    return ["", "## Dimension tax", "", markdown_table(header, rows)]
