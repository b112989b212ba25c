"""The durable store: SQLite in WAL mode, its schema, the group commit and the store's own threads."""
