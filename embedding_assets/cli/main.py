"""`embedding-assets`: what a data engineer does from a shell. `--json` where a script reads the output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedding_assets import metadata as md
from embedding_assets.models.registry import DEFAULT_VERSION, LOADER_NAMES

if TYPE_CHECKING:
    from embedding_assets.cli.runner import GateRun

SAMPLE_QUERY = "how do I parse command line options"
CHECK = "\u2713"
CROSS = "\u2717"


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _wired():
    from embedding_assets.wiring import wiring

    return wiring()


def _corpus_folder(args: argparse.Namespace) -> Path:
    """--path, else the configured folder source (EMBEDDING_ASSETS_SOURCE_PATH or data/corpus)."""
    if getattr(args, "path", None):
        return Path(args.path)
    source = _wired().corpus_source
    if source.kind != "folder":
        raise ValueError(f"the corpus source is {source.kind!r}; give --path to seed a folder")
    return Path(source.path)


def cmd_seed(args: argparse.Namespace) -> int:
    from embedding_assets.corpus.seed import seed_corpus

    report = seed_corpus(_corpus_folder(args), overwrite=args.force)
    print(
        f"{report.documents} documents ({report.topics} topics, {report.api_pages} API pages, "
        f"{report.source_files} source files) in {report.root}"
    )
    return 0


def _print_gates(run: GateRun) -> None:
    """One line per check: verdict, severity and what it saw."""
    marks = {True: CHECK, False: CROSS}
    for c in run.checks:
        level = c["metadata"].get(md.GATE_LEVEL, "pass" if c["passed"] else "block")
        print(f"  {marks[c['passed']]} {c['name']:<22} {level:<6} {c['description']}")
    for error in run.errors:
        print(f"  {CROSS} {error}")


def _report_gate_run(run: GateRun, args: argparse.Namespace, *, ok: bool, headline: str) -> int:
    if getattr(args, "json", False):
        _print_json(run.to_json())
    else:
        print(headline)
        _print_gates(run)
        print(
            f"serving: {run.served_version or 'nothing'}  ({run.seconds:.1f}s, gates {run.gate_seconds:.1f}s)"
        )
    return 0 if ok else 1


def cmd_materialize(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import build

    if not args.no_promote:
        return cmd_migrate(argparse.Namespace(to=args.version, override=[], reason="", json=args.json))
    run = build(args.version)
    ok = run.gates_passed
    return _report_gate_run(
        run,
        args,
        ok=ok,
        headline=f"{args.version} built beside serving; gates {'passed' if ok else 'BLOCK'}:",
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import migrate

    overrides = dict(_parse_override(o) for o in args.override)
    if overrides and not args.reason.strip():
        raise ValueError("threshold overrides need --reason; it is recorded in the serving history")
    run = migrate(args.to, overrides, args.reason, launch=getattr(args, "launch", False))
    headline = (
        f"{CHECK} {args.to} promoted to serving"
        if run.promoted
        else f"{CROSS} {args.to} blocked; serving is untouched"
    )
    return _report_gate_run(run, args, ok=run.promoted, headline=headline)


def cmd_backfill(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import backfill

    report = backfill(args.version, launch=args.launch)
    if args.json:
        _print_json(report.to_json())
        return 0 if report.ok and report.build.gates_passed else 1
    for shard in report.shards:
        mark = CHECK if shard["success"] else CROSS
        print(
            f"  {mark} shard {shard['shard']:<8} {shard['shard_documents'] or 0:>7} documents, "
            f"{shard['chunks_staged'] or 0:>7} chunks staged, {shard['chunks_embedded'] or 0:>7} encoded "
            f"({shard['seconds'] or 0:.1f}s, run {shard['run_id'][:8]})"
        )
    if report.build is None:
        for error in report.errors:
            print(f"  {CROSS} {error}")
        print(f"{CROSS} {args.version}: the sharded backfill stopped before its build; serving is untouched")
        return 1
    ok = report.build.gates_passed
    return _report_gate_run(
        report.build,
        args,
        ok=ok,
        headline=f"{args.version} built from {len(report.shards)} shards in {report.seconds:.1f}s beside "
        f"serving; gates {'passed' if ok else 'BLOCK'}:",
    )


def cmd_checks(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import run_gates

    run = run_gates(args.version, launch=args.launch)
    ok = run.gates_passed
    return _report_gate_run(
        run, args, ok=ok, headline=f"gates on {args.version} as it is now: {'pass' if ok else 'BLOCK'}"
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import rollback

    moved = rollback(launch=args.launch)
    if args.json:
        _print_json(moved)
    else:
        print(
            f"{CHECK} serving {moved['served_version']} again (rolled back from {moved['previous_version']})"
        )
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import refresh

    report = refresh(launch=args.launch, force=args.force)
    if args.json:
        _print_json(report.to_json())
    else:
        print(
            f"corpus: +{report.docs_added} ~{report.docs_changed} -{report.docs_deleted} documents; "
            f"{report.chunks_embedded} chunks embedded, {report.chunks_reused} reused; "
            f"{report.rows_upserted} rows upserted, {report.rows_deleted} deleted ({report.seconds:.1f}s)"
        )
        for v in report.versions:
            mark = CHECK if v["indexed"] and v["gates_passed"] else CROSS
            rows = f"+{v['rows_upserted']} -{v['rows_deleted']} rows"
            print(f"  {mark} {v['id']:<26} {v['role']:<9} {rows}{', served' if v['served'] else ''}")
        for m in report.maintenance:
            print(f"  {CHECK if m['ok'] else CROSS} {m.get('summary') or m['id']}")
    return 0 if report.ok else 1


def cmd_optimize(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import optimize

    done = optimize(args.version, launch=args.launch)
    if args.json:
        _print_json({"versions": done})
    else:
        for entry in done:
            print(f"{CHECK} {entry.get('summary', entry['id'])}")
    return 0


def _parse_override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--override takes THRESHOLD=VALUE, got {text!r}")
    return name.strip(), float(value)


def cmd_promote(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import promote_version

    promote_version(args.version)
    print(f"{CHECK} serving {args.version}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from embedding_assets.serving.filters import SearchFilter
    from embedding_assets.serving.search import ServedSearch

    wired = _wired()
    db, pointer, registry = wired.lancedb.connect(), wired.serving.pointer(), wired.model_registry.load()
    where = SearchFilter(
        doc_id_prefix=args.doc_id_prefix,
        source_prefix=args.source_prefix,
        embedded_after=args.embedded_after,
        embedded_before=args.embedded_before,
    )
    if args.bridge_from:
        from embedding_assets.bridge.serving import served_bridged_searcher

        searcher = served_bridged_searcher(db, pointer, registry, wired.serving.bridges(), args.bridge_from)
        result = searcher.search(args.query, args.k, where).to_json()
    else:
        result = ServedSearch(db, pointer, registry).search(args.query, args.k, where).to_json()
    if args.json:
        _print_json(result)
        return 0
    print(f"model {result['model_version']} ({result['model_fingerprint'][:19]}...)")
    if bridged := result.get("bridged_from"):
        print(
            f"queries by {bridged['new']} through its {bridged['method']} bridge ({bridged['retention']:.3f})"
        )
    for rank, hit in enumerate(result["hits"], 1):
        snippet = " ".join(hit["text"].split())[:110]
        print(f"{rank:2d}. {hit['score']:.3f}  {hit['chunk_id']}\n      {snippet}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from embedding_assets.serving.search import ServedSearch
    from embedding_assets.serving.service import SearchService, serve

    wired = _wired()
    db, registry = wired.lancedb.connect(), wired.model_registry.load()
    served = ServedSearch(db, wired.serving.pointer(), registry)
    shadow = None
    if args.shadow:
        from embedding_assets.serving.shadow import Shadow, ShadowLog

        log = ShadowLog(Path(wired.serving.folder))
        shadow = Shadow(db, registry.get(args.shadow), args.shadow_share, log)
        print(f"mirroring {args.shadow_share:.0%} of queries to {args.shadow} (log: {log.path(args.shadow)})")
    print(f"serving search on http://{args.host}:{args.port}/search (Ctrl-C stops)", flush=True)
    serve(SearchService(served, shadow), args.host, args.port, args.log_level)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from embedding_assets.serving.health import verify

    wired = _wired()
    found = verify(wired.lancedb.connect(), wired.serving.pointer())
    if args.json:
        _print_json(found)
    else:
        for table in found["tables"]:
            mark = CHECK if table["whole"] else CROSS
            print(f"  {mark} {table['name']:<44} v{table['version']:<6} {table['rows']}")
        for problem in found["problems"]:
            print(f"{CROSS} {problem}")
        print(
            f"{CHECK} every table and the serving pointer are whole"
            if found["ok"]
            else "run: embedding-assets repair"
        )
    return 0 if found["ok"] else 1


def cmd_repair(args: argparse.Namespace) -> int:
    from embedding_assets.cli.runner import refresh
    from embedding_assets.serving.health import repair, verify

    wired = _wired()
    done = repair(wired.lancedb.connect(), wired.serving.pointer())
    # What changed since a restored version (and a served state moved back) is re-applied and gated.
    report = refresh(launch=args.launch) if done and not args.no_refresh else None
    after = verify(wired.lancedb.connect(), wired.serving.pointer())
    if args.json:
        _print_json({"repaired": done, "refresh": report.to_json() if report else None, **after})
    else:
        for line in done or ["nothing needed repair"]:
            print(f"- {line}")
        if report is not None:
            print(
                f"refresh: +{report.docs_added} ~{report.docs_changed} -{report.docs_deleted} documents, "
                f"{report.chunks_embedded} chunks embedded, {report.rows_upserted} rows upserted"
            )
        for problem in after["problems"]:
            print(f"{CROSS} still: {problem}")
    return 0 if after["ok"] and (report is None or report.ok) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from embedding_assets.serving.status import collect_status

    wired = _wired()
    status = collect_status(wired.lancedb.connect(), wired.serving.pointer(), wired.model_registry.load())
    if args.json:
        _print_json(status)
        return 0
    print(f"served: {status['served_version'] or 'nothing'}  {status['served_fingerprint'] or ''}")
    print(f"documents: {status['documents']}  quarantined: {status['quarantined']}")
    for v in status["versions"]:
        print(f"  {v['id']:<28} {v['state']:<10} chunks={v['chunks']:<7} rows={v['rows']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from embedding_assets.quality.evaluation import evaluate, evaluate_dataset
    from embedding_assets.serving.search import Searcher, served_searcher

    wired = _wired()
    registry = wired.model_registry.load()
    if args.compare_retrieval:
        return _compare_retrieval(args, wired, registry)
    if args.dataset:
        result = evaluate_dataset(
            Path(args.dataset),
            registry.get(args.version or DEFAULT_VERSION),
            Path(wired.golden_set.scratch_dir),
        )
    else:
        db = wired.lancedb.connect()
        searcher = (
            Searcher(db, registry.get(args.version))
            if args.version
            else served_searcher(db, wired.serving.pointer(), registry)
        )
        documents = len(
            set(searcher.table.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"].to_pylist())
        )
        result = {
            "version": searcher.version.id,
            "dataset": wired.golden_set.path,
            "documents": documents,
            **evaluate(searcher, wired.golden_set.judged(), progress=True),
        }
    if args.json:
        _print_json(result)
    else:
        print(
            f"{result['version']} on {result['dataset']}: nDCG@10={result['ndcg@10']:.4f} "
            f"recall@10={result['recall@10']:.4f} recall@100={result['recall@100']:.4f} "
            f"({result['queries']} queries, {result['documents']} documents)"
        )
    return 0


def _compare_retrieval(args: argparse.Namespace, wired, registry) -> int:
    from embedding_assets.quality.evaluation import compare_retrieval

    if not args.dataset:
        raise SystemExit("--compare-retrieval needs --dataset (a BEIR folder)")
    result = compare_retrieval(
        Path(args.dataset), registry.get(args.version or DEFAULT_VERSION), Path(wired.golden_set.scratch_dir)
    )
    if args.json:
        _print_json(result)
        return 0
    print(f"{result['version']} on {result['dataset']} ({result['documents']} documents):")
    print("| retrieval | nDCG@10 | recall@10 | recall@100 | Δ nDCG@10 vs better single [95%] |")
    print("|---|---|---|---|---|")
    for row in result["retrievals"]:
        delta = (
            f"{row['delta']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] vs {row['against']}"
            if "delta" in row
            else ""
        )
        print(
            f"| {row['retrieval']} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} | "
            f"{row['recall@100']:.4f} | {delta} |"
        )
    return 0


def cmd_threshold(args: argparse.Namespace) -> int:
    from embedding_assets.quality.calibration import current_profile, map_threshold
    from embedding_assets.quality.gates.golden import judged_digest
    from embedding_assets.serving.search import Searcher

    wired = _wired()
    registry = wired.model_registry.load()
    db = wired.lancedb.connect()
    judged = wired.golden_set.judged()
    digest = judged_digest(judged)
    source, target = (
        current_profile(db, Searcher(db, registry.get(v)), judged, digest)[0]
        for v in (args.source, args.target)
    )
    mapped = map_threshold("threshold", args.value, source, target, db)
    if args.json:
        _print_json(mapped.to_json())
        return 0
    print(mapped.describe())
    for flip in mapped.flips[: args.show]:
        scores = " -> ".join(f"{v:.4f}" for v in list(flip.values())[3:])
        print(f"  {flip['kind']:<13} {scores}  {flip['left'][:50]!r} ~ {flip['right'][:50]!r}")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from embedding_assets.bridge.command import judge_pair, judge_pair_on_dataset

    wired = _wired()
    registry = wired.model_registry.load()
    old, new = registry.get(args.old), registry.get(args.new)
    scratch = Path(wired.golden_set.scratch_dir)
    options = {"samples": tuple(args.samples)} if args.samples else {}
    if args.dataset:
        verdict = judge_pair_on_dataset(Path(args.dataset), scratch, old, new, **options)
    else:
        db, judged = wired.lancedb.connect(), wired.golden_set.judged()
        verdict = judge_pair(db, scratch, old, new, judged, wired.serving.bridges(), **options)
    if args.json:
        _print_json(verdict.to_json())
    else:
        m = verdict.measurement
        print(f"{new.id} queries -> {old.id}'s index, {m.queries} judged queries:")
        print(verdict.table())
        if verdict.stored is not None:
            print(f"{CHECK} stored {verdict.stored}")
    if verdict.refused is not None:
        print(f"error: {verdict.refused}", file=sys.stderr)
        return 1
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from embedding_assets.models.pinning import pin_distilled, pin_version

    registry = _wired().model_registry
    if args.distill_from:
        version = pin_distilled(
            Path(registry.path), args.id, args.distill_from, pca_dims=args.pca_dims, force=args.force
        )
    else:
        version = pin_version(
            Path(registry.path),
            Path(registry.models_dir),
            args.id,
            args.loader,
            package=args.package,
            subdir=args.subdir,
            artifact=args.artifact,
            tokenizer_package=args.tokenizer_package,
            tokenizer_subdir=args.tokenizer_subdir,
            max_tokens=args.max_tokens,
            force=args.force,
        )
    print(f"{CHECK} pinned {version.id}: {version.fingerprint} ({version.dimension}-d)")
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    from embedding_assets.models.builds import build_static_model

    registry = _wired().model_registry.load()
    version = registry.get(args.version)
    record = build_static_model(version, registry, force=args.force)
    version.verified_weights_path()
    print(
        f"{CHECK} {version.id} built at {version.weights_path()}: recipe {version.fingerprint}, "
        f"artifact bytes {record['artifact_fingerprint']} (built {record['built_at']})"
    )
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from embedding_assets.models.downloads import fetch_split_archive

    registry = _wired().model_registry.load()
    versions = [registry.get(v) for v in args.version] or [v for v in registry.versions if v.weights.download]
    for version in versions:
        path = fetch_split_archive(version, uv=args.uv)
        print(f"{CHECK} {version.id} at {path}: {version.fingerprint}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from embedding_assets.bench import suite

    argv = ["--quick"] if args.quick else []
    for option in ("out", "doc"):
        if getattr(args, option):
            argv += [f"--{option}", str(getattr(args, option))]
    return suite.main(argv)


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on the embedded defaults: seed, build, promote, summarize, answer a sample query."""
    from embedding_assets.cli.runner import migrate
    from embedding_assets.corpus.seed import seed_corpus
    from embedding_assets.serving.status import collect_status

    started = time.perf_counter()
    wired = _wired()
    corpus_dir = Path(wired.corpus_source.path)
    if wired.corpus_source.kind == "folder" and (not corpus_dir.exists() or not any(corpus_dir.iterdir())):
        seed_corpus(corpus_dir)
    run = migrate(args.version)
    print(f"\n== gates on {args.version} ==")
    _print_gates(run)
    if not run.promoted:
        print(f"{CROSS} {args.version} was not promoted; serving: {run.served_version or 'nothing'}")
        return 1
    status = collect_status(wired.lancedb.connect(), wired.serving.pointer(), wired.model_registry.load())
    served = next(v for v in status["versions"] if v["id"] == status["served_version"])
    print("\n== embedding-assets health ==")
    print(f"documents       {status['documents']} (quarantined {status['quarantined']})")
    print(f"chunks          {served['chunks']}")
    print(f"index rows      {served['rows']}")
    print(f"model version   {status['served_version']}")
    print(f"fingerprint     {status['served_fingerprint']}")
    print(f"wall time       {time.perf_counter() - started:.1f}s\n")
    print(f'top results for "{SAMPLE_QUERY}":')
    from embedding_assets.serving.filters import SearchFilter

    unfiltered = dict.fromkeys(SearchFilter.model_fields)
    return cmd_search(argparse.Namespace(query=SAMPLE_QUERY, k=5, json=False, **unfiltered))


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--launch",
        action="store_true",
        help="submit the run to the instance's queue (DAGSTER_HOME's dagster.yaml: its coordinator, limits, "
        "launcher and retries) and follow it to the end, instead of running it in this process",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "seed", help="write the default corpus (the interpreter's Python docs) under data/corpus"
    )
    p.add_argument("--path", help="folder to write (default: the configured corpus folder)")
    p.add_argument("--force", action="store_true", help="replace an existing corpus")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("run", help="seed if needed, build and promote the default version, show health")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("materialize", help="build one model version's index and gate it (and promote it)")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--no-promote", action="store_true", help="build and gate beside the served version only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("promote", help="serve a built version whose gates passed on its latest build")
    p.add_argument("--version", required=True)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("migrate", help="build a version, run the gates, promote only if they pass")
    p.add_argument("--to", required=True, help="registered model version to serve")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="THRESHOLD=VALUE",
        help="override one gate threshold for this migration (e.g. golden_ndcg_margin=0.2); repeatable",
    )
    p.add_argument("--reason", default="", help="why the thresholds are overridden (kept in the history)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "backfill",
        help="build a version by corpus shards (EMBEDDING_ASSETS_CORPUS_SHARDS) side by side, then fold "
        "them in and gate the whole version; serving untouched",
    )
    p.add_argument("--version", required=True)
    _add_run_flags(p)
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("checks", help="re-run the gates on a version's index as it is now, no promotion")
    p.add_argument("--version", required=True)
    _add_run_flags(p)
    p.set_defaults(func=cmd_checks)

    p = sub.add_parser("refresh", help="one incremental pass: sync the corpus, update every live version")
    p.add_argument(
        "--force", action="store_true", help="run every live version, even one up to date (re-runs its gates)"
    )
    _add_run_flags(p)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser(
        "optimize",
        help="fold rows a refresh left outside the vector index into it (every live version, or one); "
        "serving follows to the maintained table version",
    )
    p.add_argument("--version", help="one model version (default: every live version)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("rollback", help="serve again the state the current one replaced (instant)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("search", help="query the served index")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--doc-id-prefix", help="only documents whose id starts with this")
    p.add_argument("--source-prefix", help="only documents whose source URI starts with this")
    p.add_argument("--embedded-after", help="only vectors made at or after (ISO 8601, with a zone)")
    p.add_argument("--embedded-before", help="only vectors made before (ISO 8601, with a zone)")
    p.add_argument(
        "--bridge-from",
        metavar="NEW",
        help="encode the query with version NEW and search the served index through the stored bridge",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    from embedding_assets.serving.service import DEFAULT_PORT, LOOPBACK

    p = sub.add_parser("serve", help="a long-lived HTTP search service over the served index")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--shadow", metavar="VERSION", help="mirror a share of queries to this built candidate")
    p.add_argument(
        "--shadow-share", type=float, default=0.1, help="with --shadow: the share of queries mirrored (0-1]"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="what is served, and row counts per version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "verify", help="check every table and the serving pointer read back whole (exit 1 if not)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "repair", help="restore damaged tables and the pointer from their last whole versions, then refresh"
    )
    p.add_argument("--no-refresh", action="store_true", help="restore only; do not re-apply the delta")
    _add_run_flags(p)
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("eval", help="nDCG@10 / recall on judged queries (served index, or a BEIR dataset)")
    p.add_argument("--dataset", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    p.add_argument("--version", help="built version to score (default: served; with --dataset: the default)")
    p.add_argument(
        "--compare-retrieval",
        action="store_true",
        help="with --dataset: BM25, dense and hybrid (RRF, linear) side by side, one index",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "threshold", help="map a similarity threshold from one built version's space into another's"
    )
    p.add_argument("--from", dest="source", required=True, help="the version the threshold was tuned in")
    p.add_argument("--to", dest="target", required=True, help="the version to map it into")
    p.add_argument("value", type=float, help="the threshold (a cosine similarity)")
    p.add_argument("--show", type=int, default=10, help="flipped pairs to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_threshold)

    p = sub.add_parser(
        "bridge",
        help="fit maps from NEW's query space into OLD's index, measure retention, store the best passing",
    )
    p.add_argument("--old", default=DEFAULT_VERSION, help="the version whose index is searched")
    p.add_argument("--new", required=True, help="the version that encodes the queries")
    p.add_argument("--dataset", help="BEIR folder: OLD's scratch index of it and its judged queries")
    p.add_argument("--samples", type=int, nargs="+", help="fit sample sizes (default: 128 1024 4096)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("pin", help="fingerprint weights and write a registry entry")
    p.add_argument("--id", required=True)
    p.add_argument("--loader", default="sentence-transformers", choices=LOADER_NAMES)
    p.add_argument("--package", help="installed package shipping the weights")
    p.add_argument("--subdir", default="model", help="with --package: the weights folder inside it")
    p.add_argument(
        "--tokenizer-package", help="a package shipping tokenizer.json, for weights without one (ONNX)"
    )
    p.add_argument("--tokenizer-subdir", default="model", help="with --tokenizer-package: its folder")
    p.add_argument("--artifact", help="weights folder relative to the models folder (data/models)")
    p.add_argument("--distill-from", help="pin a static model distilled from this version, by its recipe")
    p.add_argument("--pca-dims", type=int, default=256, help="with --distill-from: the PCA dimension")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--force", action="store_true", help="re-pin an existing version to new weights")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser(
        "fetch-weights",
        help="fetch versions whose weights ship split across packages (default: all of them), verify the pin",
    )
    p.add_argument("--version", action="append", default=[], help="a version id (repeatable)")
    p.add_argument("--uv", help="the uv binary to install the parts with (default: $UV, else uv on PATH)")
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser(
        "build-model", help="build a version's static model artifact and verify its fingerprint"
    )
    p.add_argument("--version", required=True)
    p.add_argument("--force", action="store_true", help="rebuild even if the artifact exists")
    p.set_defaults(func=cmd_build_model)

    p = sub.add_parser(
        "bench", help="the performance suite: ratios measured side by side; writes docs/performance.md"
    )
    p.add_argument("--quick", action="store_true", help="a short run (under 5 minutes), kept in data/scratch")
    p.add_argument("--out", type=Path, help="working folder (default: data/scratch/bench)")
    p.add_argument("--doc", type=Path, help="report path (default: docs/performance.md; --quick: in --out)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dagster import DagsterError, Failure

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Failure as exc:  # raised by an asset on purpose, e.g. serving_index refusing a blocked version
        print(f"error: {exc.description}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, DagsterError) as exc:
        cause = getattr(exc, "user_exception", None) or exc
        print(f"error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
