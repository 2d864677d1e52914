"""Project locations and names that every module shares; each literal lives here once."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("EMBEDDING_ASSETS_ROOT", Path(__file__).resolve().parent.parent))
DATA_DIR = Path(os.environ.get("EMBEDDING_ASSETS_DATA", PROJECT_ROOT / "data"))

CORPUS_DIR = DATA_DIR / "corpus"
LANCEDB_DIR = DATA_DIR / "lancedb"
MODELS_DIR = DATA_DIR / "models"
SCRATCH_DIR = DATA_DIR / "scratch"
SERVING_DIR = DATA_DIR / "serving"
# The shipped judged queries live in the repository, wherever the working data goes.
GOLDEN_DIR = Path(os.environ.get("EMBEDDING_ASSETS_GOLDEN_PATH", PROJECT_ROOT / "data" / "golden"))
REGISTRY_PATH = Path(os.environ.get("EMBEDDING_ASSETS_REGISTRY", PROJECT_ROOT / "model_registry.yaml"))

DEFAULT_VERSION = "minilm-l6-v2"
SAMPLE_QUERY = "how do I parse command line options"

DOCUMENTS_TABLE = "documents"
CHUNKS_TABLE_PREFIX = "chunks__"
INDEX_TABLE_PREFIX = "index__"
CACHE_TABLE_PREFIX = "embedding_cache__"
SENTINELS_TABLE_PREFIX = "sentinels__"

CORPUS_SUFFIXES = (".md", ".txt", ".rst", ".py")


def chunks_table(version: str) -> str:
    return f"{CHUNKS_TABLE_PREFIX}{version}"


def index_table(version: str) -> str:
    return f"{INDEX_TABLE_PREFIX}{version}"


def cache_table(encoder_key: str) -> str:
    return f"{CACHE_TABLE_PREFIX}{encoder_key[:16]}"


def sentinels_table(version: str) -> str:
    return f"{SENTINELS_TABLE_PREFIX}{version}"
