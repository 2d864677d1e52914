"""The hook every job's steps run after they end, whether they succeeded or failed."""

import dagster as dg

from embedding_assets.memory import release_unused, resident_gib

LOGGED_RELEASE_GIB = 0.1  # a release this large is logged (each log line is an event the run stores)
# A step that left the process at most this much larger than the last release left it is not released
# after: a gate step grows it by megabytes, and a release (a collection, a trim) would hand back nothing.
RELEASE_AFTER_GROWTH_GIB = 0.05
RELEASE_MEMORY = "release_memory"

_released_at_gib: float | None = None  # resident size after this process's last release


def release_memory_after_step(
    context: dg.HookContext, _events: list[dg.DagsterEvent]
) -> dg.HookExecutionResult:
    """Hand what the step freed back to the operating system, so the next step of an in-process run
    starts from what is still in use (see `embedding_assets.memory`); skipped after a step that did not
    grow the process. One hook for success and failure: a run stores one event per step for it."""
    global _released_at_gib
    before = resident_gib()
    if (
        before is not None
        and _released_at_gib is not None
        and before - _released_at_gib < RELEASE_AFTER_GROWTH_GIB
    ):
        return dg.HookExecutionResult(hook_name=RELEASE_MEMORY, is_skipped=True)
    release_unused()
    _released_at_gib = after = resident_gib()
    if before is not None and after is not None and before - after >= LOGGED_RELEASE_GIB:
        context.log.info(f"after {context.step_key}: {before} GiB resident, {after} once released")
    return dg.HookExecutionResult(hook_name=RELEASE_MEMORY, is_skipped=False)


STEP_HOOKS = {dg.HookDefinition(name=RELEASE_MEMORY, hook_fn=release_memory_after_step)}
