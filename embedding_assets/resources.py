"""Resources: where LanceDB lives, the registry that pins models, the corpus source, the serving folder,
and the judged queries the quality gates score against."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import lancedb
from pydantic import Field

from embedding_assets import settings, store
from embedding_assets.evaluation import JudgedQueries, load_judged
from embedding_assets.registry import ModelRegistry, ModelVersion, load_registry
from embedding_assets.serving import ServingPointer
from embedding_assets.sources import Source, source_from


class LanceDBResource(dg.ConfigurableResource):
    """A LanceDB database: a local folder or an object-store URI.

    Usage: `db = lancedb_resource.connect(); db.open_table("documents")`.
    """

    uri: str = Field(default=str(settings.LANCEDB_DIR), description="LanceDB URI (folder, s3://, gs://)")

    def connect(self) -> lancedb.DBConnection:
        return store.connect(self.uri)


class ModelRegistryResource(dg.ConfigurableResource):
    """The model registry file that pins every model version."""

    path: str = Field(default=str(settings.REGISTRY_PATH), description="path of model_registry.yaml")

    def load(self) -> ModelRegistry:
        return load_registry(Path(self.path))

    def version(self, version_id: str) -> ModelVersion:
        return self.load().get(version_id)


class CorpusSourceResource(dg.ConfigurableResource):
    """Where documents come from: a folder of text files, a BEIR-format dataset folder, or a PostgreSQL
    table read by logical decoding (connection from EMBEDDING_ASSETS_PG_* variables, never from here)."""

    kind: str = Field(default="folder", description="'folder', 'beir' or 'postgres'")
    path: str = Field(default=str(settings.CORPUS_DIR), description="folder root or BEIR dataset folder")

    def source(self) -> Source:
        if self.kind == "postgres":
            from embedding_assets.cdc import PostgresSettings
            from embedding_assets.postgres_source import PostgresSource

            return PostgresSource(PostgresSettings.from_env())
        return source_from(self.kind, Path(self.path))

    def advance(self, lsn: str) -> None:
        """Confirm a change-capture position: everything up to `lsn` is indexed by every live version."""
        source = self.source()
        if not hasattr(source, "advance"):
            raise ValueError(f"a {self.kind!r} source has no change-capture position to advance")
        source.advance(lsn)


class ServingResource(dg.ConfigurableResource):
    """The folder holding the serving pointer and its history."""

    folder: str = Field(default=str(settings.SERVING_DIR), description="pointer and history folder")

    def pointer(self) -> ServingPointer:
        return ServingPointer(Path(self.folder))


class GoldenSetResource(dg.ConfigurableResource):
    """Judged queries in BEIR layout (queries.jsonl plus qrels.tsv or qrels/test.tsv)."""

    path: str = Field(default=str(settings.GOLDEN_DIR), description="folder of the judged queries")

    def judged(self) -> JudgedQueries:
        return load_judged(Path(self.path))

    def fixed_queries(self) -> list[str]:
        """The judged queries' texts in file order: the fixed probes of neighbour stability."""
        return list(self.judged().queries.values())
