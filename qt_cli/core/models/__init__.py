"""Models: bundles (`.qtm`), training, legacy import and the serving core (docs/models.md)."""
