"""Concurrency and load (issue 11): `embedding-assets serve` (a process of its own) answers a steady 100
queries a second on loopback while a migration promotes another version and a rollback moves serving
back, each a CLI process: no query fails, every answer comes from a recorded serving state, and once an
answer from a new state has returned, no query started later gets the old one."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from embedding_assets_tests import pg
from embedding_assets_tests.crash_reader import QUERIES
from embedding_assets_tests.deployments import CLI, MIGRATE, ROLLBACK, SECOND, Deployment

pytestmark = pytest.mark.slow
RATE = 100  # queries a second, from CLIENTS threads
CLIENTS = 10


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int
    state: tuple[str, int] | None
    error: str = ""


class Load:
    """CLIENTS threads sending GET /search at RATE in total until stopped."""

    def __init__(self, url: str):
        self.url, self.answers, self.stopping = url, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _client(self, i: int) -> None:
        period, n = CLIENTS / RATE, 0
        start = time.monotonic() + i * period / CLIENTS
        while not self.stopping.is_set():
            time.sleep(max(0.0, start + n * period - time.monotonic()))
            n += 1
            query = QUERIES[(i + n) % len(QUERIES)]
            began = time.monotonic()
            try:
                with urllib.request.urlopen(
                    f"{self.url}/search?q={quote(query)}&k=5", timeout=30
                ) as response:
                    body = json.loads(response.read())
                answer = Answer(
                    began, time.monotonic(), response.status, (body["model_version"], body["table_version"])
                )
            except Exception as exc:  # counted: the test asserts there are none
                answer = Answer(began, time.monotonic(), getattr(exc, "code", 0), None, repr(exc)[:200])
            with self.lock:
                self.answers.append(answer)

    def stop(self) -> list[Answer]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return sorted(self.answers, key=lambda a: a.started)


def switched_atomically(answers: list[Answer], old: tuple, new: tuple, since: float, until: float) -> bool:
    """Among queries started in [since, until): after the first answer from `new` returned, no query
    started later is answered from `old`."""
    window = [a for a in answers if since <= a.started < until]
    first_new = min((a.ended for a in window if a.state == new), default=None)
    return first_new is not None and not any(a.state == old and a.started > first_new for a in window)


def test_serve_at_100_queries_a_second_through_a_promotion_and_a_rollback(deployment_bases, tmp_path: Path):
    deployment = Deployment(tmp_path / "deployment", deployment_bases["served"])
    port = pg.free_port()
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/search?q=warm&k=1", timeout=30).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.2)
        before = deployment.pointer().require_current()
        load = Load(url)
        time.sleep(2)
        migrating = time.monotonic()
        migrated = deployment.cli(MIGRATE)
        promoted = deployment.pointer().require_current()
        time.sleep(2)
        rolling_back = time.monotonic()
        deployment.cli(ROLLBACK)
        rolled = deployment.pointer().require_current()
        time.sleep(2)
        answers = load.stop()
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert migrated["promoted"] and promoted.version == SECOND and rolled.version == before.version
    failed = [a for a in answers if a.status != 200]
    assert failed == [], failed[:5]
    states = {(s.version, s.table_version) for s in deployment.pointer().history()}
    assert {a.state for a in answers} <= states
    old, new = (before.version, before.table_version), (promoted.version, promoted.table_version)
    back = (rolled.version, rolled.table_version)
    assert switched_atomically(answers, old, new, migrating, rolling_back)
    assert switched_atomically(answers, new, back, rolling_back, float("inf"))
    assert answers[-1].state == back
    seconds = answers[-1].started - answers[0].started
    latencies = sorted(a.ended - a.started for a in answers)
    if report := os.environ.get("CONCURRENCY_REPORT"):
        with open(report, "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {
                        "case": "serve at 100 qps through a migration and a rollback",
                        "queries": len(answers),
                        "achieved_qps": round(len(answers) / seconds, 1),
                        "failed": len(failed),
                        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
                        "states_seen": sorted({a.state for a in answers}),
                    }
                )
                + "\n"
            )
