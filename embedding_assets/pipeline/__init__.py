"""The pipeline stages as plain functions over LanceDB; the Dagster assets are thin wrappers."""
