"""Shadow agreement: how a candidate answered live queries mirrored to it (`serving.shadow`), and the gate
that holds its promotion until it has answered the number its registry entry requires."""

from __future__ import annotations

from embedding_assets.models.registry import GateThresholds, ModelVersion
from embedding_assets.quality.gates.outcome import GateOutcome
from embedding_assets.serving.pointer import ServingPointer
from embedding_assets.serving.shadow import ShadowLog


def shadow_agreement(
    version: ModelVersion, pointer: ServingPointer, thresholds: GateThresholds
) -> GateOutcome:
    """Block while fewer shadow queries than `shadow_queries` compared the candidate with the version
    serving now; report their agreement (top-1 match, top-10 overlap) either way."""
    served = pointer.current()
    required = thresholds.shadow_queries
    if served is None or served.version == version.id:
        return GateOutcome(
            "pass", "no other version serves: no live traffic to compare with", {"required": required}
        )
    seen = ShadowLog(pointer.folder).agreement(version, served.version)
    metadata = {"required": required, "compared_with": served.version, **seen}
    count = seen["shadow_queries"]
    if count < required:
        return GateOutcome(
            "block",
            f"{count} of the {required} shadow queries required against {served.version}: mirror live "
            f"traffic with `embedding-assets serve --shadow {version.id}`, then run the gates again",
            metadata,
        )
    if not count:
        return GateOutcome("pass", "no shadow queries (none required)", metadata)
    return GateOutcome(
        "pass",
        f"{count} shadow queries against {served.version}: top-1 agreement {seen['top1_agreement']:.1%}, "
        f"mean top-10 overlap {seen['mean_overlap@10']:.3f}",
        metadata,
    )
