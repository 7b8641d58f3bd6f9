"""Built-in models: one module per plugin; each registers itself on import."""
