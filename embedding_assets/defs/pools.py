"""Concurrency pools around what only one step may write at a time; their limits are instance config
(`concurrency: pools:` in dagster.yaml). Version tables take one writer each through a run tag limit on
the partition instead, since a pool cannot be keyed by partition."""

SERVING_POINTER = "serving_pointer"  # promotion and rollback: one serving move at a time
DOCUMENTS_TABLE = "documents_table"  # the corpus sync: one writer of the manifest
