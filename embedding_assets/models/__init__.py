"""Model versions: the registry that pins them, fingerprints, embedders, pinning and built models."""
