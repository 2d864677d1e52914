"""Resources: where LanceDB lives (and how it reaches an object store), the registry that pins models, the
corpus source (and its PostgreSQL server), the serving folder, and the judged queries the quality gates
score against.

Every field is set once, in `definitions.py`, from the environment (`dg.EnvVar`); the CLI, the runner,
evaluation and the gates all take these objects from the Definitions. Outside a run, initialize them
with `process_config_and_initialize()` (see `embedding_assets/wiring.py`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import lancedb
from pydantic import Field

from embedding_assets import locations
from embedding_assets.corpus.postgres.settings import (
    DEFAULT_PORT,
    DEFAULT_SLOT,
    DEFAULT_TABLE,
    PostgresSettings,
)
from embedding_assets.corpus.sources import Source, source_from
from embedding_assets.index import store
from embedding_assets.models.registry import ModelRegistry, ModelVersion, load_registry
from embedding_assets.quality.evaluation import JudgedQueries, load_judged
from embedding_assets.serving.pointer import ServingPointer


class S3StorageResource(dg.ConfigurableResource):
    """How LanceDB reaches an S3 or S3-compatible object store; every field left empty falls back to the
    object store's own defaults (AWS_* variables, instance credentials, AWS's endpoints)."""

    endpoint: str = Field("", description="endpoint URL of an S3-compatible server; empty: AWS S3")
    region: str = Field("", description="bucket region (most S3-compatible servers require one)")
    access_key_id: str = Field("", description="access key id")
    secret_access_key: str = Field("", description="secret access key: set through an EnvVar, never config")
    allow_http: bool = Field(False, description="allow a plain-HTTP endpoint (a local server)")

    def storage_options(self) -> dict[str, str]:
        """The LanceDB (Lance object_store) storage options these settings name; only those that are set."""
        options = {
            "aws_endpoint": self.endpoint,
            "aws_region": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "allow_http": "true" if self.allow_http else "",
        }
        return {key: value for key, value in options.items() if value}


class LanceDBResource(dg.ConfigurableResource):
    """A LanceDB database: a local folder or an object-store URI (s3:// with the options of `s3`).

    Usage: `db = lancedb_resource.connect(); db.open_table("documents")`.
    """

    uri: str = Field(description="LanceDB URI (folder, s3://, gs://)")
    s3: S3StorageResource = Field(
        default_factory=S3StorageResource, description="object-store settings of an s3:// URI"
    )

    def storage_options(self) -> dict[str, str]:
        """Storage options for `uri`: the S3 settings for an s3:// URI, none for a local folder."""
        return self.s3.storage_options() if store.is_s3(self.uri) else {}

    def connect(self) -> lancedb.DBConnection:
        return store.connect(self.uri, self.storage_options())


class ModelRegistryResource(dg.ConfigurableResource):
    """The model registry file that pins every model version, and the folder of built model artifacts."""

    path: str = Field(description="path of model_registry.yaml")
    models_dir: str = Field(description="folder holding the artifacts of versions the project builds")

    def load(self) -> ModelRegistry:
        return load_registry(Path(self.path), Path(self.models_dir))

    def version(self, version_id: str) -> ModelVersion:
        return self.load().get(version_id)


class PostgresResource(dg.ConfigurableResource):
    """The PostgreSQL server and table a `postgres` corpus source reads by logical decoding."""

    host: str = Field("", description="server host (required for a postgres source)")
    port: int = Field(DEFAULT_PORT, description="server port")
    user: str = Field("", description="role with REPLICATION (required for a postgres source)")
    password: str = Field("", description="password; set it through an EnvVar, never in config")
    dbname: str = Field("", description="database (required for a postgres source)")
    table: str = Field(DEFAULT_TABLE, description="documents table: id, title, body, updated_at")
    slot: str = Field(DEFAULT_SLOT, description="logical replication slot (test_decoding)")

    def settings(self) -> PostgresSettings:
        missing = [name for name in ("host", "user", "dbname") if not getattr(self, name)]
        if missing:
            names = ", ".join(f"EMBEDDING_ASSETS_PG_{m.upper().replace('DBNAME', 'DB')}" for m in missing)
            raise ValueError(f"PostgreSQL source not configured: set {names}")
        return PostgresSettings(
            self.host, self.port, self.user, self.password or None, self.dbname, self.table, self.slot
        )


class CorpusSourceResource(dg.ConfigurableResource):
    """Where documents come from: a folder of text files, a BEIR-format dataset folder, or a PostgreSQL
    table read by logical decoding."""

    kind: str = Field("folder", description="'folder', 'beir' or 'postgres'")
    path: str = Field("", description="folder root or BEIR dataset folder (folder and beir sources)")
    postgres: PostgresResource = Field(
        default_factory=PostgresResource, description="the server of a postgres source"
    )

    def source(self) -> Source:
        if self.kind == "postgres":
            from embedding_assets.corpus.postgres.source import PostgresSource

            return PostgresSource(self.postgres.settings())
        return source_from(self.kind, Path(self.path))

    def advance(self, lsn: str) -> None:
        """Confirm a change-capture position: everything up to `lsn` is indexed by every live version."""
        source = self.source()
        if not hasattr(source, "advance"):
            raise ValueError(f"a {self.kind!r} source has no change-capture position to advance")
        source.advance(lsn)


class ServingResource(dg.ConfigurableResource):
    """The folder holding the serving pointer and its history, and the serving policies."""

    folder: str = Field(description="pointer and history folder")
    retention_hours: float = Field(168.0, description="how long a replaced version stays live (dual write)")
    freshness_slo_minutes: float = Field(15.0, description="served data may lag the corpus this long")
    price_per_million_tokens: float = Field(
        0.02,
        ge=0,
        description="what embedding a million tokens costs (an API's price, say), for migration reports",
    )

    def pointer(self) -> ServingPointer:
        return ServingPointer(Path(self.folder))

    def bridges(self) -> Path:
        """The folder of fitted bridges that may serve new-model queries against a version's index."""
        return locations.bridges_dir(Path(self.folder))

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self.retention_hours)

    @property
    def freshness_slo(self) -> timedelta:
        return timedelta(minutes=self.freshness_slo_minutes)


class GoldenSetResource(dg.ConfigurableResource):
    """Judged queries in BEIR layout (queries.jsonl plus qrels.tsv or qrels/test.tsv), and the scratch
    folder where evaluation indexes a BEIR dataset."""

    path: str = Field(description="folder of the judged queries")
    scratch_dir: str = Field(description="scratch databases for evaluating on BEIR datasets")

    def judged(self) -> JudgedQueries:
        return load_judged(Path(self.path))

    def fixed_queries(self) -> list[str]:
        """The judged queries' texts in file order: the fixed probes of neighbour stability."""
        return list(self.judged().queries.values())
