"""Partitions: pinned embedding model versions (kept in sync with the registry), and for a sharded
backfill, model version × corpus shard."""

import warnings

import dagster as dg

from embedding_assets.index.shards import shard_keys

VERSION_DIMENSION = "model_version"
SHARD_DIMENSION = "shard"

model_versions = dg.DynamicPartitionsDefinition(name="model_versions")

# A version's asset reads every shard of that version; a shard reads its version's partition.
with warnings.catch_warnings():  # beta in Dagster 1.13, and the mapping this layout needs
    warnings.simplefilter("ignore", dg.BetaWarning)
    BY_VERSION = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=VERSION_DIMENSION)


def version_shards(count: int) -> dg.MultiPartitionsDefinition:
    """Model version × corpus shard (`0-of-N` ... `N-1-of-N`), for `count` shards."""
    return dg.MultiPartitionsDefinition(
        {
            VERSION_DIMENSION: model_versions,
            SHARD_DIMENSION: dg.StaticPartitionsDefinition(shard_keys(count)),
        }
    )


def shard_partition(version_id: str, shard_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({VERSION_DIMENSION: version_id, SHARD_DIMENSION: shard_key})


def shards_of(partitions_def: dg.MultiPartitionsDefinition) -> list[str]:
    """The shard keys of a version × shard partitions definition."""
    return partitions_def.get_partitions_def_for_dimension(SHARD_DIMENSION).get_partition_keys()
