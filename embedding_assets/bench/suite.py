"""`embedding-assets bench` (`make bench`): the performance suite. Every figure is a ratio of two things
measured side by side in one run, on this machine, with the numbers behind it; writes
`docs/performance.md` and `docs/performance.json`.

Sections: encoding (raw `SentenceTransformer.encode` vs the project's encoder vs the int8 ONNX version);
the shipped corpus with MiniLM (full build, a 1% edit, no change), the search service under 1, 10 and
50 concurrent clients, and the migration to the int8 ONNX version; scale points with the static version
(it fits 2 cores), on synthetic corpora of real text (`bench.corpus`: paragraphs of the shipped corpus,
and of ../shared/datasets/cranfield when present);
ANN against exact search on a million vectors.
`--quick` keeps one small scale point and a short encoding run. Benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from embedding_assets import locations
from embedding_assets.bench import ann, encoding, pipeline, service
from embedding_assets.bench.corpus import real_paragraphs, write_synthetic_corpus
from embedding_assets.bench.measure import machine
from embedding_assets.index import store
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import (
    DEFAULT_VERSION,
    ONNX_INT8_VERSION,
    STATIC_VERSION,
    load_registry,
    save_registry,
)
from embedding_assets.serving.pointer import ServingPointer

PERFORMANCE_DOC = locations.PROJECT_ROOT / "docs" / "performance.md"
BEIR_TEXT = locations.PROJECT_ROOT.parent / "shared" / "datasets" / "cranfield"  # used when present
FULL = {
    "encoding_chunks": 600,
    "encoding_rounds": 3,
    "shipped_corpus": True,
    # Documents in all (the shipped corpus included) and paragraphs per synthetic document: about 250,000
    # chunks, and just over a million (1,021,983 at seed 0; its own index is then searched).
    "scale": [
        {"documents": 90_000, "paragraphs": [2, 6]},
        {"documents": 60_000, "paragraphs": [16, 40], "ann": True},
    ],
    # The index candidates and the 100 refreshes on a table at the ANN threshold (an index build there
    # takes about a minute on 2 cores, at a million rows several); the largest scale point gives the
    # served figure at a million.
    "ann_rows": 100_000,
    "churn_rounds": ann.CHURN_ROUNDS,
    "ann_candidates": list(ann.CANDIDATES),
}
QUICK = {
    "encoding_chunks": 120,
    "encoding_rounds": 1,
    "shipped_corpus": False,
    "scale": [{"documents": 20_000, "paragraphs": [2, 6]}],
    "ann_rows": 100_000,
    "churn_rounds": 0,
    "ann_candidates": [next(iter(ann.CANDIDATES))],
}
# What issue 10 measured before this suite existed (a fresh clone, this kind of machine), for comparison.
BEFORE = {
    "raw_chunks_per_second": 31.3,
    "project_vs_raw": 0.95,
    "shipped_full_build_seconds": 126.0,
    "shipped_edit_refresh_seconds": 33.5,
    "scale": [  # by chunk count: a scale point within 15% of one is compared with it
        {"chunks": 41_029, "full": 43.0, "gates": 9.0, "edit": 21.7, "rss_build": 1.3},
        {"chunks": 253_173, "full": 239.0, "gates": 39.6, "edit": 58.5, "rss_build": 3.9, "rss_refresh": 2.7},
    ],
}
# The judged queries are about a handful of the shipped documents; a synthetic corpus recombines the same
# paragraphs into many near-copies of them, so a judged document need not rank first any more. The scale
# deployments serve the static version with the golden floors at 0 for that reason (every other gate as
# shipped), so a refresh is judged and re-served as in production.
SCALE_GATES = {"golden_ndcg_floor": 0.0, "golden_recall_floor": 0.0}


def shipped_corpus(out: Path) -> Path:
    """The shipped corpus: the default data folder's, else seeded (in a process of its own) under `out`."""
    default = locations.corpus_dir(locations.DEFAULT_DATA_DIR)
    if default.is_dir() and any(default.iterdir()):
        return default
    target = out / "shipped-corpus"
    if not target.is_dir():
        seed = [sys.executable, "-m", "embedding_assets.cli.main", "seed", "--path", str(target)]
        subprocess.run(seed, check=True, capture_output=True)
    return target


def scale_deployment(out: Path, shipped: Path, point: dict) -> dict:
    """A fresh deployment for a scale point: the shipped corpus plus synthetic documents up to
    `point["documents"]`, written straight into its corpus folder (copying a large folder of files costs
    more here than writing it)."""
    env = pipeline.deployment(out / f"scale-{point['documents']}", shipped)
    registry = load_registry()
    static = registry.get(STATIC_VERSION)
    registry.upsert(static.model_copy(update={"gates": static.gates.model_copy(update=SCALE_GATES)}))
    env["EMBEDDING_ASSETS_REGISTRY"] = str(out / f"scale-{point['documents']}" / "model_registry.yaml")
    save_registry(registry, Path(env["EMBEDDING_ASSETS_REGISTRY"]))
    corpus = locations.corpus_dir(Path(env["EMBEDDING_ASSETS_DATA"]))
    extra = point["documents"] - sum(1 for p in corpus.rglob("*") if p.is_file())
    paragraphs = real_paragraphs(shipped, BEIR_TEXT)
    write_synthetic_corpus(
        corpus / "synthetic", extra, paragraphs, per_document=tuple(point["paragraphs"]), progress=False
    )
    return env


def ensure_static_model() -> None:
    """Distill the static model once, into the default models folder every deployment copies from."""
    registry = load_registry()
    version = registry.get(STATIC_VERSION)
    if not version.weights_path().is_dir():
        from embedding_assets.models.builds import build_static_model

        build_static_model(version, registry, progress=False)


def run_suite(settings: dict, out: Path) -> dict:
    """Every section in turn; the report so far is saved after each, so a stopped run keeps its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    steps = ["encoding"] + (["shipped corpus"] if settings["shipped_corpus"] else [])
    steps += [f"scale {p['documents']:,}" for p in settings["scale"]] + ["ann"]
    report: dict = {"machine": machine(), "settings": {k: v for k, v in settings.items()}, "before": BEFORE}
    started = time.perf_counter()
    with tqdm(total=len(steps), desc="bench", unit="section") as bar:
        shipped = shipped_corpus(out)
        bar.set_postfix_str("encoding")
        report["encoding"] = encoding.measure(
            load_registry(), shipped, settings["encoding_chunks"], settings["encoding_rounds"]
        )
        _save(report, out)
        bar.update()
        if settings["shipped_corpus"]:
            bar.set_postfix_str("shipped corpus")
            env = pipeline.deployment(out / "shipped", shipped)
            built = pipeline.build_and_refresh(env, DEFAULT_VERSION, serve=True)
            bar.set_postfix_str("search service")
            report["service"] = service.measure(built["env"], real_paragraphs(shipped))
            bar.set_postfix_str("migration")
            built["migration"] = pipeline.migrate_to(built.pop("env"), ONNX_INT8_VERSION)
            report["shipped"] = built
            _save(report, out)
            bar.update()
        ensure_static_model()
        report["scale"] = []
        static = embedder_for(load_registry().get(STATIC_VERSION))
        for spec in settings["scale"]:
            bar.set_postfix_str(f"scale {spec['documents']:,}")
            env = scale_deployment(out, shipped, spec)
            point = {
                **pipeline.build_and_refresh(env, STATIC_VERSION, serve=True),
                "paragraphs": spec["paragraphs"],
            }
            if spec.get("ann"):  # search the version's own index as the pipeline built and refreshed it
                data = Path(env["EMBEDDING_ASSETS_DATA"])
                served = ServingPointer(locations.serving_dir(data)).require_current()
                table = store.connect(locations.lancedb_dir(data)).open_table(served.table)
                table.checkout(served.table_version)  # the table version serving reads
                report["ann_served"] = ann.measure_served(table, static, real_paragraphs(shipped))
            point.pop("env")
            report["scale"].append(point)
            _save(report, out)
            bar.update()
        bar.set_postfix_str(f"ann {settings['ann_rows']:,}")
        paragraphs = real_paragraphs(shipped, BEIR_TEXT)
        report["ann"] = ann.measure(
            out / "ann", settings["ann_rows"], paragraphs, static, settings["ann_candidates"]
        )
        _save(report, out)
        if settings["churn_rounds"]:
            bar.set_postfix_str(f"{settings['churn_rounds']} refreshes")
            report["churn"] = ann.measure_churn(
                out / "ann", settings["ann_rows"], paragraphs, static, settings["churn_rounds"]
            )
        bar.update()
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _save(report: dict, out: Path) -> None:
    (out / "performance-partial.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def _edit_seconds(edit: dict) -> str:
    """The median 1% edit refresh, with every round's time (reports before rounds have none)."""
    rounds = edit.get("rounds_run_seconds")
    return (
        f"{edit['run_seconds']} (rounds {', '.join(map(str, rounds))})"
        if rounds
        else str(edit["run_seconds"])
    )


def _ratio(part: float, whole: float) -> str:
    """`part` over `whole`, to three decimals under 0.1 (0.054x is not 0.05x)."""
    if not whole:
        return "-"
    ratio = part / whole
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def markdown(report: dict, command: str) -> str:
    m = report["machine"]
    lines = [
        "# Performance",
        "",
        f"Measured {m['measured_at']} on {m['cpus']} CPUs ({m['platform']}, AVX-512: "
        f"{'yes' if m['avx512'] else 'no'}), in {report['seconds']:.0f} s, with:",
        "",
        f"    {command}",
        "",
        "Each ratio compares two things measured in this one run. Wall time is a whole command in a "
        "process of its own (Python start, Dagster, model load included); run time is what the command "
        "reports for its runs; peak RSS is that process's own.",
        "",
        *encoding.markdown(report["encoding"]),
    ]
    if "shipped" in report:
        lines += _shipped_markdown(report["shipped"])
    if "service" in report:
        lines += service.markdown(report["service"])
    lines += _scale_markdown(report["scale"])
    lines += ann.markdown(report["ann"])
    if "ann_served" in report:
        lines += ann.served_markdown(report["ann_served"])
    if "churn" in report:
        lines += ann.churn_markdown(report["churn"])
    return "\n".join(lines)


def _shipped_markdown(s: dict) -> list[str]:
    full, edit, still, migration = s["full"], s["edit"], s["no_change"], s["migration"]
    gates = ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in migration["gates"].items())
    rate = migration["embeddings"].get("chunks_per_second", 0)
    base_rate = s["embeddings"].get("chunks_per_second", 0)
    return [
        "## The shipped corpus, MiniLM",
        "",
        f"{s['documents']:,} documents, {s['chunks']:,} chunks; a fresh data folder, `migrate` then "
        f"`refresh` after each of {len(edit.get('rounds_run_seconds') or [1])} 1% edits (the median shown), "
        "then once more with nothing changed.",
        "",
        "| step | run (s) | wall (s) | vs full build (run) | embedded | peak RSS (GiB) |",
        "|---|---|---|---|---|---|",
        f"| full build + gates + promotion | {full['run_seconds']} | {full['wall_seconds']} | 1.00x | "
        f"{s['embeddings'].get('chunks_embedded', '-')} | {full['peak_rss_gib']} |",
        f"| refresh after a 1% edit ({edit['documents_edited']} documents) | {_edit_seconds(edit)} | "
        f"{edit['wall_seconds']} | {_ratio(edit['run_seconds'], full['run_seconds'])} | "
        f"{edit['chunks_embedded']} | {edit['peak_rss_gib']} |",
        f"| refresh, nothing changed | {still['run_seconds']} | {still['wall_seconds']} | "
        f"{_ratio(still['run_seconds'], full['run_seconds'])} | {still['chunks_embedded']} | "
        f"{still['peak_rss_gib']} |",
        "",
        f"Gates of the full build: {full['gate_seconds']} s. Before this suite (issue 10, same corpus): "
        f"full build {BEFORE['shipped_full_build_seconds']} s, 1% edit "
        f"{BEFORE['shipped_edit_refresh_seconds']} s.",
        "",
        f"**Migration {DEFAULT_VERSION} -> {migration['version']}**: "
        f"{'promoted' if migration['promoted'] else 'NOT promoted'} in {migration['run_seconds']} s "
        f"(gates {migration['gate_seconds']} s): {gates}. It encoded "
        f"{migration['embeddings'].get('chunks_embedded', '-')} chunks at {rate} chunks/s, "
        f"{_ratio(rate, base_rate)} MiniLM's build ({base_rate} chunks/s) in the same pipeline.",
        "",
    ]


def _scale_markdown(points: list[dict]) -> list[str]:
    lines = [
        "## Scale, static version",
        "",
        f"{STATIC_VERSION} (the static model: a million chunks fit 2 cores). Synthetic corpora of real "
        "text: the shipped corpus plus documents of a few paragraphs each (the range per point) drawn "
        "(seed 0) from the shipped corpus"
        + (" and Cranfield" if BEIR_TEXT.exists() else "")
        + ". The version is migrated to and served (`migrate`), with the golden floors at 0: the judged "
        "documents have many synthetic near-copies there; every other gate as shipped. Peak RSS is the "
        "command's own process; the data-quality gate validates in a worker process of its own, whose peak "
        "is the next column (the two peaks need not coincide: their sum bounds the pair). The refresh "
        "command then runs optimize_index, off the refresh's clock: it folds the rows the refresh left "
        "outside the vector index into it and moves serving to that table version.",
        "",
        "| documents | paragraphs per document | chunks | full build + gates (s) | gates (s) "
        "| 1% edit refresh (s): median (rounds) | vs full | index maintenance after it (s) "
        "| no-change refresh (s) "
        "| peak RSS build / refresh (GiB) | validator peak RSS build / refresh (GiB) | before (issue 10) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        full, edit, still = p["full"], p["edit"], p["no_change"]
        before = next(
            (b for b in BEFORE["scale"] if abs(b["chunks"] - p["chunks"]) <= 0.15 * b["chunks"]), None
        )
        was = (
            f"{before['full']} s, gates {before['gates']} s, edit {before['edit']} s, "
            f"RSS {before['rss_build']} GB"
            if before
            else "-"
        )
        lines.append(
            f"| {p['documents']:,} | {p['paragraphs'][0]}-{p['paragraphs'][1]} | {p['chunks']:,} "
            f"| {full['run_seconds']} | {full['gate_seconds']} "
            f"| {_edit_seconds(edit)} | {_ratio(edit['run_seconds'], full['run_seconds'])} "
            f"| {edit.get('maintenance_seconds', '-')} | {still['run_seconds']} "
            f"| {full['peak_rss_gib']} / {edit['peak_rss_gib']} "
            f"| {full.get('validator_peak_rss_gib') or '-'} / {edit.get('validator_peak_rss_gib') or '-'} "
            f"| {was} |"
        )
    lines += [""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedding-assets bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (under 5 minutes)")
    parser.add_argument(
        "--out", type=Path, default=locations.scratch_dir(locations.DEFAULT_DATA_DIR) / "bench"
    )
    parser.add_argument("--doc", type=Path, help="default: docs/performance.md (--quick: under --out)")
    args = parser.parse_args(argv)
    args.doc = args.doc or (args.out / "performance-quick.md" if args.quick else PERFORMANCE_DOC)
    command = "embedding-assets bench" + (" --quick" if args.quick else "")
    report = run_suite(QUICK if args.quick else FULL, args.out)
    text = markdown(report, command)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    args.doc.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
