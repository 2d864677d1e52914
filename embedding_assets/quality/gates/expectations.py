"""The data-quality gate's expectations, as the validator process runs them.

This module is all the validator process imports besides great_expectations: pandas and numpy, never
LanceDB (1.9 s of CPU on 2 cores, beside a run's stages). The reports it builds travel back by pickle.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from embedding_assets.memory import peak_resident_gib
from embedding_assets.metadata import EXAMPLES
from embedding_assets.quality.gates.outcome import Markdown, markdown_table

if TYPE_CHECKING:
    from types import ModuleType

    from embedding_assets.quality.gates.data_quality import TableMark

CHUNKS_SUITE = "chunks"
VECTORS_SUITE = "vectors"
SUITES = (CHUNKS_SUITE, VECTORS_SUITE)
MARK = "validated_through"  # metadata: `chunks_validated_through`, `vectors_validated_through`
SETTINGS = "settings"
VALIDATOR_NICENESS = 19  # the lowest priority: the validator runs on the CPU the run leaves idle
ID = "chunk_id"
TABLE = ""  # the `column` of a table-level expectation
RESULT_FORMAT = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": EXAMPLES,
    "unexpected_index_column_names": [ID],
}
OBSERVED_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
NOT_THRESHOLDS = {"batch_id", "column"}


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict.

    `observed` holds GX's counts; its `partial_unexpected_list` names the offending chunk ids (first
    five, distinct) and `partial_unexpected_values` the offending values. `kwargs` are the thresholds.
    """

    suite: str
    expectation: str
    column: str
    success: bool
    observed: dict
    kwargs: dict


@dataclass(frozen=True)
class DataQualityReport:
    """Every expectation of both suites, with the table sizes and the time the validation took."""

    outcomes: list[ExpectationOutcome]
    chunks: int
    rows: int
    seconds: float
    validator_peak_rss_gib: float | None = None  # the worker process's own peak, when one validated
    marks: dict[str, TableMark | None] = field(default_factory=dict)  # how far each table was read
    since: dict[str, TableMark | None] = field(default_factory=dict)  # read past these (None: all rows)
    settings: dict = field(default_factory=dict)  # what the vectors and chunks were held to

    def to_metadata(self) -> dict:
        """The marks, the scope of each table's read and the settings, for the next validation."""
        metadata: dict = {SETTINGS: self.settings}
        for suite in SUITES:
            mark, since = self.marks.get(suite), self.since.get(suite)
            metadata[f"{suite}_{MARK}"] = mark.to_metadata() if mark else {}
            metadata[f"{suite}_read"] = (
                "every row" if since is None else f"rows written since table version {since.version}"
            )
        return metadata

    @property
    def passed(self) -> bool:
        return all(o.success for o in self.outcomes)

    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def table(self) -> Markdown:
        rows = []
        for o in self.outcomes:
            unexpected = o.observed.get("unexpected_count", o.observed.get("observed_value", ""))
            if o.observed.get("partial_unexpected_list"):
                unexpected = f"{unexpected} e.g. {o.observed['partial_unexpected_list']}"
            if "exception" in o.observed:
                unexpected = f"error: {o.observed['exception']}"
            thresholds = ", ".join(f"{k}={v}" for k, v in o.kwargs.items())
            passed = "yes" if o.success else "**no**"
            rows.append([o.suite, o.expectation, o.column or "(table)", passed, unexpected, thresholds])
        return markdown_table(["suite", "expectation", "column", "passed", "unexpected", "thresholds"], rows)


def validate_frames(
    chunks: pd.DataFrame | None,
    rows: pd.DataFrame | None,
    *,
    dimension: int,
    max_content_tokens: int,
    normalize: bool,
    norm_tolerance: float = 1e-3,
) -> DataQualityReport:
    """Run the chunks and vectors suites on frames reduced by `data_quality.chunk_frame` and
    `vector_frame`; a suite whose frame is None (nothing of its table to validate) is left out.
    `max_content_tokens` is a chunk's limit without the model's special tokens."""
    started = time.perf_counter()
    gx = _gx()
    context = _context(gx)
    datasource = context.data_sources.add_pandas("data_quality")
    outcomes: list[ExpectationOutcome] = []
    for name, frame, expectations in (
        (CHUNKS_SUITE, chunks, _chunk_expectations(gx, max_content_tokens)),
        (VECTORS_SUITE, rows, _vector_expectations(gx, dimension, normalize, norm_tolerance)),
    ):
        if frame is None:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        batch = (
            datasource.add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe(name)
            .get_batch(batch_parameters={"dataframe": frame})
        )
        result = batch.validate(suite, result_format=RESULT_FORMAT)
        order = {e.id: i for i, e in enumerate(suite.expectations)}
        for r in sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order))):
            outcomes.append(_outcome(name, r))
    context.data_sources.delete(datasource.name)  # GX keeps its last context, and so the frames, alive
    sizes = [0 if frame is None else len(frame) for frame in (chunks, rows)]
    return DataQualityReport(outcomes, *sizes, time.perf_counter() - started)


def _chunk_expectations(gx: ModuleType, max_content_tokens: int) -> list[Any]:
    e = gx.expectations
    return [
        *_key_expectations(gx),
        e.ExpectColumnValuesToBeInSet(column="text_present", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="text_stripped_length", min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="token_count"),
        e.ExpectColumnValuesToBeBetween(column="token_count", min_value=1, max_value=max_content_tokens),
    ]


def _vector_expectations(gx: ModuleType, dimension: int, normalize: bool, tolerance: float) -> list[Any]:
    e = gx.expectations
    norm = (
        e.ExpectColumnValuesToBeBetween(
            column="vector_norm", min_value=1 - tolerance, max_value=1 + tolerance
        )
        if normalize
        else e.ExpectColumnValuesToBeBetween(column="vector_norm", min_value=0, strict_min=True)
    )
    return [
        *_key_expectations(gx),
        e.ExpectColumnValuesToBeBetween(column="vector_dimension", min_value=dimension, max_value=dimension),
        e.ExpectColumnValuesToBeInSet(column="vector_finite", value_set=[True]),
        norm,
    ]


def _key_expectations(gx: ModuleType) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column=ID),
        e.ExpectColumnValuesToBeUnique(column=ID),
    ]


def _outcome(suite: str, result: Any) -> ExpectationOutcome:
    config = result.expectation_config
    found = result.result or {}
    observed = {k: _json_safe(found[k]) for k in OBSERVED_KEYS if k in found}
    if "partial_unexpected_list" in found:
        index = found.get("partial_unexpected_index_list") or []
        ids = [_json_safe(i.get(ID) if isinstance(i, dict) else i) for i in index]
        observed["partial_unexpected_list"] = list(dict.fromkeys(ids))[:EXAMPLES]
        observed["partial_unexpected_values"] = _json_safe(found["partial_unexpected_list"][:EXAMPLES])
    error = _exception_message(result.exception_info)
    if error:
        observed["exception"] = error
    kwargs = {k: _json_safe(v) for k, v in config.kwargs.items() if k not in NOT_THRESHOLDS and v is not None}
    column = config.kwargs.get("column") or TABLE
    return ExpectationOutcome(suite, config.type, column, bool(result.success), observed, kwargs)


def _exception_message(info: dict | None) -> str | None:
    """GX reports one exception per result, or one per metric keyed by metric id."""
    if not info:
        return None
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = [str(i.get("exception_message")) for i in infos if i.get("raised_exception")]
    return "; ".join(messages) or None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return None if value is pd.NA or value is pd.NaT else str(value)


def load_expectations() -> None:
    """The validator process's start: import great_expectations."""
    _gx()


def start_validator() -> None:
    """The validator process's initializer: yield the CPU to the run it serves, then import. Its import
    (2.3 s of CPU) ran beside a refresh's stages at equal priority and slowed them on 2 cores: a 1% edit
    refresh at 248k took 4.98-5.66 s with the validator niced, 5.51-6.02 s without (seven pairs)."""
    os.nice(VALIDATOR_NICENESS)
    load_expectations()


def validate_in_worker(chunks: pd.DataFrame, rows: pd.DataFrame, **settings) -> tuple:
    """`validate_frames` in the validator process, with that process's own peak resident memory in GiB."""
    report = validate_frames(chunks, rows, **settings)
    peak = peak_resident_gib()
    return report, peak if peak is not None else round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
    )


def _gx() -> ModuleType:
    """great_expectations, imported on first use with analytics off unless the environment says otherwise."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _context(gx: ModuleType) -> Any:
    """A fresh in-memory context without progress bars."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context
