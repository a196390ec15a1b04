"""Rendering machinery shared by the model variants: droplets drawn on local pixel patches.

Every droplet only touches the pixels within a few radii of its centre, so a variant
evaluates its droplet look on a square patch per droplet and scatter-adds the patches into
the image: cost and memory are O(droplets x patch) instead of O(droplets x pixels). Patch
sizes follow each droplet's starting radius (with room to grow), and all patches are laid
out in one flat list of pixels so that a render is a single gather, elementwise maths and
a single scatter, whatever the mix of sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

# Radius caps (fit pixels): a droplet gets the smallest cap that leaves it room to grow by
# GROWTH_ROOM during the fit, and a patch reaching ``extent * cap``; its radius is clipped
# to the cap while rendering.
RADIUS_CAPS_PX = (1.0, 1.5, 2.0, 2.5, 3.25, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 16.0, 24.0, 32.0, 48.0, 64.0)
GROWTH_ROOM = 1.25


def bucket_size(count: int, steps_per_octave: int = 8) -> int:
    """The smallest of a coarse ladder of sizes (``steps_per_octave`` per doubling) that holds
    ``count``: arrays padded to it give the same compiled program for most images of a
    similar size and crowding, at most ``1 / steps_per_octave`` larger than needed."""
    if count <= steps_per_octave:
        return max(count, 1)
    step = 2 ** (int(np.log2(count)) - int(np.log2(steps_per_octave)))
    return int(-(-count // step) * step)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class Layout:
    """Geometry of one fit's droplet patches: its arrays are arguments of the compiled
    programs (a JAX pytree), its sizes are static.

    ``height``, ``width`` and ``channels`` describe the fitted image ``(h, w, c)``. The ``L``
    patch pixels of all droplets are listed in ``droplet`` ``(L,)`` (which droplet) and
    ``offset_x``, ``offset_y`` ``(L,)`` (pixel offset from the droplet's rounded centre).
    ``radius_cap_px`` ``(n,)`` is the largest radius each droplet's patch can draw. ``L`` is
    padded (see ``bucket_size``) with pixels far outside the image, which draw nothing.
    """

    height: int
    width: int
    channels: int
    n_droplets: int
    droplet: np.ndarray
    offset_x: np.ndarray
    offset_y: np.ndarray
    radius_cap_px: np.ndarray

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    def tree_flatten(self):
        return (self.droplet, self.offset_x, self.offset_y, self.radius_cap_px), (
            self.height,
            self.width,
            self.channels,
            self.n_droplets,
        )

    @classmethod
    def tree_unflatten(cls, sizes, arrays):
        return cls(*sizes, *arrays)


# Offset of padding patch pixels: far outside any image, so they are never drawn.
PADDING_OFFSET_PX = -1e6


def make_layout(shape: tuple[int, int, int], radius_px: np.ndarray, extent: float) -> Layout:
    """Patches for droplets of starting radius ``radius_px`` ``(n,)`` in an ``(h, w, c)`` image.

    ``extent`` is how far (in radii) a variant's droplet reaches.
    """
    height, width, channels = shape
    radius_px = np.asarray(radius_px, dtype=float)
    caps = np.asarray(RADIUS_CAPS_PX)
    cap_index = np.minimum(np.searchsorted(caps, radius_px * GROWTH_ROOM), len(caps) - 1)
    droplet, offset_x, offset_y = [], [], []
    # Droplet-major order makes every gather from / scatter into droplet arrays sorted.
    for g in np.unique(cap_index):
        members = np.flatnonzero(cap_index == g)
        half = int(np.ceil(extent * caps[g]))
        oy, ox = np.mgrid[-half : half + 1, -half : half + 1]
        droplet.append(np.repeat(members, ox.size))
        offset_x.append(np.tile(ox.ravel(), members.size))
        offset_y.append(np.tile(oy.ravel(), members.size))
    droplet = np.concatenate(droplet) if droplet else np.zeros(0, np.int64)
    offset_x = np.concatenate(offset_x) if offset_x else np.zeros(0)
    offset_y = np.concatenate(offset_y) if offset_y else np.zeros(0)
    order = np.argsort(droplet, kind="stable")
    # Padding belongs to the last droplet, which keeps the droplet indices sorted.
    padding = bucket_size(order.size) - order.size
    return Layout(
        height,
        width,
        channels,
        int(radius_px.size),
        np.concatenate([droplet[order], np.full(padding, max(radius_px.size - 1, 0))]).astype(np.int32),
        np.concatenate([offset_x[order], np.full(padding, PADDING_OFFSET_PX)]).astype(np.float32),
        np.concatenate([offset_y[order], np.full(padding, PADDING_OFFSET_PX)]).astype(np.float32),
        caps[cap_index].astype(np.float32),
    )


def per_pixel(layout: Layout, droplet_values):
    """Gather ``(n, ...)`` droplet values to the ``(L, ...)`` patch pixels (sorted indices)."""
    return (
        jnp.asarray(droplet_values)
        .at[jnp.asarray(layout.droplet)]
        .get(indices_are_sorted=True, mode="promise_in_bounds")
    )


def patch_geometry(layout: Layout, x_px, y_px):
    """Where every patch pixel lies relative to its droplet.

    Parameters
    ----------
    x_px, y_px : (n,) droplet centres in fit pixels (x = column, y = row).

    Returns
    -------
    flat_index : (L,) int32 row-major pixel index (clipped into the image).
    dx_px, dy_px : (L,) pixel centre minus droplet centre.
    inside : (L,) bool, whether the patch pixel lies in the image.
    """
    x = per_pixel(layout, x_px)
    y = per_pixel(layout, y_px)
    px = jnp.round(x) + jnp.asarray(layout.offset_x)
    py = jnp.round(y) + jnp.asarray(layout.offset_y)
    inside = (px >= 0) & (px < layout.width) & (py >= 0) & (py < layout.height)
    flat = jnp.clip(py, 0, layout.height - 1).astype(jnp.int32) * layout.width + jnp.clip(
        px, 0, layout.width - 1
    ).astype(jnp.int32)
    return flat, px - x, py - y, inside


def nearest_droplet_pixels(layout: Layout, x_px, y_px, radius_px, active, reach_radii: float = float("inf")):
    """The rule "the nearest droplet owns the pixel", on the patch pixels.

    Parameters
    ----------
    x_px, y_px, radius_px : (n,) droplet centres and radii in fit pixels.
    active : (n,) droplets in the model (> 0).
    reach_radii : a droplet reaches pixels less than this many of its radii away.

    Returns
    -------
    flat_index : (L,) row-major pixel index of each patch pixel.
    owns : (L,) bool, whether the patch pixel lies in the image, its droplet is active and
        reaches it, and no other such droplet is nearer (distance in each droplet's radii;
        equidistant droplets all own it). The choice carries no gradient.
    """
    flat, dx, dy, inside = patch_geometry(layout, x_px, y_px)
    distance = jax.lax.stop_gradient(jnp.hypot(dx, dy) / capped_radius(layout, radius_px))
    usable = inside & (distance < reach_radii) & (per_pixel(layout, active) > 0)
    distance = jnp.where(usable, distance, jnp.inf)
    nearest = jnp.full((layout.n_pixels,), jnp.inf).at[flat].min(distance)
    return flat, usable & (distance <= nearest[flat])


def splat(layout: Layout, values, flat_index, inside):
    """Scatter-add patch ``values`` ``(L, c)`` into a flat image ``(h * w, c)``."""
    masked = jnp.where(inside[:, None], values, 0.0)
    return jnp.zeros((layout.n_pixels, values.shape[1]), values.dtype).at[flat_index].add(masked)


def capped_radius(layout: Layout, radius_px):
    """``(L,)`` each patch pixel's droplet radius, clipped to what its patch can draw."""
    return per_pixel(layout, jnp.minimum(radius_px, jnp.asarray(layout.radius_cap_px)))


def bilinear_sample(layout: Layout, grids, u, v):
    """Sample each patch pixel's droplet grid at continuous cell coordinates.

    Parameters
    ----------
    grids : (n, m, m) one grid per droplet; cell (i, j) is row i, column j.
    u, v : (L,) column and row coordinates in cells; outside [0, m - 1] gives 0.

    Returns
    -------
    (L,) bilinearly interpolated values.
    """
    n, m, _ = grids.shape
    flat = grids.reshape(n * m * m)
    base = jnp.asarray(layout.droplet) * (m * m)
    u0 = jnp.floor(u)
    v0 = jnp.floor(v)
    fu = u - u0
    fv = v - v0

    def corner(du, dv):
        cu = u0 + du
        cv = v0 + dv
        valid = (cu >= 0) & (cu <= m - 1) & (cv >= 0) & (cv <= m - 1)
        index = base + (jnp.clip(cv, 0, m - 1) * m + jnp.clip(cu, 0, m - 1)).astype(jnp.int32)
        return jnp.where(valid, flat.at[index].get(mode="promise_in_bounds"), 0.0)

    return (
        corner(0, 0) * (1 - fu) * (1 - fv)
        + corner(1, 0) * fu * (1 - fv)
        + corner(0, 1) * (1 - fu) * fv
        + corner(1, 1) * fu * fv
    )


# Microscope illumination is uneven (vignetting, a tilted lamp) on scales far larger than a
# droplet: a coarse grid of shading values (rows, columns), interpolated bicubically over
# the image, follows it; its cells (a sixth of the image) are too coarse to draw droplets.
SHADING_GRID = (6, 6)


def sample_background(layout: Layout):
    """Background of every variant: a level per channel plus smooth shading.

    Returns the level ``(c,)`` and the background image ``(h, w, c)``.
    """
    c = layout.channels
    level = numpyro.sample("bg", dist.Uniform(0.0, 1.0).expand([c]).to_event(1))
    shading = numpyro.sample("bg_shading", dist.Normal(0.0, 0.1).expand([*SHADING_GRID, c]).to_event(3))
    return level, level + jax.image.resize(shading, (layout.height, layout.width, c), "cubic")


@lru_cache(maxsize=8)
def shading_basis(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation weights of the shading grid: ``(h, rows)`` and ``(w, columns)``.

    The bicubic resize is linear and separable, so the shading image of one channel's grid
    ``S`` ``(rows, columns)`` is ``rows_weights @ S @ columns_weights.T``: a least-squares
    problem in ``S`` for any fixed droplets (``droplet_core.inference.reuse_fit``).
    """
    rows, columns = SHADING_GRID
    # Resizing an identity along one axis (the other keeps its size, which the resize leaves
    # exactly as it is) gives that axis's weights.
    return (
        np.asarray(jax.image.resize(jnp.eye(rows), (height, rows), "cubic"), np.float64),
        np.asarray(jax.image.resize(jnp.eye(columns), (width, columns), "cubic"), np.float64),
    )


# Where droplets cover most of the image (packed emulsions, crowded fluorescence) the median
# pixel is a droplet's, not the background's: on the second renderer's packed fluorescence the
# dim droplets then had no contrast against it, started with no look, and were switched off.
# The background is read between the candidates' disks instead, where enough of it is left.
BACKGROUND_OUTSIDE_RADII = 1.1
MIN_BACKGROUND_FRACTION = 0.02


def background_level(observed: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``(c,)`` background of an ``(h, w, c)`` channel: the median of the pixels outside every
    candidate's disk (``candidates`` ``(n, >=3)``: x, y, radius in pixels of ``observed``), or of
    all pixels where the disks leave under ``MIN_BACKGROUND_FRACTION`` of them."""
    covered = _covered_by_disks(observed.shape[:2], np.asarray(candidates)[:, :3], BACKGROUND_OUTSIDE_RADII)
    if covered.mean() > 1.0 - MIN_BACKGROUND_FRACTION:
        return np.median(observed, axis=(0, 1))
    return np.median(observed[~covered], axis=0)


def _covered_by_disks(shape: tuple[int, int], disks: np.ndarray, scale: float) -> np.ndarray:
    """``shape`` bool image of the pixels within ``scale`` radii of any of the ``disks``
    ``(n, 3)`` (x, y, radius, px). Disks of one whole-pixel reach are drawn together, so a
    fit's thousands of droplets cost a few array operations, not a Python loop each."""
    height, width = shape
    covered = np.zeros(shape, bool)
    x, y, reach = np.unique(disks, axis=0).T
    reach = scale * reach
    half = np.ceil(reach).astype(int) + 1
    for size in np.unique(half):
        gx, gy, greach = (a[half == size, None, None] for a in (x, y, reach))
        offsets = np.arange(-size, size + 1)
        rows = np.round(gy).astype(int) + offsets[None, :, None]
        cols = np.round(gx).astype(int) + offsets[None, None, :]
        inside = (cols - gx) ** 2 + (rows - gy) ** 2 <= greach**2
        inside &= (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        covered[np.broadcast_to(rows, inside.shape)[inside], np.broadcast_to(cols, inside.shape)[inside]] = True
    return covered


def initial_background(background: np.ndarray, channels: int) -> dict:
    """Initial values of the background sites: flat at ``background`` ``(c,)`` (channel units,
    ``background_level``) over ``channels`` channels."""
    return {
        "bg": np.broadcast_to(np.asarray(background, np.float32), (channels,)).copy(),
        "bg_shading": np.zeros((*SHADING_GRID, channels), np.float32),
    }


def composition_and_uncertainty_columns(values: dict, uncertainty: dict) -> dict:
    """Table columns ``composition_0..``, then ``sd_x``, ``sd_y``, ``sd_radius`` (posterior sd,
    fit px) and ``p_exists`` from ``droplet_core.inference.uncertainty.droplet_uncertainty``."""
    columns = {f"composition_{t}": values["composition"][:, t] for t in range(values["composition"].shape[1])}
    return {**columns, **uncertainty_columns(uncertainty)}


def uncertainty_columns(uncertainty: dict, radius_per_site_unit: float = 1.0) -> dict:
    """``sd_x``, ``sd_y``, ``sd_radius`` (fit px) and ``p_exists`` of an uncertainty dict whose
    radius site is ``radius`` or ``sigma`` (``radius = radius_per_site_unit * sigma``)."""
    sd_radius = uncertainty["sd_radius"] if "sd_radius" in uncertainty else uncertainty["sd_sigma"]
    return {
        "sd_x": uncertainty["sd_x"],
        "sd_y": uncertainty["sd_y"],
        "sd_radius": radius_per_site_unit * sd_radius,
        "p_exists": uncertainty["p_exists"],
    }


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class ModelSpec:
    """Description of one fit's model, passed to the compiled programs as an argument (a JAX
    pytree: the layout's arrays are traced, everything else is static).

    ``polarity`` is +1 when droplets are brighter than the background in the fitted channel
    and -1 when darker (single-channel variants start their droplets with that sign).
    ``mask_types`` and ``mask_size`` configure templates and neural. ``floor`` and
    ``ceiling`` are where the camera saturated the channel (``saturation_levels``): a drawn
    image is clipped there, and only there.
    """

    layout: Layout
    polarity: float
    mask_types: int
    mask_size: int
    floor: float = 0.0
    ceiling: float = 1.0

    def tree_flatten(self):
        return (self.layout,), (self.polarity, self.mask_types, self.mask_size, self.floor, self.ceiling)

    @classmethod
    def tree_unflatten(cls, static, children):
        return cls(*children, *static)


# A channel saturated at 0 (or 1) where at least this share of its pixels sits there.
SATURATED_SHARE = 1e-4


def saturation_levels(observed: np.ndarray) -> tuple[float, float]:
    """Floor and ceiling ``ModelSpec`` clips a drawn ``(h, w, c)`` image to: 0 and 1 where the
    channel has pixels there (the camera clipped them), else unbounded.

    A dim image (16-bit fluorescence uses a tenth of the range) never reaches 0: clipping the
    drawing there would let a droplet's look sink below the background unseen, and its edge
    drift outwards with it.
    """
    floor = 0.0 if np.mean(observed <= 0.0) >= SATURATED_SHARE else -np.inf
    ceiling = 1.0 if np.mean(observed >= 1.0) >= SATURATED_SHARE else np.inf
    return floor, ceiling
