"""The core ring: the request contract and validation errors, settings, paths."""
