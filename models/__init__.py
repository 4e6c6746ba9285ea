"""One file per model family; each is registered in harness/registry.py."""
