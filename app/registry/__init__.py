"""The model registry: registered models with immutable versions, aliases with their history, and gates."""
