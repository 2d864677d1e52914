"""Shadow traffic's parts: which queries are mirrored, and the log beside the serving history (the
service mirroring to a candidate and the gate holding its promotion: test_gates)."""

from embedding_assets.serving.shadow import ShadowLog, ShadowRecord, shadowed


def test_the_mirrored_share_is_a_stable_choice_by_query():
    queries = [f"query {i}" for i in range(4000)]
    picked = [q for q in queries if shadowed(q, 0.25)]
    assert 0.22 < len(picked) / len(queries) < 0.28
    assert picked == [q for q in queries if shadowed(q, 0.25)]  # the same queries every time
    assert all(shadowed(q, 1.0) for q in queries)


def _record(candidate: str, fingerprint: str, served: str, top1: bool) -> ShadowRecord:
    return ShadowRecord(
        "2026-12-04T00:00:00+00:00", "0" * 64, served, 3, candidate, fingerprint, 5, top1, 0.5, 9.0
    )


def test_agreement_counts_only_the_pinned_weights_against_what_serves(tmp_path, registry):
    """Records of other weights (a re-pinned candidate) or against another served version do not count;
    a line torn by a crash is skipped."""
    candidate = registry.get("minilm-l6-v2-hybrid")
    log = ShadowLog(tmp_path)
    pinned = candidate.pinned_fingerprint()
    for record in [
        _record(candidate.id, pinned, "minilm-l6-v2", True),
        _record(candidate.id, pinned, "minilm-l6-v2", False),
        _record(candidate.id, "sha256:" + "1" * 64, "minilm-l6-v2", True),  # other weights
        _record(candidate.id, pinned, "minilm-l6-v2-static256", True),  # against another version
    ]:
        log.append(record)
    with open(log.path(candidate.id), "a") as torn:
        torn.write('{"at": "2026-12-04T00:0')
    seen = log.agreement(candidate, "minilm-l6-v2")
    assert seen["shadow_queries"] == 2 and seen["top1_agreement"] == 0.5 and seen["mean_overlap@10"] == 0.5
    assert log.agreement(candidate, "paraphrase-minilm-l3-v2") == {"shadow_queries": 0}
