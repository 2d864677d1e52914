"""A PostgreSQL server for the change-capture tests: the configured one, or a throwaway one (and the
start/stop harness the throwaway-server scripts share)."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "throwaway-postgres"
INITDB = Path("/usr/lib/postgresql/15/bin/initdb")


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names a server to use instead of a throwaway one."""
    return bool(environ.get("EMBEDDING_ASSETS_PG_HOST") or environ.get("PGHOST"))


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME=value` lines, as the script prints them, into a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def run_script(*args: str | Path, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([script, *map(str, args)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


@contextmanager
def script_server(script: Path, root: Path) -> Iterator[dict[str, str]]:
    """Start the throwaway server of `script` (start DIR PORT / stop DIR) in `root` on a free loopback
    port; yield the variables it exports; stop it and remove `root`."""
    try:
        yield parse_exports(run_script("start", root, str(free_port()), script=script).stdout)
    finally:
        run_script("stop", root, script=script)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def throwaway_server() -> Iterator[dict[str, str]]:
    """Start a server in a fresh folder under /tmp (reachable by the postgres user when run as root; a
    short path keeps the unix socket name legal); yield its connection variables; stop and remove it."""
    root = Path(tempfile.mkdtemp(prefix="ea-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    with script_server(SCRIPT, root) as env:
        yield env
