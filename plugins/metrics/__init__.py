"""Built-in validation metrics (torchmetrics): one module per plugin; each registers itself on import."""
