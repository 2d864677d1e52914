"""The one wiring path outside a run: the Definitions' resources, initialized (EnvVars resolved), for the
CLI, the runner, the Python API and tests. Inside a run, Dagster hands the same resources to each op."""

from __future__ import annotations

from dataclasses import dataclass, fields

import dagster as dg

from embedding_assets.defs.resources import (
    CorpusSourceResource,
    GoldenSetResource,
    LanceDBResource,
    ModelRegistryResource,
    ServingResource,
)


@dataclass(frozen=True)
class Wiring:
    """The project's resources, ready to call."""

    lancedb: LanceDBResource
    model_registry: ModelRegistryResource
    corpus_source: CorpusSourceResource
    serving: ServingResource
    golden_set: GoldenSetResource


def project_definitions() -> dg.Definitions:
    """The Definitions of `definitions.py` (deployment choices read from the environment once)."""
    from embedding_assets.definitions import defs

    return defs


def initialized(
    resource: dg.ConfigurableResource, instance: dg.DagsterInstance | None = None
) -> dg.ConfigurableResource:
    """`resource` with its config processed (EnvVars resolved, nested resources initialized)."""
    return _built({"resource": resource}, instance)["resource"]


def wiring(defs: dg.Definitions | None = None, instance: dg.DagsterInstance | None = None) -> Wiring:
    """The resources of `defs` (default: the project's), initialized together for use outside a run;
    `instance`, the Dagster instance at hand, spares making an ephemeral one."""
    resources = (defs or project_definitions()).resources
    return Wiring(**_built({f.name: resources[f.name] for f in fields(Wiring)}, instance))


def _built(resources: dict[str, dg.ConfigurableResource], instance: dg.DagsterInstance | None) -> dict:
    """`resources` initialized in one context. None of the project's resources holds anything to tear
    down, so the initialized copies outlive it. `instance`: the Dagster instance at hand; without one
    Dagster makes an ephemeral instance (an in-memory SQLite with its migrations: 90 ms)."""
    with dg.build_resources(resources, instance=instance) as built:
        return {name: getattr(built, name) for name in resources}
