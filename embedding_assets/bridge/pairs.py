"""The texts a bridge is fit on, and their vectors in both spaces: the sentinels first, then a fixed-seed
sample of the old version's indexed chunks, never a judged query; each vector read where the project
already stored it, else encoded once into a content-addressed cache of the bridge's scratch database."""

from __future__ import annotations

from dataclasses import dataclass

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.index import store, tables
from embedding_assets.index.ann import vectors_of
from embedding_assets.index.embeddings import encode_into
from embedding_assets.models.embedders import embedder_for
from embedding_assets.models.registry import ModelVersion
from embedding_assets.quality.gates.sentinels import sentinel_hashes

SAMPLE_SEED = 4_093  # fixed: the same corpus gives the same fit sample on every run
PAIR_COLUMNS = ["chunk_hash", "model_fingerprint", "vector"]


@dataclass(frozen=True)
class FitTexts:
    """Distinct texts in fit order (sentinels first, then the seeded sample), with their chunk hashes;
    any prefix is a fit sample, so larger samples contain the smaller ones."""

    hashes: list[str]
    texts: list[str]
    sentinels: int

    def __len__(self) -> int:
        return len(self.hashes)


def fit_texts(db: lancedb.DBConnection, old: ModelVersion, new: ModelVersion, held_out: set[str]) -> FitTexts:
    """The old version's indexed chunk texts in fit order, leaving out every text of `held_out` (the
    judged queries). The sentinels come first: both versions' stored sentinels where `db` has them, else
    the old version's by the sentinel rule (the distinct hashes that sort first)."""
    indexed = store.read_columns(db, tables.index_table(old.id), ["chunk_hash", "text"])
    text_of = dict(zip(indexed["chunk_hash"].to_pylist(), indexed["text"].to_pylist(), strict=True))
    first: dict[str, str] = {}
    for version in (old, new):
        stored = store.read_columns(db, tables.sentinels_table(version.id), ["chunk_hash", "text"])
        first.update(zip(stored["chunk_hash"].to_pylist(), stored["text"].to_pylist(), strict=True))
    if not first:
        chosen = sentinel_hashes(pa.array(list(text_of), pa.string()), old.gates.sentinel_count)
        first = {h: text_of[h] for h in chosen.to_pylist()}
    rest = sorted(set(text_of) - set(first))
    rest = [rest[i] for i in np.random.default_rng(SAMPLE_SEED).permutation(len(rest))]
    ordered = {**first, **{h: text_of[h] for h in rest}}
    kept = {h: t for h, t in ordered.items() if t not in held_out}
    return FitTexts(list(kept), list(kept.values()), sum(h in kept for h in first))


def paired_vectors(
    db: lancedb.DBConnection, scratch: lancedb.DBConnection, version: ModelVersion, texts: FitTexts
) -> np.ndarray:
    """`version`'s vectors of `texts`, one row each in order: read from `db` where the version's index,
    sentinels or embedding cache holds them under its pinned fingerprint (an old model that is gone
    still has its indexed vectors), the rest encoded once into `scratch`'s cache for its encoder."""
    cache = tables.cache_table(version.encoder_key())
    found: dict[str, np.ndarray] = {}
    for database, name in (
        (db, tables.index_table(version.id)),
        (db, tables.sentinels_table(version.id)),
        (db, cache),
        (scratch, cache),
    ):
        _read_into(found, database, name, version, texts.hashes)
    missing = [h for h in dict.fromkeys(texts.hashes) if h not in found]
    if missing:
        text_of = dict(zip(texts.hashes, texts.texts, strict=True))
        table = store.open_table(scratch, cache, store.cache_schema(version.dimension))
        work = [(missing, [text_of[h] for h in missing])]
        encode_into(table, work, len(missing), embedder_for(version), progress=True)
        _read_into(found, scratch, cache, version, missing)
    return np.stack([found[h] for h in texts.hashes])


def _read_into(
    found: dict[str, np.ndarray],
    db: lancedb.DBConnection,
    name: str,
    version: ModelVersion,
    hashes: list[str],
) -> None:
    """Add to `found` the vectors table `name` holds for `hashes` not found yet, under `version`'s pin."""
    wanted = store.absent(pa.array(hashes, pa.string()), pa.array(list(found), pa.string()))
    if not len(wanted):
        return
    rows = store.rows_for_keys(db, name, "chunk_hash", wanted, PAIR_COLUMNS)
    rows = rows.filter(pc.equal(rows["model_fingerprint"], version.pinned_fingerprint()))
    if rows.num_rows:
        rows, vectors = vectors_of(rows)
        found.update(zip(rows["chunk_hash"].to_pylist(), vectors, strict=True))
