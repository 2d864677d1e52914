"""What the gates measure, retrieval evaluation and freshness."""
