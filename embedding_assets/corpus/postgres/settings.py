"""Where the PostgreSQL source table lives, and how to connect to it (the password never printed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2.extensions import connection as PgConnection

from embedding_assets.corpus.postgres.decoding import split_table_name

DEFAULT_TABLE = "documents"
DEFAULT_SLOT = "embedding_assets"
DEFAULT_PORT = 5432
# Setting -> (our variable, libpq's variable or None).
ENV_VARS: dict[str, tuple[str, str | None]] = {
    "host": ("EMBEDDING_ASSETS_PG_HOST", "PGHOST"),
    "port": ("EMBEDDING_ASSETS_PG_PORT", "PGPORT"),
    "user": ("EMBEDDING_ASSETS_PG_USER", "PGUSER"),
    "password": ("EMBEDDING_ASSETS_PG_PASSWORD", "PGPASSWORD"),
    "dbname": ("EMBEDDING_ASSETS_PG_DB", "PGDATABASE"),
    "table": ("EMBEDDING_ASSETS_PG_TABLE", None),
    "slot": ("EMBEDDING_ASSETS_PG_SLOT", None),
}
REQUIRED = ("host", "user", "dbname")
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


@dataclass(frozen=True)
class PostgresSettings:
    """Where the source table lives; `describe()` and `repr()` never show the password."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    table: str = DEFAULT_TABLE
    slot: str = DEFAULT_SLOT

    def __post_init__(self) -> None:
        if not _SLOT_NAME.fullmatch(self.slot):
            raise ValueError(f"slot name {self.slot!r}: use 1-63 lowercase letters, digits and underscores")
        split_table_name(self.table)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PostgresSettings:
        def get(key: str) -> str | None:
            ours, libpq = ENV_VARS[key]
            return environ.get(ours) or (environ.get(libpq) if libpq else None) or None

        missing = [key for key in REQUIRED if not get(key)]
        if missing:
            names = ", ".join(f"{ENV_VARS[k][0]} (or {ENV_VARS[k][1]})" for k in missing)
            raise ValueError(f"PostgreSQL source not configured: set {names}")
        port = get("port") or str(DEFAULT_PORT)
        if not port.isdigit():
            raise ValueError(f"{ENV_VARS['port'][0]} (or PGPORT) must be a port number, got {port!r}")
        return cls(
            host=str(get("host")),
            port=int(port),
            user=str(get("user")),
            password=get("password"),
            dbname=str(get("dbname")),
            table=get("table") or DEFAULT_TABLE,
            slot=get("slot") or DEFAULT_SLOT,
        )

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"postgresql://{self.user}@{host}:{self.port}/{self.dbname} table={self.table} slot={self.slot}"
        )

    def connect(self) -> PgConnection:
        params: dict[str, Any] = {"password": self.password} if self.password else {}
        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.dbname,
            application_name="embedding_assets",
            connect_timeout=10,
            options="-c TimeZone=UTC",
            **params,
        )
        conn.autocommit = True
        return conn
