"""An S3-compatible server for the object-storage test: the configured one, or a throwaway moto server.

moto's standalone server stands in for S3: it speaks the S3 API LanceDB uses (path-style, plain HTTP) and
accepts any credentials; it is not S3.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedding_assets_tests.pg import script_server

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "throwaway-s3"
PREFIX = "EMBEDDING_ASSETS_S3_"


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names a server to use instead of a throwaway one."""
    return bool(environ.get(f"{PREFIX}ENDPOINT"))


@dataclass(frozen=True)
class S3Server:
    """A reachable server and a bucket of this session's own on it."""

    env: dict[str, str]  # the EMBEDDING_ASSETS_S3_* variables that reach it
    bucket: str

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    @property
    def secret(self) -> str:
        return self.env[f"{PREFIX}SECRET_ACCESS_KEY"]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env[f"{PREFIX}ENDPOINT"],
            region_name=self.env.get(f"{PREFIX}REGION") or "us-east-1",
            aws_access_key_id=self.env[f"{PREFIX}ACCESS_KEY_ID"],
            aws_secret_access_key=self.secret,
        )

    def upload(self, folder: Path, prefix: str) -> int:
        """Copy every file under `folder` to `prefix/` in the bucket; returns the number of objects."""
        client = self.client()
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        for path in files:
            client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return len(files)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def throwaway_server() -> Iterator[dict[str, str]]:
    """Start moto_server on a free loopback port in a fresh folder; yield its variables; stop it."""
    with script_server(SCRIPT, Path(tempfile.mkdtemp(prefix="ea-s3-"))) as env:
        yield env


def with_bucket(env: dict[str, str]) -> S3Server:
    """`env`'s server with a fresh bucket of its own, so runs never see each other's objects."""
    server = S3Server(
        {k: v for k, v in env.items() if k.startswith(PREFIX)}, f"ea-test-{uuid.uuid4().hex[:12]}"
    )
    server.client().create_bucket(Bucket=server.bucket)
    return server
