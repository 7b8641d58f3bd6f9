"""Built-in schedulers: one module per plugin; each registers itself on import."""
