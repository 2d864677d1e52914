"""The serving pointer, promotion, live versions, search and status."""
