"""The registry of model variants: which names exist, where each is implemented, and which
channels it fits.

Light on purpose (no JAX): settings, the command line and the app list and check variant
names without loading a model. A variant's module implements ``droplet_core.models.Variant``
and is imported only when a fit needs it (``load_variant``). A new variant is one module
plus one ``register_variant`` call; no other module changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class VariantEntry:
    """A registered variant: its ``name`` (``FitSettings.model``), the import path of its
    ``module`` and whether it fits all colour channels at once (``all_channels``, channel
    ``"rgb"``) or one channel."""

    name: str
    module: str
    all_channels: bool = False


_REGISTRY: dict[str, VariantEntry] = {}


def register_variant(name: str, module: str, *, all_channels: bool = False) -> None:
    """Make the variant ``name``, implemented by the module at import path ``module``,
    available to fits, settings and the command line."""
    _REGISTRY[name] = VariantEntry(name, module, all_channels)


def variant_names() -> tuple[str, ...]:
    """The registered variant names, the built-in ones first."""
    return tuple(_REGISTRY)


def variant_entry(name: str) -> VariantEntry:
    """The registry entry of ``name``; ValueError (one line) for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def load_variant(name: str) -> ModuleType:
    """The module implementing the variant ``name`` (imported on first use)."""
    return importlib.import_module(variant_entry(name).module)


register_variant("gaussian", "droplet_core.models.gaussian")
register_variant("templates", "droplet_core.models.templates")
register_variant("neural", "droplet_core.models.neural", all_channels=True)
