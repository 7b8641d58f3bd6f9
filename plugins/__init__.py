"""Built-in gradloop plugins, grouped by kind (optimizers, schedulers, models, datasets, losses)."""
