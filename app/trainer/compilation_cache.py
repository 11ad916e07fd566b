"""JAX's persistent compilation cache, shared by every trainer and generation server on a host."""
from __future__ import annotations

from pathlib import Path


def use(folder: str) -> None:
    """Point JAX's persistent cache at `folder` ("" leaves it off)."""
    # Most of a short run's start is XLA compiling the same step and sampler as the last run of the
    # same shape; the cache lets every process on the host reuse them.
    if not folder:
        return
    import jax

    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
