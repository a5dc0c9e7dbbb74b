"""Client libraries for the served models (used by clients/, the CLI and the tests)."""
