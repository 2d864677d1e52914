"""`embedding-assets`: what a data engineer does from a shell. `--json` where a script reads the output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedding_assets import settings, store

if TYPE_CHECKING:
    from embedding_assets.runner import GateRun

CHECK = "\u2713"
CROSS = "\u2717"


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def cmd_seed(args: argparse.Namespace) -> int:
    from embedding_assets.seed import seed_corpus

    report = seed_corpus(Path(args.path), overwrite=args.force)
    print(
        f"{report.documents} documents ({report.topics} topics, {report.api_pages} API pages, "
        f"{report.source_files} source files) in {report.root}"
    )
    return 0


def _print_gates(run: GateRun) -> None:
    """One line per check: verdict, severity and what it saw."""
    marks = {True: CHECK, False: CROSS}
    for c in run.checks:
        level = c["metadata"].get("level", "pass" if c["passed"] else "block")
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
    from embedding_assets.runner import build

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
    from embedding_assets.runner import migrate

    overrides = dict(_parse_override(o) for o in args.override)
    if overrides and not args.reason.strip():
        raise ValueError("threshold overrides need --reason; it is recorded in the serving history")
    run = migrate(args.to, overrides, args.reason)
    headline = (
        f"{CHECK} {args.to} promoted to serving"
        if run.promoted
        else f"{CROSS} {args.to} blocked; serving is untouched"
    )
    return _report_gate_run(run, args, ok=run.promoted, headline=headline)


def cmd_checks(args: argparse.Namespace) -> int:
    from embedding_assets.runner import run_gates

    run = run_gates(args.version)
    ok = run.gates_passed
    return _report_gate_run(
        run, args, ok=ok, headline=f"gates on {args.version} as it is now: {'pass' if ok else 'BLOCK'}"
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    from embedding_assets.runner import rollback

    moved = rollback()
    if args.json:
        _print_json(moved)
    else:
        print(
            f"{CHECK} serving {moved['served_version']} again (rolled back from {moved['previous_version']})"
        )
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from embedding_assets.runner import refresh

    report = refresh()
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
    return 0 if report.ok else 1


def _parse_override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--override takes THRESHOLD=VALUE, got {text!r}")
    return name.strip(), float(value)


def cmd_promote(args: argparse.Namespace) -> int:
    from embedding_assets.runner import promote_version

    promote_version(args.version)
    print(f"{CHECK} serving {args.version}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from embedding_assets.search import search

    result = search(args.query, args.k).to_json()
    if args.json:
        _print_json(result)
        return 0
    print(f"model {result['model_version']} ({result['model_fingerprint'][:19]}...)")
    for rank, hit in enumerate(result["hits"], 1):
        snippet = " ".join(hit["text"].split())[:110]
        print(f"{rank:2d}. {hit['score']:.3f}  {hit['chunk_id']}\n      {snippet}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from embedding_assets.status import collect_status

    status = collect_status()
    if args.json:
        _print_json(status)
        return 0
    print(f"served: {status['served_version'] or 'nothing'}  {status['served_fingerprint'] or ''}")
    print(f"documents: {status['documents']}  quarantined: {status['quarantined']}")
    for v in status["versions"]:
        print(f"  {v['id']:<28} {v['state']:<10} chunks={v['chunks']:<7} rows={v['rows']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from embedding_assets.evaluation import evaluate, evaluate_dataset, load_judged
    from embedding_assets.registry import load_registry
    from embedding_assets.search import Searcher, served_searcher

    if args.dataset:
        result = evaluate_dataset(
            Path(args.dataset), load_registry().get(args.version or settings.DEFAULT_VERSION)
        )
    else:
        served = served_searcher() if not args.version else None
        searcher = served or Searcher(store.connect(), load_registry().get(args.version))
        judged = load_judged(settings.GOLDEN_DIR)
        documents = len(
            set(searcher.table.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"].to_pylist())
        )
        result = {
            "version": searcher.version.id,
            "dataset": str(settings.GOLDEN_DIR),
            "documents": documents,
            **evaluate(searcher, judged),
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


def cmd_pin(args: argparse.Namespace) -> int:
    from embedding_assets.pinning import pin_version

    version = pin_version(
        args.id,
        args.loader,
        package=args.package,
        artifact=args.artifact,
        max_tokens=args.max_tokens,
        force=args.force,
    )
    print(f"{CHECK} pinned {version.id}: {version.fingerprint} ({version.dimension}-d)")
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    from embedding_assets.registry import load_registry
    from embedding_assets.static_model import build_static_model

    registry = load_registry()
    version = registry.get(args.version)
    built = build_static_model(version, registry, force=args.force)
    version.verified_weights_path()
    print(f"{CHECK} {version.id} built at {version.weights.path()} with the pinned fingerprint {built}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on the embedded defaults: seed, build, promote, summarize, answer a sample query."""
    from embedding_assets.runner import migrate
    from embedding_assets.seed import seed_corpus
    from embedding_assets.status import collect_status

    started = time.perf_counter()
    if not settings.CORPUS_DIR.exists() or not any(settings.CORPUS_DIR.iterdir()):
        seed_corpus(settings.CORPUS_DIR)
    run = migrate(args.version)
    print(f"\n== gates on {args.version} ==")
    _print_gates(run)
    if not run.promoted:
        print(f"{CROSS} {args.version} was not promoted; serving: {run.served_version or 'nothing'}")
        return 1
    status = collect_status()
    served = next(v for v in status["versions"] if v["id"] == status["served_version"])
    print("\n== embedding-assets health ==")
    print(f"documents       {status['documents']} (quarantined {status['quarantined']})")
    print(f"chunks          {served['chunks']}")
    print(f"index rows      {served['rows']}")
    print(f"model version   {status['served_version']}")
    print(f"fingerprint     {status['served_fingerprint']}")
    print(f"wall time       {time.perf_counter() - started:.1f}s\n")
    print(f'top results for "{settings.SAMPLE_QUERY}":')
    return cmd_search(argparse.Namespace(query=settings.SAMPLE_QUERY, k=5, json=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "seed", help="write the default corpus (the interpreter's Python docs) under data/corpus"
    )
    p.add_argument("--path", default=str(settings.CORPUS_DIR))
    p.add_argument("--force", action="store_true", help="replace an existing corpus")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("run", help="seed if needed, build and promote the default version, show health")
    p.add_argument("--version", default=settings.DEFAULT_VERSION)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("materialize", help="build one model version's index and gate it (and promote it)")
    p.add_argument("--version", default=settings.DEFAULT_VERSION)
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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("checks", help="re-run the gates on a version's index as it is now, no promotion")
    p.add_argument("--version", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_checks)

    p = sub.add_parser("refresh", help="one incremental pass: sync the corpus, update every live version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("rollback", help="serve again the state the current one replaced (instant)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("search", help="query the served index")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("status", help="what is served, and row counts per version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("eval", help="nDCG@10 / recall on judged queries (served index, or a BEIR dataset)")
    p.add_argument("--dataset", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    p.add_argument("--version", help="built version to score (default: served; with --dataset: the default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pin", help="fingerprint weights and write a registry entry")
    p.add_argument("--id", required=True)
    p.add_argument("--loader", required=True, choices=["sentence-transformers", "model2vec"])
    p.add_argument("--package", help="installed package shipping the weights (in its model/ folder)")
    p.add_argument("--artifact", help="weights folder relative to data/")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--force", action="store_true", help="re-pin an existing version to new weights")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser(
        "build-model", help="build a version's static model artifact and verify its fingerprint"
    )
    p.add_argument("--version", required=True)
    p.add_argument("--force", action="store_true", help="rebuild even if the artifact exists")
    p.set_defaults(func=cmd_build_model)
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
