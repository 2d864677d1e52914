"""Promotions and rollbacks from several processes at once never interleave: every history line keeps the
sequence number of its place, follows from the line before it, and the pointer is the last line."""

import json
import multiprocessing
from pathlib import Path

from embedding_assets.serving.pointer import NothingToRollBackError, ServingPointer, ServingState

PROCESSES = 4
MOVES = 40


def _state(version: str, table_version: int) -> ServingState:
    return ServingState(
        version=version,
        model_fingerprint="sha256:" + "0" * 64,
        pipeline_config_hash="h",
        table=f"index__{version}",
        table_version=table_version,
        lance_tag=f"served-{version}-v{table_version}",
        rows=1,
    )


def _mover(folder: str, worker: int) -> None:
    pointer = ServingPointer(Path(folder))
    for i in range(MOVES):
        if i % 5 == 4 and pointer.previous() is not None:
            try:
                pointer.rollback(run_id=f"w{worker}-{i}")
                continue
            except NothingToRollBackError:  # another process moved the pointer meanwhile: promote instead
                pass
        pointer.promote(_state(f"v{(worker + i) % 3}", i))


def _follows(lines: list[dict], k: int) -> bool:
    """Line k is what a promote, refresh or rollback computes from line k - 1 (so it read that line)."""
    line, prev = lines[k], lines[k - 1]
    if line["action"] == "rollback":
        target = prev["supersedes"]
        return target is not None and (line["version"], line["supersedes"]) == (
            lines[target]["version"],
            lines[target]["supersedes"],
        )
    if line["action"] == "refresh":
        return line["version"] == prev["version"] and line["supersedes"] == prev["supersedes"]
    return line["version"] != prev["version"] and line["supersedes"] == k - 1


def test_concurrent_moves_keep_history_and_pointer_consistent(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_mover, args=(str(tmp_path), w)) for w in range(PROCESSES)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(lines) == PROCESSES * MOVES
    assert [line["seq"] for line in lines] == list(range(len(lines)))  # no two moves took the same place
    assert [k for k in range(1, len(lines)) if not _follows(lines, k)] == []  # none acted on a stale state
    assert {line["action"] for line in lines} == {"promote", "refresh", "rollback"}
    assert json.loads((tmp_path / "pointer.json").read_text()) == lines[-1]
    assert (tmp_path / ".lock").stat().st_mode & 0o077 == 0
