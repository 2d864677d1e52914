"""A damaged serving pointer or history is named, read around where it can be, and made whole by the next
writer (or `recover`): the faults a crash or a bad disk leaves in the serving folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedding_assets.serving.pointer import PointerDamagedError, ServingPointer
from embedding_assets_tests.test_pointer_lock import _state


@pytest.fixture
def pointer(tmp_path: Path) -> ServingPointer:
    """Three moves: v1, v2, then v2 at a newer table version."""
    pointer = ServingPointer(tmp_path / "serving")
    for version, table_version in (("v1", 1), ("v2", 1), ("v2", 2)):
        pointer.promote(_state(version, table_version))
    assert pointer.damage() == []
    return pointer


def served(pointer: ServingPointer) -> tuple[str, int, int]:
    state = pointer.require_current()
    return state.version, state.table_version, state.seq


def test_a_deleted_pointer_serves_the_last_history_state_until_recovered(pointer: ServingPointer):
    pointer.pointer_path.unlink()
    assert served(pointer) == ("v2", 2, 2)
    assert "is missing; queries are served from the history's last state (#2)" in pointer.damage()[0]
    assert pointer.recover() and pointer.damage() == [] and served(pointer) == ("v2", 2, 2)


@pytest.mark.parametrize("torn", [b"", b'{"version": "v2", "table_ver', b"\x00" * 4096])
def test_a_torn_pointer_is_read_around_and_rewritten(pointer: ServingPointer, torn: bytes):
    pointer.pointer_path.write_bytes(torn)
    assert served(pointer) == ("v2", 2, 2)
    assert "pointer.json is damaged" in pointer.damage()[0]
    pointer.recover()
    assert pointer.damage() == [] and pointer.pointer_path.read_bytes() != torn


def test_a_torn_last_history_line_is_dropped_by_the_next_move(pointer: ServingPointer):
    with open(pointer.history_path, "a", encoding="utf-8") as f:
        f.write('{"version": "v3", "model_fin')  # a crash while appending (the pointer file went first)
    assert [s.seq for s in pointer.history()] == [0, 1, 2]
    assert "its last line, torn by a crash while appending" in pointer.damage()[0]
    moved = pointer.promote(_state("v3", 1))
    assert moved.seq == 3 and moved.supersedes == 2 and pointer.damage() == []
    assert [s.version for s in pointer.history()] == ["v1", "v2", "v2", "v3"]


def test_a_move_whose_history_line_is_missing_is_completed(pointer: ServingPointer):
    lines = pointer.history_path.read_text().splitlines(keepends=True)
    pointer.history_path.write_text("".join(lines[:-1]))  # the crash between pointer and history
    assert "lacks the served state's line (#2)" in pointer.damage()[0]
    assert served(pointer) == ("v2", 2, 2)
    rolled, current = pointer.rollback()
    assert (current.seq, rolled.version, rolled.seq) == (2, "v1", 3) and pointer.damage() == []


def test_a_damaged_line_inside_the_history_stops_moves_and_says_where(pointer: ServingPointer):
    lines = pointer.history_path.read_text().splitlines(keepends=True)
    pointer.history_path.write_text(lines[0] + "not json\n" + "".join(lines[2:]))
    assert served(pointer) == ("v2", 2, 2)  # the pointer itself is whole: queries go on
    assert "line 2 is not a serving state" in pointer.damage()[0]
    with pytest.raises(PointerDamagedError, match="line 2 is damaged"):
        pointer.promote(_state("v3", 1))
