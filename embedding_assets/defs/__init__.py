"""The Dagster objects: partitions, resources, assets by stage, checks, jobs, schedules and sensors."""
