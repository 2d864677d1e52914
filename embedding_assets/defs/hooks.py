"""Hooks every job's steps run after they end."""

import dagster as dg

from embedding_assets.memory import release_unused, resident_gib

LOGGED_RELEASE_GIB = 0.1  # a release this large is logged (each log line is an event the run stores)


def _release_memory(context: dg.HookContext) -> None:
    """Hand what the step freed back to the operating system, so the next step of an in-process run
    starts from what is still in use (see `embedding_assets.memory`)."""
    before = resident_gib()
    release_unused()
    after = resident_gib()
    if before is not None and after is not None and before - after >= LOGGED_RELEASE_GIB:
        context.log.info(f"after {context.step_key}: {before} GiB resident, {after} once released")


STEP_HOOKS = {
    dg.success_hook(name="release_memory_after_success")(_release_memory),
    dg.failure_hook(name="release_memory_after_failure")(_release_memory),
}
