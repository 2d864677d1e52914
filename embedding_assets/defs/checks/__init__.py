"""Asset checks: the gates on each version's index, and the freshness of what is served."""
