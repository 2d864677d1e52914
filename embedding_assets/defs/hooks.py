"""Hooks every job's steps run after they end."""

import dagster as dg

from embedding_assets.memory import release_unused, resident_gib


def _release_memory(context: dg.HookContext) -> None:
    """Hand what the step freed back to the operating system, so the next step of an in-process run
    starts from what is still in use (see `embedding_assets.memory`)."""
    before = resident_gib()
    release_unused()
    context.log.debug(f"after {context.step_key}: {before} GiB resident, {resident_gib()} once released")


STEP_HOOKS = {
    dg.success_hook(name="release_memory_after_success")(_release_memory),
    dg.failure_hook(name="release_memory_after_failure")(_release_memory),
}
