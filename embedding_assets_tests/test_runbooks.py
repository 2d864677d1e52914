"""Every runbook in docs/runbooks is walked end to end: its bash blocks, in order, as one script with the
project's environment active, on a real deployment brought into the runbook's situation first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedding_assets import locations
from embedding_assets.index import store, tables
from embedding_assets_tests.deployments import FIRST, REFRESH, SECOND, Deployment

pytestmark = pytest.mark.slow
RUNBOOKS = locations.PROJECT_ROOT / "docs" / "runbooks"
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
NOTE = "notes/runbook.md"
NOTE_TEXT = "# Kestrel roost\n\nThe kestrel roost sits under the water tower's north ledge all winter.\n"


def bash_blocks(runbook: Path) -> list[str]:
    return BASH_BLOCK.findall(runbook.read_text())


def add_note(deployment: Deployment) -> None:
    path = locations.corpus_dir(deployment.root) / NOTE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NOTE_TEXT)


def damage_newest_index_file(deployment: Deployment) -> None:
    """A refresh writes the note's rows, then their data file is deleted (the served version's)."""
    add_note(deployment)
    deployment.cli(REFRESH)
    folder = locations.lancedb_dir(deployment.root) / f"{tables.index_table(FIRST)}.lance" / "data"
    max(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns).unlink()


SITUATIONS = {  # runbook -> (what is done to the deployment first, variables the runbook reads)
    "stale-embeddings.md": (add_note, {}),
    "model-migration.md": (lambda d: None, {"VERSION": SECOND}),  # the same encoder: nothing to encode
    "partial-corruption.md": (damage_newest_index_file, {}),
    "full-reindex.md": (lambda d: None, {"NEW": "minilm-l6-v2-r2"}),
}


def test_every_runbook_has_a_walk_and_real_commands():
    assert {p.name for p in RUNBOOKS.glob("*.md")} == set(SITUATIONS)
    for runbook in RUNBOOKS.glob("*.md"):
        commands = [line for block in bash_blocks(runbook) for line in block.splitlines() if line.strip()]
        assert commands and any("embedding-assets" in c for c in commands), runbook.name


@pytest.mark.parametrize("name", sorted(SITUATIONS))
def test_a_runbook_walks_end_to_end(deployment_bases, tmp_path: Path, name: str):
    deployment = Deployment(tmp_path / "deployment", deployment_bases["served"])
    prepare, variables = SITUATIONS[name]
    prepare(deployment)
    script = "set -euo pipefail\n" + "\n".join(bash_blocks(RUNBOOKS / name))
    env = {
        **deployment.env,
        **variables,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    started = time.perf_counter()
    walked = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - started
    assert walked.returncode == 0, (
        f"{name}: exit {walked.returncode}\n{walked.stdout[-3000:]}\n{walked.stderr[-3000:]}"
    )
    served = deployment.pointer().require_current()
    if name == "model-migration.md":
        assert "promoted" in walked.stdout and served.version == FIRST  # promoted, then rolled back
    elif name == "full-reindex.md":
        assert served.version == variables["NEW"]
    else:  # the note the situation added is served again
        table = store.connect(locations.lancedb_dir(deployment.root)).open_table(served.table)
        table.checkout(served.table_version)
        assert served.version == FIRST and NOTE in table.to_arrow()["doc_id"].to_pylist()
    assert deployment.pointer().damage() == []
    if report := os.environ.get("RUNBOOK_REPORT"):  # how long each takes, for a closing note
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"runbook": name, "seconds": round(seconds, 1)}) + "\n")
