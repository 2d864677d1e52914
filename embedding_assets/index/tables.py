"""LanceDB table names: every stage and gate takes them from here."""

from __future__ import annotations

DOCUMENTS_TABLE = "documents"
QUARANTINE_TABLE = "quarantine"
CHUNKS_TABLE_PREFIX = "chunks__"
INDEX_TABLE_PREFIX = "index__"
CACHE_TABLE_PREFIX = "embedding_cache__"
SENTINELS_TABLE_PREFIX = "sentinels__"
EXACT_MEMO_TABLE_PREFIX = "exact_memo__"  # each version's exact top-k lists from its last evaluation
CHANGE_LOG_TABLE_PREFIX = "changes__"  # which documents each write to a table touched (change_log)
SCORE_PROFILE_TABLE_PREFIX = "score_profile__"  # each version's score distributions (`calibration`)
STAGING_TABLE_PREFIX = "staging__"  # what one corpus shard staged for its version's stages to fold in


def version_tables(version: str) -> str:
    """The name `store.writer_lock` gives all of a version's tables (chunks, index, sentinels)."""
    return f"version__{version}"


def chunks_table(version: str) -> str:
    return f"{CHUNKS_TABLE_PREFIX}{version}"


def index_table(version: str) -> str:
    return f"{INDEX_TABLE_PREFIX}{version}"


def cache_table(encoder_key: str) -> str:
    return f"{CACHE_TABLE_PREFIX}{encoder_key[:16]}"


def sentinels_table(version: str) -> str:
    return f"{SENTINELS_TABLE_PREFIX}{version}"


def score_profile_table(version: str) -> str:
    return f"{SCORE_PROFILE_TABLE_PREFIX}{version}"


def exact_memo_table(version: str, purpose: str = "") -> str:
    """The memo of a version's golden-gate queries, or with `purpose` of another query set beside it."""
    return f"{EXACT_MEMO_TABLE_PREFIX}{version}" + (f"__{purpose}" if purpose else "")


def staging_prefix(version: str, kind: str) -> str:
    """The common prefix of every shard's staged `kind` ("chunks" or "vectors") table of `version`."""
    return f"{STAGING_TABLE_PREFIX}{kind}__{version}__"


def staging_table(version: str, kind: str, shard_key: str) -> str:
    return f"{staging_prefix(version, kind)}{shard_key}"


def change_log_table(logged_table: str) -> str:
    return f"{CHANGE_LOG_TABLE_PREFIX}{logged_table}"
