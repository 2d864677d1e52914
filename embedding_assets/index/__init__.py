"""Chunking, the embedding cache and the index rows, as plain functions over LanceDB tables."""
