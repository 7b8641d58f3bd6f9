"""Built-in optimizers: one module per plugin; each registers itself on import."""
