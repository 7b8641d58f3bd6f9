"""Built-in losses: one module per plugin; each registers itself on import."""
