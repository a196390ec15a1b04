"""What a result records about how it was made: the JAX device and library versions.

Kept apart from the fit engine so that light commands (``detect``) record the same
without importing numpyro.
"""

from __future__ import annotations

import platform
from importlib.metadata import version

import jax

import droplet_core

# Installed distributions whose versions decide a result (read without importing them).
LIBRARIES = ("jax", "jaxlib", "numpyro", "flax", "optax", "numpy")


def jax_device_description() -> str:
    """The device JAX computes on, e.g. ``"cpu:0 (cpu)"`` or ``"gpu:0 (NVIDIA H100)"``."""
    device = jax.devices()[0]
    return f"{device.platform}:{device.id} ({device.device_kind})"


def library_versions() -> dict:
    """Versions of droplet_core, Python and the ``LIBRARIES``."""
    return {
        "droplet_core": droplet_core.__version__,
        "python": platform.python_version(),
        **{name: version(name) for name in LIBRARIES},
    }
