"""Frozen, hashable settings and progress records shared by the fit engine, store, CLI and app."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.variants import variant_entry

INITIALIZERS = ("encoder", "log")


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a fit's result; it keys the store and the app's caches.

    Attributes
    ----------
    model : a registered variant (``droplet_core.variants.variant_names()``).
    channel : a name from ``droplet_core.imaging.channels.CHANNELS``; ``"rgb"`` for a variant that
        fits all colour channels at once (``neural``), a single channel for the others.
    downscale : integer block-averaging factor, or 0 for automatic: chosen from the
        droplets' size, which the pyramid detector measures (``droplet_core.detection.scale``).
    droplets : maximum droplet count, or 0 for automatic (the detector's candidates,
        pruned by the fit).
    steps : SVI steps; for a fit with a reused appearance, the most Levenberg-Marquardt
        iterations (``droplet_core.inference.reuse_fit``; it stops once converged, usually within a dozen).
    learning_rate : peak Adam learning rate.
    seed : PRNG seed; the fit is deterministic given it.
    mask_types : number of learned droplet types (templates, neural composition length).
    mask_size : side of each learned mask, in cells spanning -1.5..1.5 radii (templates).
        21 cells (0.15 radii each) resolve a brightfield rim's thin lit side and the
        flattened contacts of packed droplets, which 15 blurred into the body.
    crop : optional region of interest ``(x0, y0, x1, y1)`` in pixels of the image as
        given (x = column, y = row, end exclusive), applied before downscaling.
    appearance_from : id of a stored fit of the same model whose learned appearance
        (templates' masks, neural's optics weights) is held fixed; only positions, radii,
        compositions and background are fitted, by Levenberg-Marquardt rather than SVI
        (``learning_rate`` and ``seed`` then play no part).
    initializer : where droplets start: ``"encoder"`` (the trained detection network,
        ``droplet_core.detection.detector_net``) or ``"log"`` (Laplacian-of-Gaussian candidates).
    """

    model: str = "templates"
    channel: str = "grey"
    downscale: int = 0
    droplets: int = 0
    steps: int = 150
    learning_rate: float = 0.02
    seed: int = 0
    mask_types: int = 6
    mask_size: int = 21
    crop: tuple[int, int, int, int] | None = None
    appearance_from: str | None = None
    initializer: str = "encoder"

    def __post_init__(self) -> None:
        all_channels = variant_entry(self.model).all_channels
        if all_channels and self.channel != "rgb":
            raise ValueError(f"the {self.model} model fits all colour channels at once: use channel 'rgb'")
        if not all_channels and self.channel == "rgb":
            raise ValueError(f"the {self.model} model fits one channel: choose a single channel, not 'rgb'")
        for name in ("downscale", "droplets", "steps", "seed", "mask_types", "mask_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")
        if self.appearance_from is not None and not is_valid_fit_id(self.appearance_from):
            raise ValueError("appearance_from must be a fit id (32 lowercase hexadecimal characters)")
        if self.initializer not in INITIALIZERS:
            raise ValueError(f"unknown initializer {self.initializer!r}; choose one of {', '.join(INITIALIZERS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FitSettings:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in fields}
        if values.get("crop") is not None:
            values["crop"] = tuple(int(v) for v in values["crop"])
        return cls(**values)


def default_channel(model: str) -> str:
    """The channel a new user gets for ``model``."""
    return "rgb" if variant_entry(model).all_channels else "grey"


@dataclass(frozen=True)
class FitProgress:
    """One report from a running fit, sent after every jitted chunk of steps."""

    step: int
    total_steps: int
    loss: float
    elapsed_s: float
    droplets: int
