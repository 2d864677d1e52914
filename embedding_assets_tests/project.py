"""A test deployment: corpus folder, LanceDB database and serving folder under one temp dir, run through
the project's real assets, checks and jobs on an ephemeral Dagster instance."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import dagster as dg

from embedding_assets import locations
from embedding_assets.cli import runner
from embedding_assets.definitions import build_definitions, build_resources
from embedding_assets.defs.assets.chunks import chunks
from embedding_assets.defs.assets.corpus import corpus
from embedding_assets.defs.assets.embeddings import embeddings
from embedding_assets.defs.assets.index import index
from embedding_assets.defs.assets.model_weights import model_weights
from embedding_assets.defs.partitions import model_versions
from embedding_assets.defs.resources import (
    CorpusSourceResource,
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)
from embedding_assets.index import store, tables
from embedding_assets.models.registry import DEFAULT_VERSION, load_registry
from embedding_assets.serving.pointer import ServingPointer

BUILD = [corpus, model_weights, chunks, embeddings, index]
# Built model artifacts are shared by every test deployment of the session (built once).
MODELS_DIR = build_resources()["model_registry"].models_dir


def resources_at(root: Path, registry: Path = locations.SHIPPED_REGISTRY) -> dict[str, Any]:
    """The resources of a deployment whose data folder is `root` (corpus, lancedb, serving, scratch: the
    layout `locations` gives EMBEDDING_ASSETS_DATA), read through `registry`."""
    return {
        "lancedb": LanceDBResource(uri=str(locations.lancedb_dir(root))),
        "model_registry": ModelRegistryResource(path=str(registry), models_dir=MODELS_DIR),
        "corpus_source": CorpusSourceResource(kind="folder", path=str(locations.corpus_dir(root))),
        "serving": ServingResource(folder=str(locations.serving_dir(root))),
        "golden_set": GoldenSetResource(
            path=str(locations.SHIPPED_GOLDEN_DIR), scratch_dir=str(locations.scratch_dir(root))
        ),
    }


def in_process(root: Path, registry: Path) -> dict[str, Any]:
    """Keyword arguments that run the runner's functions on the deployment at `root` in this process."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(model_versions.name, load_registry(registry).ids)
    return {"defs": build_definitions(resources_at(root, registry)), "instance": instance}


class Project:
    """A deployment under `root`: a copy of `corpus_dir`, and of `db` and `serving` when given (so vectors
    already computed are reused, never re-encoded)."""

    def __init__(
        self,
        root: Path,
        corpus_dir: Path,
        db: Path | None = None,
        serving: Path | None = None,
        registry: Path = locations.SHIPPED_REGISTRY,
    ):
        self.root = root
        self.corpus = root / "corpus"
        shutil.copytree(corpus_dir, self.corpus)
        self.db_uri = root / "lancedb"
        if db is not None:
            shutil.copytree(db, self.db_uri)
        self.pointer = ServingPointer(root / "serving")
        if serving is not None and serving.exists():
            shutil.copytree(serving, self.pointer.folder)
        self.instance = dg.DagsterInstance.ephemeral()
        self.instance.add_dynamic_partitions(model_versions.name, load_registry().ids)
        self.resources = resources_at(root, registry)
        self.defs = build_definitions(self.resources)

    def copy(self, root: Path, registry: Path = locations.SHIPPED_REGISTRY) -> Project:
        """A new deployment with this one's files and a fresh instance: no vector is computed twice."""
        return Project(root, self.corpus, self.db_uri, self.pointer.folder, registry)

    def with_registry(self, registry: Path) -> Project:
        """The same files and instance, read through another registry file (an edited model entry)."""
        return self.with_resources(
            model_registry=ModelRegistryResource(path=str(registry), models_dir=MODELS_DIR)
        )

    def with_resources(self, **resources: Any) -> Project:
        """The same files and instance with some resources replaced (another registry, source, ...)."""
        clone = copy.copy(self)
        clone.resources = {**self.resources, **resources}
        clone.defs = build_definitions(clone.resources)
        return clone

    def materialize(self, assets: list, version: str = DEFAULT_VERSION) -> dg.ExecuteInProcessResult:
        partitioned = assets != [corpus]  # every other asset and check is per model version
        return dg.materialize(
            assets,
            partition_key=version if partitioned else None,
            instance=self.instance,
            resources=self.resources,
        )

    def job(self) -> dict[str, Any]:
        """Keyword arguments that point the runner's functions at this deployment."""
        return {"defs": self.defs, "instance": self.instance}

    def migrate(self, version: str, **kwargs: Any) -> runner.GateRun:
        return runner.migrate(version, **kwargs, **self.job())

    def gates(self, version: str = DEFAULT_VERSION) -> runner.GateRun:
        return runner.run_gates(version, **self.job())

    def metadata(self, result: dg.ExecuteInProcessResult, asset: str) -> dict:
        [event] = [
            e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset
        ]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def registry(self):
        return self.resources["model_registry"].load()

    def db(self):
        return store.connect(self.db_uri)

    def index_rows(self, version: str = DEFAULT_VERSION):
        return self.db().open_table(tables.index_table(version)).to_arrow()
