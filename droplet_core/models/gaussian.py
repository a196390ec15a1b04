"""Variant ``gaussian``: isotropic Gaussian blobs on a flat background (series part 1).

One channel ``(h, w, 1)``: ``background + polarity * sum_n a_n exp(-d_n^2 / (2 sigma_n^2))``.
The table's ``radius`` is ``sqrt(2) * sigma`` (the scikit-image ``blob_log`` convention).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from droplet_core.models.common import (
    ModelSpec,
    capped_radius,
    initial_background,
    patch_geometry,
    per_pixel,
    sample_background,
    splat,
    uncertainty_columns,
)

EXTENT = 3.0
SQRT2 = float(np.sqrt(2.0))
POSITION_PRIOR_SD_PX = 3.0


def model(observed, anchors, active, spec: ModelSpec):
    """numpyro model of a ``(h, w, 1)`` channel; ``anchors`` ``(n, 3)`` detector x, y, radius (fit px)."""
    layout = spec.layout
    n = layout.n_droplets
    _, background = sample_background(layout)
    noise = numpyro.sample("noise", dist.LogNormal(jnp.log(0.05), 1.0))
    with numpyro.plate("droplets", n):
        x = numpyro.sample("x", dist.Normal(anchors[:, 0], POSITION_PRIOR_SD_PX))
        y = numpyro.sample("y", dist.Normal(anchors[:, 1], POSITION_PRIOR_SD_PX))
        sigma = numpyro.sample("sigma", dist.LogNormal(1.5, 0.75))
        amplitude = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    image = render(background, x, y, sigma, amplitude * active, spec)
    numpyro.deterministic("reconstruction", image)
    numpyro.deterministic("strength", amplitude)
    numpyro.sample("obs", dist.Normal(image, noise).to_event(3), obs=observed)


def render(background, x, y, sigma, amplitude, spec: ModelSpec):
    """``(h, w, 1)`` image of Gaussian blobs on ``background`` ``(h, w, 1)``; droplet arrays ``(n,)`` in fit px."""
    layout = spec.layout
    flat, dx, dy, inside = patch_geometry(layout, x, y)
    s = capped_radius(layout, sigma)
    values = per_pixel(layout, amplitude) * jnp.exp(-(dx**2 + dy**2) / (2.0 * s**2))
    droplets = splat(layout, values[:, None], flat, inside).reshape(layout.height, layout.width, layout.channels)
    return jnp.clip(background + spec.polarity * droplets, spec.floor, spec.ceiling)


def initial_values(observed, candidates, background, spec: ModelSpec, key, appearance: dict | None = None) -> dict:
    """Start at the detector's candidates ``(n, 4)``: x, y, radius, contrast (fit px, channel units).

    Blobs have no learned appearance, so there is none to reuse."""
    del key, appearance
    return {
        **initial_background(background, observed.shape[2]),
        "noise": np.float32(0.05),
        "x": candidates[:, 0].astype(np.float32),
        "y": candidates[:, 1].astype(np.float32),
        "sigma": (candidates[:, 2] / SQRT2).astype(np.float32),
        "amplitude": np.maximum(np.abs(candidates[:, 3]), 1e-3).astype(np.float32),
    }


def droplet_columns(values: dict, uncertainty: dict, spec: ModelSpec) -> dict:
    """Per-droplet columns in fit px: x, y, radius, amplitude, sd_x, sd_y, sd_radius, p_exists."""
    del spec
    return {
        "x": values["x"],
        "y": values["y"],
        "radius": SQRT2 * values["sigma"],
        "amplitude": values["amplitude"],
        **uncertainty_columns(uncertainty, SQRT2),
    }


def is_appearance_site(name: str) -> bool:
    """Gaussian droplets have no learned look to reuse."""
    del name
    return False


def appearance(values: dict, spec: ModelSpec) -> dict:
    """Gaussian droplets have no learned appearance."""
    del values, spec
    return {}


def radius_px(values: dict) -> np.ndarray:
    """``(n,)`` blob radii in fit px: ``sqrt(2) * sigma`` (the ``blob_log`` convention), in
    float64 as the droplet count and the uncertainty have always computed them."""
    return np.sqrt(2.0) * values["sigma"]


def drawn_radius_px(values: dict) -> np.ndarray:
    """A blob is drawn as far as its radius."""
    return radius_px(values)


def added_droplet_values(peaks: np.ndarray, values: dict, active: np.ndarray) -> dict:
    """A blob at a residual peak ``(k, 4)`` x, y, radius, contrast: its width and contrast."""
    del values, active
    # np.sqrt (float64), not SQRT2: the fit's numbers stay bit-identical to earlier versions.
    return {"sigma": peaks[:, 2] / np.sqrt(2.0), "amplitude": np.maximum(np.abs(peaks[:, 3]), 1e-3)}
