"""Benchmarks: measured side by side in one run, never timed in the tests."""
