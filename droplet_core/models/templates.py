"""Variant ``templates``: learned droplet masks mixed by a per-droplet composition (series part 2).

One channel ``(h, w, 1)``. There are ``mask_types`` learned masks of ``mask_size^2`` cells;
a droplet's look is the composition-weighted sum of the masks. Unlike the seed, masks are
drawn in units of the droplet's radius (cells span -1.5..1.5 radii) and may be signed, so
one set of masks describes droplets of every size and both the bright caustic and the dark
rim; each droplet gets an explicit radius. Masks are sampled bilinearly at sub-pixel
positions; the image is clipped where the camera saturated it (``saturation_levels``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from droplet_core.models.common import (
    ModelSpec,
    bilinear_sample,
    capped_radius,
    composition_and_uncertainty_columns,
    initial_background,
    patch_geometry,
    sample_background,
    splat,
)
from droplet_core.models.outline import outline, outline_columns

EXTENT = 1.5
POSITION_PRIOR_SD_PX = 3.0
# The blur every image has at least (the camera's pixels and the optics; Gaussian sd, fit
# px) is drawn apart from the masks: in radii, the masks' unit, it is a different blur for
# every size, and masks that held it drew small droplets too sharp, so their fitted radius
# grew until the blur was covered (+15-40 % below 2 px). Learning it instead traded it
# against the masks: they sharpened and rang while the blur grew.
BLUR_PX = 0.6
BLUR_REACH_PX = 2


def model(observed, anchors, active, spec: ModelSpec):
    """numpyro model of a ``(h, w, 1)`` channel; ``anchors`` ``(n, 3)`` detector x, y, radius (fit px)."""
    layout = spec.layout
    n, types, size = layout.n_droplets, spec.mask_types, spec.mask_size
    _, background = sample_background(layout)
    noise = numpyro.sample("noise", dist.LogNormal(jnp.log(0.05), 1.0))
    masks = numpyro.sample("masks", dist.Normal(0.0, 0.5).expand([types, size, size]).to_event(3))
    with numpyro.plate("droplets", n):
        x = numpyro.sample("x", dist.Normal(anchors[:, 0], POSITION_PRIOR_SD_PX))
        y = numpyro.sample("y", dist.Normal(anchors[:, 1], POSITION_PRIOR_SD_PX))
        radius = numpyro.sample("radius", dist.LogNormal(1.5, 0.75))
        composition = numpyro.sample("composition", dist.Uniform(0.0, 1.0).expand([types]).to_event(1))
    droplet_masks = jnp.einsum("nt,tij->nij", composition, masks * envelope(size))
    image = render(background, x, y, radius, droplet_masks * active[:, None, None], spec)
    numpyro.deterministic("reconstruction", image)
    numpyro.deterministic("strength", jnp.max(jnp.abs(droplet_masks), axis=(1, 2)))
    numpyro.sample("obs", dist.Normal(image, noise).to_event(3), obs=observed)


def render(background, x, y, radius, droplet_masks, spec: ModelSpec):
    """``(h, w, 1)`` image on ``background`` ``(h, w, 1)``; ``droplet_masks`` ``(n, m, m)`` each
    droplet's composed mask, drawn at its radius and blurred by ``BLUR_PX``."""
    layout = spec.layout
    flat, u, v, inside = _mask_cells(x, y, radius, spec)
    values = bilinear_sample(layout, droplet_masks, u, v)
    droplets = splat(layout, values[:, None], flat, inside).reshape(layout.height, layout.width, layout.channels)
    return jnp.clip(background + blur(droplets), spec.floor, spec.ceiling)


def blur(image):
    """``(h, w, c)`` image blurred by a Gaussian of sd ``BLUR_PX`` (nothing drawn outside it)."""
    offsets = np.arange(-BLUR_REACH_PX, BLUR_REACH_PX + 1)
    weights = np.exp(-0.5 * (offsets / BLUR_PX) ** 2)
    weights = (weights / weights.sum()).astype(np.float32)
    for axis in (0, 1):
        padding = [(BLUR_REACH_PX, BLUR_REACH_PX) if a == axis else (0, 0) for a in range(image.ndim)]
        padded = jnp.pad(image, padding)
        size = image.shape[axis]
        image = sum(w * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k, w in enumerate(weights))
    return image


def _mask_cells(x, y, radius, spec: ModelSpec):
    """Where every patch pixel falls on its droplet's mask grid: the ``(L,)`` flat pixel
    index, column and row in mask cells ``(L,)`` each, and whether it is in the image."""
    cells_per_radius = (spec.mask_size - 1) / (2.0 * EXTENT)
    centre_cell = (spec.mask_size - 1) / 2.0
    flat, dx, dy, inside = patch_geometry(spec.layout, x, y)
    r = capped_radius(spec.layout, radius)
    return flat, centre_cell + dx / r * cells_per_radius, centre_cell + dy / r * cells_per_radius, inside


def envelope(size: int) -> np.ndarray:
    """``(size, size)`` weights that confine a mask to its droplet (1 within 1.1 radii, 0 beyond 1.4).

    Without it a mask could drift within its grid while the position drifts the other way, or
    spread into neighbouring droplets: the envelope keeps ``x``, ``y`` and ``radius`` meaningful.
    """
    axis = np.linspace(-EXTENT, EXTENT, size)
    distance = np.hypot(axis[None, :], axis[:, None])
    return np.clip((1.4 - distance) / 0.3, 0.0, 1.0).astype(np.float32)


def disk_profile(size: int) -> np.ndarray:
    """``(size, size)`` soft unit disk on the mask grid (cells span -EXTENT..EXTENT radii)."""
    axis = np.linspace(-EXTENT, EXTENT, size)
    distance = np.hypot(axis[None, :], axis[:, None])
    return np.clip(1.5 - distance, 0.0, 1.0)


def initial_values(observed, candidates, background, spec: ModelSpec, key, appearance: dict | None = None) -> dict:
    """Start at the detector's candidates ``(n, 4)`` (x, y, radius, contrast) with disk-like masks.

    The masks start as slightly different disks so the types can specialise. With a reused
    ``appearance`` (``{"masks": (types, m, m)}``) the compositions start at their least-squares
    values for those masks instead (see ``least_squares_composition``).
    """
    n, types = candidates.shape[0], spec.mask_types
    contrast = float(np.median(np.abs(candidates[:, 3]))) if n else 0.1
    mask_key, comp_key = jax.random.split(key)
    jitter = 1.0 + 0.3 * np.asarray(jax.random.normal(mask_key, (types, spec.mask_size, spec.mask_size)))
    masks = spec.polarity * contrast * disk_profile(spec.mask_size)[None] * jitter
    if appearance is None:
        composition = 0.5 + 0.2 * np.asarray(jax.random.uniform(comp_key, (n, types), minval=-1.0, maxval=1.0))
        scale = np.abs(candidates[:, 3]) / max(contrast, 1e-6)
        composition = np.clip(composition * scale[:, None] / types * 2.0, 0.02, 0.98)
    else:
        masks = np.asarray(appearance["masks"])
        composition = least_squares_composition(observed, candidates, background, masks, spec)
    return {
        **initial_background(background, observed.shape[2]),
        "noise": np.float32(0.05),
        "masks": masks.astype(np.float32),
        "x": candidates[:, 0].astype(np.float32),
        "y": candidates[:, 1].astype(np.float32),
        "radius": np.maximum(candidates[:, 2], 0.5).astype(np.float32),
        "composition": composition.astype(np.float32),
    }


# Ridge towards the prior's centre on each droplet's normal equations, relative to their mean
# diagonal: the mask types look alike, so the plain least-squares solution is ill-conditioned
# (on the example a ridge of 1e-3 started the fit worse than random compositions; 0.1-1 as
# well as the source fit's own compositions).
COMPOSITION_RIDGE = 0.3
COMPOSITION_PRIOR_CENTRE = 0.5


def least_squares_composition(observed, candidates, background, masks, spec: ModelSpec) -> np.ndarray:
    """``(n, types)`` compositions that best draw each droplet with fixed ``masks``.

    The image is linear in the compositions once the masks and the droplets' places are
    known, so each droplet's composition solves a small least-squares problem over its
    patch: the observed ``(h, w, 1)`` channel less its ``background`` ``(1,)``, against the
    masks drawn at the candidate's x, y and radius (``candidates`` ``(n, 4)``). Neighbours
    that overlap a patch are ignored; the fit corrects that. Clipped to the prior's
    support.
    """
    layout = spec.layout
    n, types = candidates.shape[0], masks.shape[0]
    shaped = np.asarray(masks, np.float32) * envelope(spec.mask_size)
    drawn, flat, inside = (
        np.asarray(a)
        for a in _drawn_types(candidates[:, 0], candidates[:, 1], np.maximum(candidates[:, 2], 0.5), shaped, spec)
    )
    drawn = drawn * inside[:, None]
    target = (observed[..., 0] - background[0]).ravel()[flat] * inside
    starts = np.searchsorted(layout.droplet, np.arange(n))
    normal = np.zeros((n, types, types))
    for t in range(types):
        for u in range(t, types):
            normal[:, t, u] = normal[:, u, t] = np.add.reduceat(drawn[:, t] * drawn[:, u], starts, dtype=np.float64)
    right = np.stack([np.add.reduceat(drawn[:, t] * target, starts, dtype=np.float64) for t in range(types)], axis=1)
    ridge = COMPOSITION_RIDGE * (np.einsum("nii->n", normal)[:, None] / types + 1e-12)
    right = right + ridge * COMPOSITION_PRIOR_CENTRE
    solved = np.linalg.solve(normal + ridge[:, :, None] * np.eye(types), right[..., None])[..., 0]
    return np.clip(solved, 0.02, 0.98)


@jax.jit
def _drawn_types(x, y, radius, shaped_masks, spec: ModelSpec):
    """Each mask type ``(types, m, m)`` drawn at every patch pixel: ``(L, types)`` values, the
    ``(L,)`` flat pixel index and whether it is in the image."""
    layout = spec.layout
    flat, u, v, inside = _mask_cells(x, y, radius, spec)
    grids = (jnp.broadcast_to(mask, (layout.n_droplets, *mask.shape)) for mask in shaped_masks)
    return jnp.stack([bilinear_sample(layout, grid, u, v) for grid in grids], axis=1), flat, inside


def composed_masks(values: dict) -> np.ndarray:
    """``(n, m, m)`` each droplet's look: its composition of the enveloped masks (numpy)."""
    masks = np.asarray(values["masks"])
    return np.einsum("nt,tij->nij", values["composition"], masks * envelope(masks.shape[-1]))


def droplet_columns(values: dict, uncertainty: dict, spec: ModelSpec) -> dict:
    """Per-droplet columns in fit px: x, y, radius, amplitude, composition_0.., sd_x, sd_y,
    sd_radius, p_exists.

    ``x``, ``y`` and ``radius`` are the centre and edge of each droplet's drawn outline
    (``outline.outline_columns``), not the model's own ``x``, ``y``, ``radius``: moving (or
    scaling) all masks and all positions together draws the same image, so those are pinned
    only by where the detector started them.
    """
    masks = composed_masks(values)
    columns = composition_and_uncertainty_columns(values, uncertainty)
    return {
        **outline_columns(masks, EXTENT, values["x"], values["y"], np.asarray(values["radius"]), columns),
        "amplitude": np.max(np.abs(masks), axis=(1, 2)),
    }


def is_appearance_site(name: str) -> bool:
    """Whether a latent site describes the droplet look (held fixed when it is reused)."""
    return name == "masks"


def appearance(values: dict, spec: ModelSpec) -> dict:
    """The learned masks ``(types, m, m)`` in channel units (added to the background)."""
    return {"masks": np.asarray(values["masks"] * envelope(spec.mask_size), np.float32)}


def radius_px(values: dict) -> np.ndarray:
    """``(n,)`` the model's droplet radii in fit px."""
    return values["radius"]


def drawn_radius_px(values: dict) -> np.ndarray:
    """``(n,)`` radii in fit px of the droplets as drawn: the edge of each droplet's outline
    (``outline.outline``), which can lie well beyond the model's own ``radius`` (the masks
    reach 1.4 radii)."""
    return outline(composed_masks(values), EXTENT, values["radius"]).edge * values["radius"]


def added_droplet_values(peaks: np.ndarray, values: dict, active: np.ndarray) -> dict:
    """A droplet at a residual peak ``(k, 4)`` x, y, radius, contrast: its radius and the
    typical composition of the active droplets."""
    return {
        "radius": np.maximum(peaks[:, 2], 0.5),
        "composition": np.tile(np.median(values["composition"][active > 0], axis=0), (len(peaks), 1)),
    }
