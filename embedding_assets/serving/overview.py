"""What serves, what it replaced and what is waiting, as tables a person reads at a glance: the UI's
serving_index metadata and the events of each promotion, rollback and blocked promotion."""

from __future__ import annotations

from embedding_assets.quality.gates.outcome import Markdown, markdown_table
from embedding_assets.serving.live import LiveVersion
from embedding_assets.serving.pointer import ServingPointer, ServingState

HISTORY_ROWS = 10  # moves the history table shows, newest first


def roles(live: list[LiveVersion]) -> dict[str, str]:
    """`{"served_version", "previous_version", "candidates"}` as text ('none' where there is none)."""
    by_role: dict[str, list[str]] = {"served": [], "previous": [], "candidate": []}
    for v in live:
        by_role[v.role].append(v.id)
    return {
        "served_version": ", ".join(by_role["served"]) or "none",
        "previous_version": ", ".join(by_role["previous"]) or "none",
        "candidates": ", ".join(by_role["candidate"]) or "none",
    }


def history_table(pointer: ServingPointer, rows: int = HISTORY_ROWS) -> Markdown:
    """The latest moves of the pointer, newest first: action, version, table version, gates, run."""
    history = pointer.history()[-rows:][::-1]
    return markdown_table(
        ["#", "action", "version", "table version", "rows", "at (UTC)", "gates passed", "overrides", "run"],
        [
            [
                s.seq,
                s.action,
                s.version,
                s.table_version,
                s.rows,
                s.at.strftime("%Y-%m-%d %H:%M:%S"),
                _gates_passed(s),
                ", ".join(s.overrides) or "-",
                (s.run_id or "-")[:8],
            ]
            for s in history
        ],
    )


def gates_table(gates: dict) -> Markdown:
    """One row per gate of a history record: verdict and the gate's own summary."""
    return markdown_table(
        ["gate", "passed", "severity", "summary"],
        [[name, g.get("passed"), g.get("severity"), g.get("summary", "")] for name, g in gates.items()],
    )


def move_summary(action: str, before: ServingState | None, after: ServingState) -> str:
    """One line: 'promote: A (table v3) -> B (table v5), 6/6 gates passed'."""
    start = f"{before.version} (table v{before.table_version})" if before else "nothing"
    end = f"{after.version} (table v{after.table_version})"
    return f"{action}: {start} -> {end}, {_gates_passed(after)} gates passed"


def gates_passed(state: ServingState) -> int:
    """How many gates of the state's record passed."""
    return sum(bool(g.get("passed")) for g in state.gates.values())


def _gates_passed(state: ServingState) -> str:
    return f"{gates_passed(state)}/{len(state.gates)}" if state.gates else "-"
