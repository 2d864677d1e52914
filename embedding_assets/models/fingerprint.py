"""Fingerprints of model weights: what a pinned version promises to load."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files that do not change what the model computes.
IGNORED_SUFFIXES = (".md", ".pyc", ".lock")
IGNORED_NAMES = (".gitattributes", ".gitignore")


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """Weight, tokenizer and config files under `folder`, in a stable order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in IGNORED_NAMES
        and not p.name.endswith(IGNORED_SUFFIXES)
        and "__pycache__" not in p.parts
    )


def fingerprint_weights(folder: Path, extra: dict[str, Path] | None = None) -> str:
    """sha256 over each file's relative path and content hash: `sha256:<hex>`. `extra` adds files kept
    elsewhere (name -> path), such as a tokenizer shipped in another package."""
    files = [(p.relative_to(folder).as_posix(), p) for p in weight_files(folder)]
    if not files:
        raise FileNotFoundError(f"no weight files under {folder}")
    for name, path in sorted((extra or {}).items()):
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no file at {path}")
        files.append((name, path))
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{file_sha256(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"
