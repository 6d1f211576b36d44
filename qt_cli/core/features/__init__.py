"""Features: the declarative catalog, the named feature sets and the incremental engine."""
