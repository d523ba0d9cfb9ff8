"""infer: the inference workers — batching, the model run, its health, and the fail-safe on every frame."""
