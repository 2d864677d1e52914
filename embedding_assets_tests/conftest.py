"""Shared fixtures: an isolated data folder, the real pinned MiniLM model loaded once, a small real corpus."""

import os
import shutil
import subprocess
import sys
import tempfile

# Isolate every path the package derives from the data folder before the package is imported.
os.environ.setdefault("EMBEDDING_ASSETS_DATA", tempfile.mkdtemp(prefix="embedding-assets-test-data-"))
os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Iterator  # noqa: E402
from contextlib import closing  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from embedding_assets import locations  # noqa: E402
from embedding_assets.corpus.postgres.settings import PostgresSettings  # noqa: E402
from embedding_assets.definitions import build_resources  # noqa: E402
from embedding_assets.models.embedders import Embedder, embedder_for  # noqa: E402
from embedding_assets.models.registry import DEFAULT_VERSION, ModelRegistry, ModelVersion  # noqa: E402
from embedding_assets_tests import pg, s3  # noqa: E402
from embedding_assets_tests.deployments import FIRST, SECOND  # noqa: E402

# The files that take longest (real CLI processes, daemons, launched runs, object storage), longest first.
# Under `-n 2 --dist loadfile` each worker takes the next file in collection order, so these start first
# and the suite does not end on a long file begun late by one worker.
LONGEST_FILES = (  # summed test times of a run on 2 cores (923 s of wall time, 1,759 s of tests)
    "test_production_instance.py",  # 254 s
    "test_runbooks.py",  # 188 s
    "test_concurrent_writers.py",  # 175 s
    "test_crash_matrix_moves.py",  # 174 s
    "test_crash_matrix.py",  # 148 s
    "test_object_storage.py",  # 139 s
    "test_damaged_storage.py",  # 138 s
    "test_gates.py",  # 79 s
    "test_refresh.py",  # 66 s
    "test_data_quality.py",  # 60 s
    "test_pipeline.py",  # 56 s
    "test_embedders.py",  # 50 s
)

SMALL_CORPUS_PREFIXES = ("library/argparse/", "library/getopt/", "library/json/", "library/csv/")
SMALL_CORPUS_EXTRA = ("topics/for.md", "topics/try.md", "source/shlex.py", "source/getopt.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the LONGEST_FILES first (in that order), the rest in their usual order."""
    rank = {name: n for n, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def registry() -> ModelRegistry:
    """The shipped registry, with built artifacts in the session's data folder."""
    return build_resources()["model_registry"].load()


@pytest.fixture(scope="session")
def minilm(registry: ModelRegistry) -> ModelVersion:
    return registry.get(DEFAULT_VERSION)


@pytest.fixture(scope="session")
def minilm_embedder(minilm: ModelVersion) -> Embedder:
    """The real MiniLM, verified against its pinned fingerprint, shared by the whole session."""
    return embedder_for(minilm)


@pytest.fixture(scope="session")
def full_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus as the seed command writes it, in a process of its own (documents are only
    written, never embedded): in-process, pages of classes that earlier tests' libraries extended differ."""
    root = tmp_path_factory.mktemp("seeded") / "corpus"
    command = [sys.executable, "-m", "embedding_assets.cli.main", "seed", "--path", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="session")
def small_corpus(full_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About forty real documents, copied from the seeded corpus: small enough to embed in seconds."""
    root = tmp_path_factory.mktemp("small") / "corpus"
    for path in sorted(full_corpus.rglob("*")):
        rel = path.relative_to(full_corpus).as_posix()
        if path.is_file() and (rel.startswith(SMALL_CORPUS_PREFIXES) or rel in SMALL_CORPUS_EXTRA):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="session")
def built_project(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory, minilm_embedder: Embedder):
    """The small corpus built once with MiniLM (not served); tests work on copies, never re-embedding it."""
    from embedding_assets_tests.project import BUILD, Project

    project = Project(tmp_path_factory.mktemp("built"), small_corpus)
    project.first = project.materialize(BUILD)
    return project


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresSettings]:
    """The server named by EMBEDDING_ASSETS_PG_HOST or PGHOST, else a throwaway PostgreSQL 15."""
    if pg.configured():
        settings = PostgresSettings.from_env()
        with closing(settings.connect()) as conn, conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            row = cur.fetchone()
        if row is None or row[0] != "logical":
            pytest.fail(f"the configured server ({settings.describe()}) needs wal_level=logical")
        yield settings
    elif pg.INITDB.exists():
        with pg.throwaway_server() as env:
            yield PostgresSettings.from_env(env)
    else:
        pytest.skip(f"no PostgreSQL: set EMBEDDING_ASSETS_PG_HOST, or install postgresql-15 ({pg.INITDB})")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """The S3-compatible server named by EMBEDDING_ASSETS_S3_ENDPOINT (CI starts one with
    scripts/throwaway-s3), else a throwaway moto server of this session's; a fresh bucket on it.
    moto stands in for S3."""
    if s3.configured():
        yield s3.with_bucket(dict(os.environ))
    else:
        with s3.throwaway_server() as env:
            yield s3.with_bucket(env)


@pytest.fixture(scope="session")
def registry_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped registry plus SECOND: FIRST under another id (`deployments`)."""
    registry = yaml.safe_load(locations.SHIPPED_REGISTRY.read_text())
    [first] = [v for v in registry["versions"] if v["id"] == FIRST]
    registry["versions"].append({**first, "id": SECOND, "description": f"{FIRST} under another id"})
    path = tmp_path_factory.mktemp("registry") / "model_registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="session")
def deployment_bases(
    small_corpus: Path, registry_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Deployment folders to start from: FIRST built and served ("served"), and SECOND served after it
    ("migrated"). FIRST is MiniLM on onnxruntime: each CLI process of the tests that encodes loads it in
    a fraction of a second where sentence-transformers' import alone takes five."""
    from embedding_assets_tests.project import Project

    root = tmp_path_factory.mktemp("crash-bases")
    served = Project(root / "served", small_corpus, registry=registry_path)
    assert served.migrate(FIRST).promoted
    shutil.copy(registry_path, served.root / "model_registry.yaml")
    migrated = served.copy(root / "migrated", registry=registry_path)
    assert migrated.migrate(SECOND).promoted
    shutil.copy(registry_path, migrated.root / "model_registry.yaml")
    return {"served": served.root, "migrated": migrated.root}
