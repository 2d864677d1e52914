"""The embedding-assets command and the runner that executes the project's jobs from a shell."""
