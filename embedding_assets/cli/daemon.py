"""A dagster-daemon serving the project's workspace on an instance of your choice, for as long as a block
runs: what the benchmarks and the production-instance tests start beside their runs."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedding_assets import locations

STOP_SECONDS = 60


@contextmanager
def dagster_daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run -w workspace.yaml` with `env` (its DAGSTER_HOME names the instance), output
    appended to `log`; stopped with SIGTERM (killed after a minute) when the block ends."""
    with open(log, "a") as out:
        process = subprocess.Popen(
            [
                Path(sys.executable).parent / "dagster-daemon",
                "run",
                "-w",
                locations.PROJECT_ROOT / "workspace.yaml",
            ],
            env=env,
            cwd=locations.PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
