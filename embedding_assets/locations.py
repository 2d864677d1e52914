"""Where the project keeps things by default. Deployment choices override these in `definitions.py`."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
SHIPPED_REGISTRY = PROJECT_ROOT / "model_registry.yaml"
SHIPPED_GOLDEN_DIR = PROJECT_ROOT / "data" / "golden"  # the judged queries live in the repository
DEFAULT_DAGSTER_HOME = PROJECT_ROOT / ".dagster_home"


def private_folder(path: Path) -> Path:
    """`path`, made if missing, that only its owner may enter (0700): the databases, the serving pointer
    and the Dagster home hold documents, vectors and run logs. A folder others could enter is tightened."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


@contextmanager
def exclusive(lock_file: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (made 0600 in a private folder), across processes; if
    another process holds it, `waiting()` is called once before this one waits its turn."""
    private_folder(lock_file.parent)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def corpus_dir(data_dir: Path) -> Path:
    return data_dir / "corpus"


def lancedb_dir(data_dir: Path) -> Path:
    return data_dir / "lancedb"


def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


def scratch_dir(data_dir: Path) -> Path:
    return data_dir / "scratch"


def serving_dir(data_dir: Path) -> Path:
    return data_dir / "serving"


def bridges_dir(serving: Path) -> Path:
    """Fitted bridges (`embedding_assets.bridge.store`): serving artifacts, beside the pointer."""
    return serving / "bridges"
