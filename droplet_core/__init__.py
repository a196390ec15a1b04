"""Droplet core: probabilistic fitting of droplet microscopy images (no Streamlit here)."""

import os

__version__ = "0.1.0"

# A fit compiles its model once and then runs for seconds, so compile time matters as much
# as run time: LLVM's level 1 compiles about a third faster with no slower steps
# (bench/xla_flags.py). XLA reads its flags when JAX first starts a backend, which is after
# this import; a level the user set is kept.
_COMPILE_FLAG = "--xla_backend_optimization_level"
if _COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_COMPILE_FLAG}=1".strip()
