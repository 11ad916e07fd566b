"""The versions of the training stack that decide what a run does, read from package metadata (no imports)."""
from __future__ import annotations

import platform
from importlib import metadata

# What /workers shows, by the distribution each comes from.
STACK = {"jax": "jax", "jaxlib": "jaxlib", "tunix": "google-tunix", "flax": "flax"}


def stack_versions() -> dict[str, str | None]:
    """Python's version and each installed stack package's (None where one is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name, distribution in STACK.items():
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
