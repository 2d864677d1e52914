"""The corpus asset: documents mirrored from the source, with a diff and a quarantine list."""

import dagster as dg

from embedding_assets.freshness import freshness_policy
from embedding_assets.pipeline.corpus import sync_corpus
from embedding_assets.resources import CorpusSourceResource, LanceDBResource

EXAMPLES = 10


@dg.asset(group_name="ingest", kinds={"lancedb"}, freshness_policy=freshness_policy())
def corpus(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, corpus_source: CorpusSourceResource
) -> dg.MaterializeResult:
    """Source documents (id, text, checksum, updated_at) mirrored into the `documents` table."""
    source = corpus_source.source()
    sync = sync_corpus(lancedb.connect(), source)
    for q in sync.quarantined:
        context.log.warning(f"quarantined {q.doc_id}: {q.reason}")
    quarantine = "\n".join(f"| `{q.doc_id}` | {q.reason} |" for q in sync.quarantined[:EXAMPLES])
    return dg.MaterializeResult(
        metadata={
            "source": source.uri,
            "documents": sync.documents,
            "docs_added": len(sync.added),
            "docs_changed": len(sync.changed),
            "docs_deleted": len(sync.deleted),
            "docs_quarantined": len(sync.quarantined),
            "quarantine": dg.MetadataValue.md(
                f"| doc_id | reason |\n|---|---|\n{quarantine}" if quarantine else "nothing quarantined"
            ),
            "lance_table_version": sync.table_version,
            **_change_capture(source),
        }
    )


def _change_capture(source) -> dict:
    """The replication position a change-capture source read up to (advanced only after indexing)."""
    if not hasattr(source, "end_lsn"):
        return {}
    return {
        "cdc_end_lsn": source.end_lsn or "",
        "cdc_changes": source.changes,
        "cdc_snapshot": source.complete,
    }
