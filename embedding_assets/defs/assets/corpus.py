"""The corpus asset: documents mirrored from the source, with a diff and a quarantine list."""

import dagster as dg

from embedding_assets import metadata as md
from embedding_assets.corpus.sync import sync_corpus
from embedding_assets.defs import pools
from embedding_assets.defs.resources import CorpusSourceResource, LanceDBResource
from embedding_assets.metadata import EXAMPLES
from embedding_assets.quality.gates.outcome import markdown_table


@dg.asset(group_name="ingest", kinds={"lancedb"}, pool=pools.DOCUMENTS_TABLE)
def corpus(
    context: dg.AssetExecutionContext, lancedb: LanceDBResource, corpus_source: CorpusSourceResource
) -> dg.MaterializeResult:
    """Source documents (id, text, checksum, updated_at) mirrored into the `documents` table."""
    source = corpus_source.source()
    sync = sync_corpus(lancedb.connect(), source)
    for q in sync.quarantined:
        context.log.warning(f"quarantined {q.doc_id}: {q.reason}")
    quarantine = [[q.doc_id, q.reason] for q in sync.quarantined[:EXAMPLES]]
    return dg.MaterializeResult(
        metadata={
            "source": source.uri,
            "documents": sync.documents,
            md.DOCS_ADDED: len(sync.added),
            md.DOCS_CHANGED: len(sync.changed),
            md.DOCS_DELETED: len(sync.deleted),
            "docs_quarantined": len(sync.quarantined),
            "quarantine": dg.MetadataValue.md(
                markdown_table(["doc_id", "reason"], quarantine) if quarantine else "nothing quarantined"
            ),
            md.LANCE_TABLE_VERSION: sync.table_version,
            **_change_capture(source),
        }
    )


def _change_capture(source) -> dict:
    """The replication position a change-capture source read up to (advanced only after indexing)."""
    if not hasattr(source, "end_lsn"):
        return {}
    return {
        md.CDC_END_LSN: source.end_lsn or "",
        "cdc_changes": source.changes,
        "cdc_snapshot": source.complete,
    }
