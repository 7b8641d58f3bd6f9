"""Built-in datasets: one module per plugin; each registers itself on import."""
