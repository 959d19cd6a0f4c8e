"""JAX's persistent compilation cache, as the CLI and the benchmarks turn it on."""

import os


def enable_compilation_cache(path: str) -> None:
    """Cache every compiled executable under `path` (created if missing).

    JAX by default only caches programs that took over a second to compile; the CLI
    caches all of them, so a second run of the same config skips compilation
    entirely.
    """
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
