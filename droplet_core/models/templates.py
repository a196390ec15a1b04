"""Variant ``templates``: learned droplet masks mixed by a per-droplet composition (series part 2).

One channel ``(h, w, 1)``. There are ``mask_types`` learned masks of ``mask_size^2`` cells;
a droplet's look is the composition-weighted sum of the masks. Unlike the seed, masks are
drawn in units of the droplet's radius (cells span -1.5..1.5 radii) and may be signed, so
one set of masks describes droplets of every size and both the bright caustic and the dark
rim; each droplet gets an explicit radius. Masks are sampled bilinearly at sub-pixel
positions; the image is clipped to [0, 1].
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

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

EXTENT = 1.5
POSITION_PRIOR_SD_PX = 3.0


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
    droplet's composed mask."""
    layout = spec.layout
    flat, u, v, inside = _mask_cells(x, y, radius, spec)
    values = bilinear_sample(layout, droplet_masks, u, v)
    droplets = splat(layout, values[:, None], flat, inside).reshape(layout.height, layout.width, layout.channels)
    return jnp.clip(background + droplets, 0.0, 1.0)


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


def initial_values(observed, candidates, spec: ModelSpec, key, appearance: dict | None = None) -> dict:
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
        composition = least_squares_composition(observed, candidates, masks, spec)
    return {
        **initial_background(observed),
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


def least_squares_composition(observed, candidates, masks, spec: ModelSpec) -> np.ndarray:
    """``(n, types)`` compositions that best draw each droplet with fixed ``masks``.

    The image is linear in the compositions once the masks and the droplets' places are
    known, so each droplet's composition solves a small least-squares problem over its
    patch: the observed ``(h, w, 1)`` channel less its median (the background), against the
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
    target = (observed[..., 0] - np.median(observed)).ravel()[flat] * inside
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
    """Per-droplet columns in fit px: x, y, radius, amplitude, composition_0.., sd_x, sd_y, sd_radius, p_exists.

    ``x``, ``y`` and ``radius`` are the centre and edge of each droplet's drawn outline
    (``outline``), not the model's own ``x``, ``y``, ``radius``: moving (or scaling) all
    masks and all positions together draws the same image, so those are pinned only by
    where the detector started them.
    """
    masks = composed_masks(values)
    drawn = outline(masks)
    radius = np.asarray(values["radius"])
    columns = composition_and_uncertainty_columns(values, uncertainty)
    columns["sd_radius"] = columns["sd_radius"] * drawn.edge
    edge_width_px = drawn.edge_width * radius
    return {
        "x": values["x"] + drawn.centre_x * radius,
        "y": values["y"] + drawn.centre_y * radius,
        "radius": drawn.edge * radius,
        "amplitude": np.max(np.abs(masks), axis=(1, 2)),
        **columns,
        "edge_width": edge_width_px,
        "in_focus": edge_width_px <= OUT_OF_FOCUS_EDGE_RATIO * np.median(edge_width_px),
    }


# Along each ray the droplet's edge is the outermost local maximum of the look's radial
# gradient that reaches this fraction of the droplet's typical (median over rays) largest
# gradient: the outer edge of the rim or body, however bright or dark each side is drawn
# (a side shaded to the background level still has its edge).
OUTLINE_GRADIENT_FRACTION = 0.5
OUTLINE_ANGLES = 48
# Radial step (radii) of the search for the edge.
OUTLINE_STEP = 0.03
# Edge points further than this many median deviations from the fitted circle (an inner
# feature taken for the edge) are left out of the second fit.
OUTLINE_OUTLIER_MADS = 3.0


# A droplet whose edge is this many times wider than the image's median droplet edge is out
# of focus (in focus, every edge is about as wide as the microscope's blur).
OUT_OF_FOCUS_EDGE_RATIO = 2.0


class Outline(NamedTuple):
    """Each droplet's drawn outline ``(n,)``, in units of the model's radius: the centre's
    offset from the model's ``x``, ``y``, the edge radius, and the edge's width (the look's
    contrast over its steepest slope at the edge: about the blur's width)."""

    centre_x: np.ndarray
    centre_y: np.ndarray
    edge: np.ndarray
    edge_width: np.ndarray


def outline(droplet_masks: np.ndarray) -> Outline:
    """Centre, edge radius and edge width of each droplet's drawn look (``Outline``).

    Along ``OUTLINE_ANGLES`` rays from the grid's centre, the edge is the outermost strong
    step of the look (``OUTLINE_GRADIENT_FRACTION``); a circle fitted to those points by
    least squares (twice, the second time without outlying points) gives the centre of
    the outline and its radius. A highlight or an inclusion inside the droplet moves
    neither.

    Parameters
    ----------
    droplet_masks : (n, m, m) composed masks on the grid spanning -EXTENT..EXTENT radii.

    Returns
    -------
    Outline of ``(n,)`` arrays, in radii of the model's ``radius``.
    """
    n, size, _ = droplet_masks.shape
    angle, rho, weights = _ray_sampling(size)
    profile = np.asarray(droplet_masks, np.float32).reshape(n, -1) @ weights.T.astype(np.float32)
    step = np.abs(np.gradient(profile.reshape(n, angle.size, rho.size), axis=2))
    typical = np.median(step.max(axis=2), axis=1)
    peak = np.zeros(step.shape, dtype=bool)
    peak[..., 1:-1] = (step[..., 1:-1] >= step[..., :-2]) & (step[..., 1:-1] >= step[..., 2:])
    edge_found = peak & (step >= OUTLINE_GRADIENT_FRACTION * typical[:, None, None]) & (typical[:, None, None] > 0)
    found = edge_found.any(axis=2)
    edge = rho[np.argmax(edge_found, axis=2)]
    px, py = np.cos(angle) * edge, np.sin(angle) * edge
    centre_x, centre_y, radius = _fit_circles(px, py, found)
    distance = np.abs(np.hypot(px - centre_x[:, None], py - centre_y[:, None]) - radius[:, None])
    spread = np.nanmedian(np.where(found, distance, np.nan), axis=1)
    inliers = found & (distance <= OUTLINE_OUTLIER_MADS * np.maximum(np.nan_to_num(spread), OUTLINE_STEP)[:, None])
    centre_x, centre_y, radius = _fit_circles(px, py, inliers)
    usable = inliers.sum(axis=1) >= 3
    contrast = np.median(np.abs(profile.reshape(step.shape)[..., rho <= 1.0]), axis=(1, 2))
    return Outline(
        np.where(usable, centre_x, 0.0).astype(np.float32),
        np.where(usable, centre_y, 0.0).astype(np.float32),
        np.where(usable, radius, 1.0).astype(np.float32),
        (OUTLINE_STEP * contrast / np.maximum(typical, 1e-12)).astype(np.float32),
    )


@lru_cache(maxsize=4)
def _ray_sampling(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rays of ``outline`` on a ``size`` mask grid: angles ``(a,)``, radii ``(s,)`` (from
    ``EXTENT`` inwards) and the ``(a * s, size * size)`` bilinear weights that sample a
    flattened mask at every ray point (the same points for every droplet)."""
    angle = np.linspace(0.0, 2.0 * np.pi, OUTLINE_ANGLES, endpoint=False)
    rho = np.arange(EXTENT, 0.1, -OUTLINE_STEP)
    cells_per_radius = (size - 1) / (2.0 * EXTENT)
    u = ((size - 1) / 2.0 + np.cos(angle)[:, None] * rho[None, :] * cells_per_radius).ravel()
    v = ((size - 1) / 2.0 + np.sin(angle)[:, None] * rho[None, :] * cells_per_radius).ravel()
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    weights = np.zeros((u.size, size * size))
    rows = np.arange(u.size)
    for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):
        cu, cv = u0 + du, v0 + dv
        w = (1.0 - np.abs(u - cu)) * (1.0 - np.abs(v - cv))
        inside = (cu >= 0) & (cu < size) & (cv >= 0) & (cv < size)
        np.add.at(weights, (rows[inside], (cv * size + cu)[inside]), w[inside])
    return angle, rho, weights


def _fit_circles(px: np.ndarray, py: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares (Kasa) circles through the points ``(n, k)`` where ``use``: centres and radii ``(n,)``."""
    w = use.astype(np.float64)
    design = np.stack([px, py, np.ones_like(px)], axis=2) * w[..., None]
    target = (px**2 + py**2) * w
    normal = np.einsum("nki,nkj->nij", design, design) + 1e-9 * np.eye(3)
    solved = np.linalg.solve(normal, np.einsum("nki,nk->ni", design, target)[..., None])[..., 0]
    centre_x, centre_y = solved[:, 0] / 2.0, solved[:, 1] / 2.0
    return centre_x, centre_y, np.sqrt(np.maximum(solved[:, 2] + centre_x**2 + centre_y**2, 1e-12))


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
    (``outline``), which can lie well beyond the model's own ``radius`` (the masks reach
    1.4 radii)."""
    return outline(composed_masks(values)).edge * values["radius"]


def added_droplet_values(peaks: np.ndarray, values: dict, active: np.ndarray) -> dict:
    """A droplet at a residual peak ``(k, 4)`` x, y, radius, contrast: its radius and the
    typical composition of the active droplets."""
    return {
        "radius": np.maximum(peaks[:, 2], 0.5),
        "composition": np.tile(np.median(values["composition"][active > 0], axis=0), (len(peaks), 1)),
    }
