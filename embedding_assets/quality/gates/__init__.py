"""The gates a version's index must pass before it may serve, as plain functions over LanceDB."""
