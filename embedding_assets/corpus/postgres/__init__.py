"""A PostgreSQL documents table read by logical decoding: settings, decoding, feed and source."""
