"""What a gate concludes: pass, warn (a signal) or block (a gate), with the numbers behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["pass", "warn", "block"]


@dataclass(frozen=True)
class GateOutcome:
    """One gate's verdict; `metadata` holds observed values, thresholds and examples for the UI."""

    level: Level
    summary: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.level == "pass"

    @property
    def blocks(self) -> bool:
        return self.level == "block"


def level_for(value: float, *, warn: float, block: float, higher_is_worse: bool = True) -> Level:
    """Grade `value` against a warn and a block threshold."""
    if higher_is_worse:
        return "block" if value > block else "warn" if value > warn else "pass"
    return "block" if value < block else "warn" if value < warn else "pass"


class Markdown(str):
    """Text to render as markdown in the Dagster UI."""


def markdown_table(header: list[str], rows: list[list[Any]]) -> Markdown:
    """A small markdown table for check metadata."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    # A cell is one line: a pipe or line break in a value (a file name may hold both) would end it.
    return str(value).replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")
