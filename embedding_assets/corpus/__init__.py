"""Where documents come from (folder, BEIR, PostgreSQL change capture) and the corpus stage."""
