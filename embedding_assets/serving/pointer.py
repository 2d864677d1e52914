"""The serving pointer: which model version and Lance table version answer queries, with its history.

The pointer is one JSON file replaced atomically (write to a temp file, fsync, rename); every
promotion and rollback is then appended to a JSON-lines history, so the way back is always known.

A crash between the two leaves the pointer one move ahead of its history, and one while appending leaves
a torn last line: the next writer, under the lock, completes the history first (`recover`). A pointer
file that is missing or damaged while the history holds states is read as the history's last state, so
queries go on; `damage()` names what is wrong and `recover` rewrites it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from embedding_assets import faults, locations

POINTER_FILE = "pointer.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"


class ServingState(BaseModel):
    """What serves: a model version pinned to one Lance table version (and the tag naming it)."""

    version: str
    model_fingerprint: str
    pipeline_config_hash: str
    table: str
    table_version: int
    table_committed_at: datetime | None = Field(None, description="commit time of that table version")
    lance_tag: str
    rows: int
    action: str = Field(
        "promote",
        description="promote, refresh (same version, newer table), optimize (same rows, maintained index) "
        "or rollback",
    )
    run_id: str | None = None
    gates: dict = Field(default_factory=dict, description="summary of the checks that allowed this state")
    judged_table_version: int | None = Field(
        None,
        description="the table version its gates judged, when this state serves the same rows at another "
        "(optimize); None: table_version itself",
    )
    overrides: dict = Field(default_factory=dict, description="threshold overrides in force, with reasons")
    seq: int = Field(0, description="position in the history")
    supersedes: int | None = Field(None, description="history position of the state this one replaced")
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    since: datetime | None = Field(None, description="when this version began serving (kept by refreshes)")

    @property
    def serving_since(self) -> datetime:
        return self.since or self.at

    @property
    def judged_version(self) -> int:
        """The table version whose rows its gates judged: this one, or the one it was maintained from."""
        return self.judged_table_version or self.table_version


class NothingServedError(RuntimeError):
    """No version has been promoted yet."""


class PointerDamagedError(RuntimeError):
    """A line inside the serving history is damaged: the way back cannot be trusted until it is restored."""


class NothingToRollBackError(RuntimeError):
    """The served state replaced nothing, so there is nowhere to go back to."""


class ServingMovedError(RuntimeError):
    """Another version serves than the one a candidate's gates compared it with: judge it again."""


ANY_SERVED = "*"  # promote(served_when_judged=...): the gates compared with nothing in particular


class ServingPointer:
    """Reads and moves the pointer under a folder (data/serving by default)."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def pointer_path(self) -> Path:
        return self.folder / POINTER_FILE

    @property
    def history_path(self) -> Path:
        return self.folder / HISTORY_FILE

    def current(self) -> ServingState | None:
        """What serves: the pointer file, or, when it is missing or damaged, the history's last state."""
        state = self._pointer_file()
        if isinstance(state, ServingState):
            return state
        history = self.history()
        return history[-1] if history else None

    def require_current(self) -> ServingState:
        state = self.current()
        if state is None:
            raise NothingServedError("nothing is served yet: materialize and promote a version first")
        return state

    def history(self) -> list[ServingState]:
        """Every state served, oldest first; a torn last line (a crash while appending) is left out, a
        damaged line before it raises PointerDamagedError."""
        states, torn = self._history_lines()
        if torn is not None and torn < len(states):
            raise PointerDamagedError(
                f"{self.history_path} line {torn + 1} is damaged: run `embedding-assets repair`"
            )
        return [s for s in states if s is not None]

    def damage(self) -> list[str]:
        """What is wrong with the pointer and its history, each as a sentence; empty when both are sound."""
        found: list[str] = []
        pointer = self._pointer_file()
        states, torn = self._history_lines()
        if isinstance(pointer, str):
            if states:
                found.append(
                    f"{pointer}; queries are served from the history's last state (#{len(states) - 1})"
                )
            elif pointer != "missing":
                found.append(pointer)
        if torn is not None:
            where = (
                "its last line, torn by a crash while appending"
                if torn == len(states)
                else f"line {torn + 1}"
            )
            found.append(f"{self.history_path}: {where} is not a serving state")
        if isinstance(pointer, ServingState) and pointer.seq == len(states):
            found.append(
                f"{self.history_path} lacks the served state's line (#{pointer.seq}): a move cut short"
            )
        return found

    def _pointer_file(self) -> ServingState | str:
        """The pointer file's state, or why there is none ('missing' when it was never written)."""
        try:
            text = self.pointer_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return f"{self.pointer_path} is missing" if self.history_path.exists() else "missing"
        try:
            return ServingState.model_validate_json(text)
        except ValidationError as exc:
            return f"{self.pointer_path} is damaged ({exc.error_count()} problems, {len(text)} bytes)"

    def _history_lines(self) -> tuple[list[ServingState | None], int | None]:
        """The history's states by line (None for a line that does not parse) and the first such line."""
        try:
            lines = [
                line for line in self.history_path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        except FileNotFoundError:
            return [], None
        states: list[ServingState | None] = []
        torn = None
        for i, line in enumerate(lines):
            try:
                states.append(ServingState.model_validate_json(line).model_copy(update={"seq": i}))
            except ValidationError:
                states.append(None)
                torn = i if torn is None else torn
        if torn == len(lines) - 1:
            states.pop()  # a torn last line: the crash signature, not part of the history
        return states, torn

    def previous(self) -> ServingState | None:
        """The state the served one replaced: where a rollback goes."""
        current = self.current()
        if current is None or current.supersedes is None:
            return None
        return self.history()[current.supersedes]

    def promote(self, state: ServingState, served_when_judged: str | None = ANY_SERVED) -> ServingState:
        """Serve `state`, remembering the state it replaces; a newer table of the served version is a
        refresh, which keeps the way back (and the serving start) of the state it refreshes.

        `served_when_judged` is the version the gates compared `state` with (None: nothing served then).
        If another version serves now (a rollback or a promotion since), the verdict is stale and the move
        is refused with ServingMovedError, decided under the lock."""
        with self.locked():
            current = self.current()
            now = current.version if current else None
            moved = served_when_judged != ANY_SERVED and now not in (served_when_judged, state.version)
            if moved:
                raise ServingMovedError(
                    f"the gates judged {state.version} against {served_when_judged or 'nothing served'}, "
                    f"but {now or 'nothing'} serves now: run its gates again before promoting it"
                )
            return self._promoted(current, state)

    def _promoted(self, current: ServingState | None, state: ServingState) -> ServingState:
        """Serve `state` in place of `current`; the caller holds the lock."""
        if current is not None and current.version == state.version:
            update = {"action": "refresh", "supersedes": current.supersedes, "since": current.serving_since}
        else:
            update = {"supersedes": current.seq if current else None, "since": state.at}
        return self._append(state.model_copy(update=update))

    def refresh(self, state: ServingState) -> ServingState | None:
        """Serve `state`, a newer table of a version, only if that version still serves: a refresh never
        moves serving back to a version a promotion or rollback replaced while it ran. None if not."""
        with self.locked():
            current = self.current()
            if current is None or current.version != state.version:
                return None
            return self._promoted(current, state)

    def follow(self, expected: ServingState, state: ServingState, action: str) -> bool:
        """Serve `state`, the same rows as `expected` at another table version of the same version (an
        optimized one), if `expected` is still what serves; it keeps expected's gate record (and the table
        version it judged), overrides, serving start and way back. Whether the pointer moved."""
        with self.locked():
            current = self.current()
            if current is None or current.seq != expected.seq:
                return False
            kept = {k: getattr(current, k) for k in ("gates", "overrides", "supersedes")}
            update = {
                **kept,
                "judged_table_version": current.judged_version,
                "since": current.serving_since,
                "action": action,
            }
            self._append(state.model_copy(update=update))
            return True

    def rollback(
        self, run_id: str | None = None, refreshed: ServingState | None = None
    ) -> tuple[ServingState, ServingState]:
        """Serve again the state the current one replaced; return (now served, rolled back from).

        `refreshed` is that version at a newer, gated table version (kept fresh by dual writes) to serve
        instead of the exact old one (ignored if serving moved since it was chosen). Repeated rollbacks
        walk further back, not back and forth.
        """
        with self.locked():
            current = self.require_current()
            target = self.previous()
            if target is None:
                raise NothingToRollBackError(f"{current.version} (history #{current.seq}) replaced nothing")
            if refreshed is not None and refreshed.version != target.version:
                refreshed = None
            return self._append(self._rolled_back(target, refreshed, run_id)), current

    @staticmethod
    def _rolled_back(
        target: ServingState, refreshed: ServingState | None, run_id: str | None
    ) -> ServingState:
        now = datetime.now(UTC)
        return (refreshed or target).model_copy(
            update={
                "action": "rollback",
                "run_id": run_id,
                "at": now,
                "since": now,
                "supersedes": target.supersedes,
            }
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock: promotions and rollbacks, from any process, one at a time. A
        move a crash interrupted is completed first (`recover`)."""
        with self._lock():
            self._recover()
            yield

    def recover(self) -> list[str]:
        """Make the pointer and its history whole again, under the lock; what was wrong (`damage()`)."""
        with self._lock():
            return self._recover()

    def _lock(self) -> AbstractContextManager[None]:
        return locations.exclusive(self.folder / LOCK_FILE)

    def _recover(self) -> list[str]:
        """Drop a torn last history line, append the pointer's line if a crash left it out, and rewrite a
        missing or damaged pointer from the history's last state. The caller holds the lock."""
        found = self.damage()
        if not found:
            return found
        states, torn = self._history_lines()
        if torn is not None and torn < len(states):
            raise PointerDamagedError(
                f"{self.history_path} line {torn + 1} is damaged; restore it from a backup"
            )
        if torn is not None:
            self._write_atomically(self.history_path, "".join(s.model_dump_json() + "\n" for s in states))
        pointer = self._pointer_file()
        if isinstance(pointer, ServingState) and pointer.seq == len(states):
            self._append_history(pointer)
        elif not isinstance(pointer, ServingState) and states:
            self._write_atomically(
                self.pointer_path, json.dumps(states[-1].model_dump(mode="json"), indent=2)
            )
        return found

    def move_to(self, state: ServingState) -> ServingState:
        """Atomically point at `state` and append it to the history (under the lock)."""
        with self.locked():
            return self._append(state)

    def _append(self, state: ServingState) -> ServingState:
        """Replace the pointer with `state`, then append it to the history; the caller holds the lock."""
        state = state.model_copy(update={"seq": len(self.history())})
        self._write_atomically(self.pointer_path, json.dumps(state.model_dump(mode="json"), indent=2))
        faults.failpoint(faults.POINTER_MOVED)
        self._append_history(state)
        return state

    def _append_history(self, state: ServingState) -> None:
        history = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(history, "a", encoding="utf-8") as f:
            f.write(state.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_atomically(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.stem}-", suffix=path.suffix)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
