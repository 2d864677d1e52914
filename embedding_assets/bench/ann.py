"""ANN against exact search on one table of `rows` vectors of the static version (synthetic chunks of real
text), with the project's own index parameters and the alternatives they were chosen over: build time,
latency p50/p95 including the query encode, recall@10 against exact, unfiltered and with a selective
prefilter (about 1% of the rows)."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from pathlib import Path

import lancedb
import pyarrow as pa
from lancedb.index import BTree, HnswSq, IvfPq, IvfRq

from embedding_assets import locations
from embedding_assets.index import ann, store
from embedding_assets.models.embedders import Embedder

QUERIES = 100
WRITE_ROWS = 100_000
CHUNKS_PER_DOCUMENT = 3
DOCS_PER_PART = 1000
FILTER = "doc_id LIKE 'part-000/%'"  # the first part: DOCS_PER_PART * CHUNKS_PER_DOCUMENT rows
K = 10


def vector_table(db: lancedb.DBConnection, rows: int, paragraphs: list[str], embedder: Embedder):
    """A table of `rows` chunks (one or two real paragraphs each, seed 0) encoded by `embedder`; kept
    between runs of the bench."""
    name = f"ann_{embedder.version.id}_{rows}"
    if name in store.table_names(db) and db.open_table(name).count_rows() == rows:
        return db.open_table(name)
    rng = random.Random(0)
    table = None
    for start in range(0, rows, WRITE_ROWS):
        count = min(WRITE_ROWS, rows - start)
        texts = [" ".join(rng.sample(paragraphs, rng.randint(1, 2)))[:1500] for _ in range(count)]
        vectors = embedder.encode(texts)
        ids = range(start, start + count)
        batch = pa.table(
            {
                "chunk_id": [f"c{i}" for i in ids],
                "doc_id": [
                    f"part-{i // CHUNKS_PER_DOCUMENT // DOCS_PER_PART:03d}/doc-{i // CHUNKS_PER_DOCUMENT}.md"
                    for i in ids
                ],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel()), embedder.version.dimension
                ),
            }
        )
        if table is None:
            table = db.create_table(name, batch, mode="overwrite")
        else:
            table.add(batch)
    return table


def query_texts(paragraphs: list[str]) -> list[str]:
    """The judged queries, then first sentences of paragraphs (seed 1) up to QUERIES."""
    with open(locations.SHIPPED_GOLDEN_DIR / "queries.jsonl", encoding="utf-8") as lines:
        judged = [json.loads(line)["text"] for line in lines]
    return (judged + first_sentences(paragraphs, max(0, QUERIES - len(judged)), seed=1))[:QUERIES]


def first_sentences(paragraphs: list[str], count: int, seed: int) -> list[str]:
    """The first sentence (at most 200 characters) of `count` paragraphs drawn with `seed`."""
    return [p.split(". ")[0][:200] for p in random.Random(seed).sample(paragraphs, count)]


def _search(table, embedder: Embedder, texts: list[str], tune, where: str | None):
    """Top-K ids per query, and the milliseconds of each, query encode included."""
    results, latencies = [], []
    for text in texts:
        started = time.perf_counter()
        vector = embedder.encode([text])[0]
        query = tune(table.search(vector).distance_type("cosine"))
        if where:
            query = query.where(where, prefilter=True)
        results.append(query.select(["chunk_id"]).limit(K).to_arrow()["chunk_id"].to_pylist())
        latencies.append((time.perf_counter() - started) * 1000)
    return results, latencies


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    overlaps = [len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]
    return round(statistics.mean(overlaps), 4)


def _percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(0.95 * len(ordered))], 2),
    }


PQ_NPROBES = 40  # of about sqrt(rows) partitions, for the IVF candidates the project's index replaced


PROJECT = f"{ann.INDEX_TYPE} (project)"
CANDIDATES = {
    # name: (index config for `rows` vectors of `dimension`; search tuning)
    PROJECT: (
        lambda rows, dim: ann.index_config(rows),
        lambda q, filtered=None: ann.tuned(q, True, filtered),
    ),
    # The project's choice until session 9: one HNSW graph per million rows, 16 links, 120 candidates
    # while linking, 768 while walking, refine 5.
    "IVF_HNSW_SQ, ef 768": (
        lambda rows, dim: HnswSq(distance_type="cosine", num_partitions=1, m=16, ef_construction=120),
        lambda q, filtered=None: q.nprobes(1).ef(768).refine_factor(5),
    ),
    # Trained on 64 vectors per partition and 10 k-means iterations, not 256 and 50: 21.6 s to build
    # 100,000 vectors instead of 82 s (of the bench's 32 minutes); refine 10 re-ranks what PQ blurs.
    "IVF_PQ, refine 10": (
        lambda rows, dim: IvfPq(
            distance_type="cosine",
            num_partitions=ann.partitions_for(rows),
            num_sub_vectors=dim // 4,
            sample_rate=64,
            max_iterations=10,
        ),
        lambda q, filtered=None: q.nprobes(PQ_NPROBES).refine_factor(10),
    ),
    "IVF_RQ, 1 bit, refine 10": (
        lambda rows, dim: IvfRq(distance_type="cosine", num_partitions=ann.partitions_for(rows)),
        lambda q, filtered=None: q.nprobes(PQ_NPROBES).refine_factor(10),
    ),
}


def measure(db_folder: Path, rows: int, paragraphs: list[str], embedder: Embedder, candidates: list[str]):
    db = store.connect(db_folder)
    table = vector_table(db, rows, paragraphs, embedder)
    table.create_index("doc_id", config=BTree(), replace=True)  # as the project's tables have
    filtered_rows = table.count_rows(FILTER)
    texts = query_texts(paragraphs)
    exact, exact_ms = _search(table, embedder, texts, lambda q: q.bypass_vector_index(), None)
    exact_filtered, exact_filtered_ms = _search(
        table, embedder, texts, lambda q: q.bypass_vector_index(), FILTER
    )
    encode_ms = []
    for text in texts:
        started = time.perf_counter()
        embedder.encode([text])
        encode_ms.append((time.perf_counter() - started) * 1000)
    result = {
        "rows": rows,
        "queries": len(texts),
        "filter": FILTER,
        "filtered_rows": filtered_rows,
        "query_encode_ms_p50": round(statistics.median(encode_ms), 3),
        "exact": _percentiles(exact_ms),
        "exact_filtered": _percentiles(exact_filtered_ms),
        "candidates": {},
    }
    project = next(iter(CANDIDATES))  # measured last, so the table keeps the project's own index
    for name in sorted(candidates, key=lambda n: n == project):
        parameters, tune = CANDIDATES[name]
        started = time.perf_counter()
        table.create_index(
            ann.VECTOR_COLUMN, replace=True, config=parameters(rows, embedder.version.dimension)
        )
        table.checkout_latest()
        build = time.perf_counter() - started
        found, latencies = _search(table, embedder, texts, tune, None)
        found_filtered, filtered_ms = _search(
            table, embedder, texts, lambda q, tune=tune: tune(q, filtered_rows), FILTER
        )
        result["candidates"][name] = {
            "build_seconds": round(build, 1),
            **_percentiles(latencies),
            "recall@10": _recall(found, exact),
            "filtered": {**_percentiles(filtered_ms), "recall@10": _recall(found_filtered, exact_filtered)},
        }
    return result


def markdown(result: dict) -> list[str]:
    exact, filtered = result["exact"], result["exact_filtered"]
    lines = [
        "## ANN serving",
        "",
        f"{result['rows']:,} vectors of the static version (synthetic chunks of one or two real paragraphs); "
        f"{result['queries']} queries (the judged ones, then first sentences of other paragraphs). Latency "
        f"includes the query encode (p50 {result['query_encode_ms_p50']} ms with the static model; MiniLM "
        "encodes a query in about 9 ms). Recall@10 is against exact search on the same table; the "
        f"filtered rows prefilter on `{result['filter']}` ({result['filtered_rows']:,} rows); the project "
        f"searches a filter of at most {ann.EXACT_FILTER_ROWS:,} rows exactly over them (BTREE on doc_id).",
        "",
        "| search | build (s) | p50 (ms) | p95 (ms) | vs exact p50 | recall@10 | filtered p50 (ms) "
        "| filtered recall@10 |",
        "|---|---|---|---|---|---|---|---|",
        f"| exact | - | {exact['p50_ms']} | {exact['p95_ms']} | 1.00x | 1.0 | {filtered['p50_ms']} | 1.0 |",
    ]
    for name, c in result["candidates"].items():
        speedup = exact["p50_ms"] / c["p50_ms"] if c["p50_ms"] else 0
        lines.append(
            f"| {name} | {c['build_seconds']} | {c['p50_ms']} | {c['p95_ms']} | {speedup:.1f}x faster "
            f"| {c['recall@10']} | {c['filtered']['p50_ms']} | {c['filtered']['recall@10']} |"
        )
    lines += [
        "",
        f"The project builds {ann.INDEX_TYPE} once a version's table holds {ann.ANN_MIN_ROWS:,} rows "
        f"(about sqrt(rows) partitions of {ann.RQ_BITS}-bit RaBitQ codes) and searches it probing "
        f"{ann.NPROBES} partitions with refine factor {ann.REFINE_FACTOR}; folding rows in assigns them to "
        f"the trained partitions (at most {ann.MAX_INDEX_SEGMENTS} index segment(s) kept), compaction "
        f"rewrites the most deleted fragments once the table holds {ann.MAX_DELETED_ROWS:,} deleted rows, "
        f"and the index is trained again once its partitions are {ann.RETRAIN_PARTITIONS_RATIO:g}x off "
        f"sqrt(rows). The other IVF candidates have about sqrt(rows) partitions, probe {PQ_NPROBES} and "
        "refine 10x.",
        "",
    ]
    return lines


EXACT_TIMED = 20  # queries whose exact search at the largest scale point is timed (about 0.4 s each)
# Served queries run untimed first (other texts than the timed ones), as a long-lived service has read
# its index files before: timed cold, the first queries after a build read them from disk (p50 18 ms
# against 10-13 ms warm at 882,205 rows).
WARM_QUERIES = 20
SERVED_FILTER = "doc_id LIKE 'synthetic/part-000/%'"  # a thousand synthetic documents of the scale point


def measure_served(table, embedder: Embedder, paragraphs: list[str]) -> dict:
    """A version's own index table as the pipeline built, refreshed and maintained it, at the table
    version checked out (the served one), searched as the project serves it (its ANN index and tuning)
    against exact search: unfiltered, and with a prefilter."""
    index = ann.vector_index_name(table)
    rows = table.count_rows()
    filtered_rows = table.count_rows(SERVED_FILTER)
    texts = query_texts(paragraphs)
    result: dict = {"rows": rows, "index": index, "queries": len(texts), "filter": SERVED_FILTER}
    result["table_version"] = table.version
    result["filtered_rows"] = filtered_rows
    # The exact top-10 of every query from one pass over the vectors; exact latency from the first few.
    exact, _ = ann.exact_top_k(table, [embedder.encode([t])[0] for t in texts], K)
    _, exact_ms = _search(table, embedder, texts[:EXACT_TIMED], lambda q: q.bypass_vector_index(), None)
    served = lambda q: ann.tuned(q, index is not None)  # noqa: E731
    served_filtered = lambda q: ann.tuned(q, index is not None, filtered_rows)  # noqa: E731
    warm = first_sentences(paragraphs, WARM_QUERIES, seed=2)  # other texts than the timed ones
    _search(table, embedder, warm, served, None)
    found, served_ms = _search(table, embedder, texts, served, None)
    exact_f, exact_f_ms = _search(table, embedder, texts, lambda q: q.bypass_vector_index(), SERVED_FILTER)
    _search(table, embedder, warm, served_filtered, SERVED_FILTER)
    found_f, served_f_ms = _search(table, embedder, texts, served_filtered, SERVED_FILTER)
    result["exact"] = _percentiles(exact_ms)
    result["served"] = {**_percentiles(served_ms), "recall@10": _recall(found, exact)}
    result["exact_filtered"] = _percentiles(exact_f_ms)
    result["served_filtered"] = {**_percentiles(served_f_ms), "recall@10": _recall(found_f, exact_f)}
    return result


def served_markdown(result: dict) -> list[str]:
    served, filtered = result["served"], result["served_filtered"]
    exact, exact_f = result["exact"], result["exact_filtered"]
    return [
        f"### The largest scale point's own index ({result['rows']:,} rows)",
        "",
        f"The static version's index table as the pipeline built, gated, refreshed and maintained it, at "
        f"the table version served (v{result.get('table_version', '?')}; vector index: "
        f"{result['index'] or 'none'}), searched as the project serves it; {result['queries']} queries, "
        f"latency with the query encode, after {WARM_QUERIES} other queries as a running service has "
        f"served; filtered on `{result['filter']}` ({result['filtered_rows']:,} rows).",
        "",
        "| search | p50 (ms) | p95 (ms) | recall@10 vs exact |",
        "|---|---|---|---|",
        f"| exact | {exact['p50_ms']} | {exact['p95_ms']} | 1.0 |",
        f"| served (ANN) | {served['p50_ms']} | {served['p95_ms']} | {served['recall@10']} |",
        f"| exact, filtered | {exact_f['p50_ms']} | {exact_f['p95_ms']} | 1.0 |",
        f"| served, filtered | {filtered['p50_ms']} | {filtered['p95_ms']} | {filtered['recall@10']} |",
        "",
    ]


CHURN_ROUNDS = 100
CHURN_EDIT = 0.01  # of the rows re-encoded from new text per round (a 1% edit refresh)
CHURN_TURNOVER = 0.001  # of the rows deleted, and as many added, per round
CHURN_TIMED_ROUNDS = 20  # the last rounds after each of which ROUND_QUERIES are timed: the whole cadence
ROUND_QUERIES = 20


def _round_p50(table, embedder: Embedder, texts: list[str], served) -> float:
    """p50 of the first ROUND_QUERIES queries on the table as it is now (its files read once first)."""
    _search(table, embedder, texts[:ROUND_QUERIES], served, None)
    return statistics.median(_search(table, embedder, texts[:ROUND_QUERIES], served, None)[1])


def measure_churn(
    db_folder: Path, rows: int, paragraphs: list[str], embedder: Embedder, rounds: int = CHURN_ROUNDS
) -> dict:
    """Latency and recall after `rounds` refreshes of a `rows`-row table kept by the project's cadence
    (`ann.ensure_vector_index` after each: optimize once unindexed rows pass OPTIMIZE_UNINDEXED),
    against a table freshly built from the same final rows."""
    db = store.connect(db_folder)
    source = vector_table(db, rows, paragraphs, embedder)
    dimension = embedder.version.dimension
    name = f"churn_{rows}"
    if name in store.table_names(db):
        db.drop_table(name)
    if ann.vector_index_name(source) is None:
        ann.ensure_vector_index(source)
    # A copy of the table's folder keeps its index, so the churn starts from the project's own index
    # without training another.
    shutil.copytree(Path(db_folder) / f"{source.name}.lance", Path(db_folder) / f"{name}.lance")
    table = db.open_table(name)
    rng = random.Random(2)
    texts = query_texts(paragraphs)
    actions: dict[str, int] = {}
    next_id = rows
    served = lambda q: ann.tuned(q, True)  # noqa: E731
    round_p50: list[float] = []  # after each of the last CHURN_TIMED_ROUNDS refreshes
    maintained_p50: list[float] = []  # after the index maintenance that follows each of them
    maintenance: dict[str, int] = {}
    churn_seconds = maintenance_seconds = 0.0
    for number in range(rounds):
        started = time.perf_counter()
        ids = table.search().select(["chunk_id", "doc_id"]).limit(None).to_arrow()
        picked = rng.sample(range(ids.num_rows), int(rows * (CHURN_EDIT + CHURN_TURNOVER)))
        edited, deleted = picked[: int(rows * CHURN_EDIT)], picked[int(rows * CHURN_EDIT) :]
        added = [f"c{next_id + i}" for i in range(len(deleted))]
        next_id += len(deleted)
        chunk_ids = [ids["chunk_id"][i].as_py() for i in edited] + added
        doc_ids = [ids["doc_id"][i].as_py() for i in edited] + [ids["doc_id"][i].as_py() for i in deleted]
        new_texts = [" ".join(rng.sample(paragraphs, rng.randint(1, 2)))[:1500] for _ in chunk_ids]
        vectors = embedder.encode(new_texts)
        batch = pa.table(
            {
                "chunk_id": chunk_ids,
                "doc_id": doc_ids,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dimension),
            }
        )
        table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(batch)
        store.delete_keys(table, "chunk_id", [ids["chunk_id"][i].as_py() for i in deleted])
        state = ann.ensure_vector_index(table)
        actions[state.action] = actions.get(state.action, 0) + 1
        churn_seconds += time.perf_counter() - started
        timed = number >= rounds - CHURN_TIMED_ROUNDS
        if timed:
            round_p50.append(_round_p50(table, embedder, texts, served))
        started = time.perf_counter()  # then optimize_index, as its sensor requests after each refresh
        state = ann.ensure_vector_index(table, fold_share=0.0)
        maintenance[state.action] = maintenance.get(state.action, 0) + 1
        maintenance_seconds += time.perf_counter() - started
        if timed:
            maintained_p50.append(_round_p50(table, embedder, texts, served))
    exact, _ = _search(table, embedder, texts, lambda q: q.bypass_vector_index(), None)
    fresh = db.create_table(f"churn_{rows}_fresh", table.to_arrow(), mode="overwrite")
    ann.ensure_vector_index(fresh)
    for warm in (table, fresh):  # both tables' index files read once before either is timed
        _search(warm, embedder, texts, served, None)
    churned, churned_ms = _search(table, embedder, texts, served, None)
    found, fresh_ms = _search(fresh, embedder, texts, served, None)
    after, before = _percentiles(churned_ms), _percentiles(fresh_ms)
    fresh_round = statistics.median(_search(fresh, embedder, texts[:ROUND_QUERIES], served, None)[1])
    return {
        "rows": rows,
        "rounds": rounds,
        "edited_per_round": int(rows * CHURN_EDIT),
        "deleted_and_added_per_round": int(rows * CHURN_TURNOVER),
        "actions": actions,
        "churn_seconds": round(churn_seconds, 1),
        "table_versions": len(table.list_versions()),
        "after_churn": {**after, "recall@10": _recall(churned, exact)},
        "fresh": {**before, "recall@10": _recall(found, exact)},
        "p50_vs_fresh": round(after["p50_ms"] / before["p50_ms"], 2) if before["p50_ms"] else None,
        "timed_rounds": len(round_p50),
        "round_p50_ms": [round(v, 2) for v in round_p50],
        "fresh_round_p50_ms": round(fresh_round, 2),
        "worst_round_vs_fresh": round(max(round_p50) / fresh_round, 2) if round_p50 else None,
        "mean_round_vs_fresh": round(statistics.mean(round_p50) / fresh_round, 2) if round_p50 else None,
        "maintenance_actions": maintenance,
        "maintenance_seconds": round(maintenance_seconds, 1),
        "maintained_round_p50_ms": [round(v, 2) for v in maintained_p50],
        "worst_maintained_vs_fresh": round(max(maintained_p50) / fresh_round, 2) if maintained_p50 else None,
        "mean_maintained_vs_fresh": (
            round(statistics.mean(maintained_p50) / fresh_round, 2) if maintained_p50 else None
        ),
    }


def churn_markdown(result: dict) -> list[str]:
    after, fresh = result["after_churn"], result["fresh"]
    actions = ", ".join(f"{name} {count}" for name, count in sorted(result["actions"].items()))
    maintained = ", ".join(f"{n} {c}" for n, c in sorted(result["maintenance_actions"].items()))
    return [
        f"### After {result['rounds']} refreshes",
        "",
        f"{result['rows']:,} rows; each round re-encodes {result['edited_per_round']:,} rows from new text, "
        f"deletes {result['deleted_and_added_per_round']:,} and adds as many, then keeps the index the way "
        f"the index asset does (after each round: {actions}). {result['rounds']} rounds took "
        f"{result['churn_seconds']} s. Then optimize_index folds every unindexed row in, as it does after "
        f"each refresh ({maintained}; {result['maintenance_seconds']} s in all). The fresh table holds the "
        "same final rows with a new index.",
        "",
        "| table | p50 (ms) | p95 (ms) | recall@10 vs exact |",
        "|---|---|---|---|",
        f"| after {result['rounds']} refreshes | {after['p50_ms']} | {after['p95_ms']} "
        f"| {after['recall@10']} |",
        f"| freshly built | {fresh['p50_ms']} | {fresh['p95_ms']} | {fresh['recall@10']} |",
        "",
        f"Latency after the refreshes: **{result['p50_vs_fresh']}x** the fresh table's p50. Through the "
        f"cadence (the first {ROUND_QUERIES} queries timed after each of the last {result['timed_rounds']} "
        f"rounds, against {result['fresh_round_p50_ms']} ms on the fresh table): worst round "
        f"**{result['worst_round_vs_fresh']}x**, mean {result['mean_round_vs_fresh']}x; per round (ms): "
        f"{', '.join(str(v) for v in result['round_p50_ms'])}. After each round's maintenance: worst "
        f"**{result['worst_maintained_vs_fresh']}x**, mean {result['mean_maintained_vs_fresh']}x; per round "
        f"(ms): {', '.join(str(v) for v in result['maintained_round_p50_ms'])}.",
        "",
    ]
