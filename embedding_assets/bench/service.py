"""The search service under load: `embedding-assets serve` in a process of its own on loopback, queried
by 1, 10 and 50 concurrent clients (threads, one kept-alive connection each) with distinct queries, so
no answer comes from the query cache. Latency is each request's round trip as its client saw it."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from urllib.parse import quote

import numpy as np

from embedding_assets.bench.pipeline import BIN
from embedding_assets.serving.service import LOOPBACK

CLIENTS = {1: 100, 10: 300, 50: 500}  # concurrent clients -> queries in all
QUERY_WORDS = 12
K = 10
STARTUP_SECONDS = 180


def distinct_queries(paragraphs: list[str], count: int) -> list[str]:
    """`count` distinct queries: the first QUERY_WORDS words of distinct paragraphs."""
    queries = list(dict.fromkeys(" ".join(p.split()[:QUERY_WORDS]) for p in paragraphs))
    if len(queries) < count:
        raise ValueError(f"{len(queries)} distinct queries, {count} needed")
    return queries[:count]


def measure(env: dict, paragraphs: list[str], clients: dict[int, int] = CLIENTS) -> dict:
    """Start the service on a free port of the deployment `env`, and query it at each concurrency."""
    port = _free_port()
    process = subprocess.Popen(
        [BIN / "embedding-assets", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_up(port, process)
        queries = iter(distinct_queries(paragraphs, sum(clients.values()) + 1))
        _query(http.client.HTTPConnection(LOOPBACK, port, timeout=60), next(queries))  # warm
        levels = []
        for concurrency, total in clients.items():
            levels.append(_load(port, concurrency, [next(queries) for _ in range(total)]))
        return {"k": K, "levels": levels}
    finally:
        process.terminate()
        process.wait(30)


def _load(port: int, concurrency: int, queries: list[str]) -> dict:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    work = iter(queries)

    def client() -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
        while True:
            with lock:
                query = next(work, None)
            if query is None:
                return
            started = time.perf_counter()
            ok = _query(connection, query)
            with lock:
                latencies.append(time.perf_counter() - started)
                failures[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": concurrency,
        "queries": len(latencies),
        "failed": failures[0],
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
        "queries_per_second": round(len(latencies) / seconds, 1),
    }


def _query(connection: http.client.HTTPConnection, query: str) -> bool:
    connection.request("GET", f"/search?q={quote(query)}&k={K}")
    response = connection.getresponse()
    body = json.loads(response.read())
    return response.status == 200 and len(body["hits"]) == K


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedding-assets serve exited: {process.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"embedding-assets serve did not answer within {STARTUP_SECONDS} s")


def markdown(report: dict) -> list[str]:
    lines = [
        "## The search service",
        "",
        "`embedding-assets serve` on loopback, the shipped corpus served by MiniLM; each client a thread "
        f"with one kept-alive connection, every query distinct (no cache hit), k = {report['k']}. Latency "
        "includes encoding the query.",
        "",
        "| clients | queries | failed | p50 (ms) | p95 (ms) | max (ms) | queries/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in report["levels"]:
        lines.append(
            f"| {level['clients']} | {level['queries']} | {level['failed']} | {level['p50_ms']} | "
            f"{level['p95_ms']} | {level['max_ms']} | {level['queries_per_second']} |"
        )
    return [*lines, ""]
