"""The crash tests' reader: queries a deployment's served index in a loop, as an application does, and
records every answer (or error) as a JSON line until a stop file appears. The tests run it on a thread of
their own process; on its own:

    python -m embedding_assets_tests.crash_reader DEPLOYMENT REGISTRY ANSWERS STOP
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

QUERIES = ("how do I read a csv file with a header row", "parse command line options", "json decoding")


def main(root: Path, registry: Path, answers: Path, stop: Path) -> None:
    from embedding_assets import locations
    from embedding_assets.index import store
    from embedding_assets.models.registry import load_registry
    from embedding_assets.serving.pointer import ServingPointer
    from embedding_assets.serving.search import ServedSearch

    served = ServedSearch(
        store.connect(locations.lancedb_dir(root)),
        ServingPointer(locations.serving_dir(root)),
        load_registry(registry),
    )
    with open(answers, "a", encoding="utf-8") as out:
        while not stop.exists():
            for query in QUERIES:
                try:
                    found = served.search(query, 5)
                    record = {
                        "query": query,
                        "version": found.model_version,
                        "table_version": found.table_version,
                        "hits": [(hit["doc_id"], hit["chunk_hash"]) for hit in found.hits],
                    }
                except Exception as exc:  # recorded: the test asserts there are none
                    record = {"query": query, "error": f"{type(exc).__name__}: {exc}"}
                out.write(json.dumps(record) + "\n")
                out.flush()
            time.sleep(0.2)  # about 15 queries a second: CPU left for the writer on two cores


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:5]))
