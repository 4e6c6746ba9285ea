"""Stage 5, tracking: the MLflow client bound to the store (client), a parent run per invocation and
a child per trial (publish), what produced a number (provenance), `make ui` and `make server` (ui)."""
