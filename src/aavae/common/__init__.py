"""What every layer uses and that knows nothing of the rest of the project (docs/architecture.md
lists its modules)."""
