"""One file per model family; each is registered in harness/family/registry.py."""
