"""Droplet core: probabilistic fitting of droplet microscopy images (no Streamlit here)."""

import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# A fit compiles its model once and then runs for seconds, so compile time matters as much
# as run time: LLVM's level 1 compiles about a third faster with no slower steps
# (bench/xla_flags.py). XLA reads its flags when JAX first starts a backend, which is after
# this import; a level the user set is kept.
_COMPILE_FLAG = "--xla_backend_optimization_level"
if _COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_COMPILE_FLAG}=1".strip()

COMPILATION_CACHE_MAX_BYTES = 1 << 30


def use_compilation_cache(folder: str | os.PathLike) -> None:
    """Keep compiled programs in ``folder`` (at most ``COMPILATION_CACHE_MAX_BYTES``), for
    every later process: a refit, another image of a similar size or the next CLI call then
    skips compilation. Takes effect only before this process's first compilation."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Small programs too: a fit also runs dozens of eager operations, each compiled on first use.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


# The cache is on by default. DROPLET_COMPILATION_CACHE picks its folder ("" turns it off);
# otherwise a folder the user set for JAX itself is kept. Set through JAX's environment
# variables, so that importing droplet_core does not import JAX (the app starts without it).
_folder = os.environ.get("DROPLET_COMPILATION_CACHE")
if _folder is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _folder = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "droplet" / "jax")
if _folder == "":
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
elif _folder is not None:
    if "jax" in sys.modules:
        use_compilation_cache(_folder)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _folder
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(COMPILATION_CACHE_MAX_BYTES)
