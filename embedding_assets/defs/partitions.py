"""The one partition dimension: pinned embedding model versions, kept in sync with the registry."""

import dagster as dg

model_versions = dg.DynamicPartitionsDefinition(name="model_versions")
