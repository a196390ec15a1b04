"""Variant ``neural``: a small flax MLP ("droplet optics model") renders droplets (series part 3).

All colour channels at once ``(h, w, 3)``. Each pixel is rendered by its NEAREST droplet only
(distance normalised by that droplet's radius), which keeps memory at O(pixels) instead of
O(pixels x droplets). The MLP maps (background value, dx/r, dy/r, r, composition) to the
new pixel value through a residual connection and a sigmoid; its weights are latent with
``Normal(0, 1)`` priors and are fitted together with the droplets.
"""

from __future__ import annotations

from functools import partial

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_flax_module

from droplet_core.models.common import (
    ModelSpec,
    composition_and_uncertainty_columns,
    initial_background,
    nearest_droplet_pixels,
    sample_background,
)
from droplet_core.models.outline import outline_columns

EXTENT = 1.5
POSITION_PRIOR_SD_PX = 3.0
HIDDEN_DIMS = (32, 16, 8)
GALLERY_RADII_PX = (2.0, 4.0, 8.0)
GALLERY_SIZE_PX = 25
# Cells across the grid on which each droplet's outline is read (``droplet_looks``).
OUTLINE_GRID_CELLS = 41
# Droplets whose looks are drawn in one compiled call.
LOOKS_PER_CALL = 128
# Pixels the optics MLP renders at once (see map_pixel_chunks).
PIXELS_PER_CHUNK = 65536


class DropletOptics(nn.Module):
    """Maps per-pixel features ``(batch, c + 3 + types)`` to pixel values ``(batch, c)``.

    Features are the background value (c), dx/r, dy/r, r (fit px) and the composition.
    """

    channels: int
    hidden_dims: tuple[int, ...] = HIDDEN_DIMS

    @nn.compact
    def __call__(self, features):
        background = features[:, : self.channels]
        h = features
        for i, dim in enumerate(self.hidden_dims):
            h = nn.Dense(dim, name=f"hidden_{i}")(h)
            h = nn.LayerNorm(name=f"ln_{i}")(h)
            h = jax.nn.relu(h)
        delta = nn.Dense(self.channels, name="output")(h)
        # logit(background) makes delta = 0 the identity, unlike the seed's sigmoid(bg + delta).
        return jax.nn.sigmoid(jax.scipy.special.logit(jnp.clip(background, 1e-4, 1 - 1e-4)) + delta)


def map_pixel_chunks(render, *per_pixel_arrays):
    """``render`` on ``PIXELS_PER_CHUNK`` pixels at a time of ``(p, ...)`` arrays; ``(p, c)`` out.

    Each chunk is recomputed in the backward pass instead of stored: the features and the
    MLP's activations are held for one chunk, not for every pixel (gigabytes at full
    resolution).
    """
    count = per_pixel_arrays[0].shape[0]
    chunks = -(-count // PIXELS_PER_CHUNK)

    def split(array):
        padding = [(0, chunks * PIXELS_PER_CHUNK - count)] + [(0, 0)] * (array.ndim - 1)
        return jnp.pad(array, padding).reshape(chunks, PIXELS_PER_CHUNK, *array.shape[1:])

    rendered = jax.lax.map(lambda args: jax.checkpoint(render)(*args), tuple(split(a) for a in per_pixel_arrays))
    return rendered.reshape(chunks * PIXELS_PER_CHUNK, -1)[:count]


def feature_count(spec: ModelSpec) -> int:
    return spec.layout.channels + 3 + spec.mask_types


def nearest_owner(x, y, radius, active, spec: ModelSpec):
    """Which active droplet is nearest to each pixel (distance in its radii, within ``EXTENT``).

    Returns the owner ``(h * w,)`` int32 (0 where none) and coverage ``(h * w,)`` bool. The
    choice carries no gradient. Equidistant droplets: the higher index owns the pixel.
    """
    layout = spec.layout
    flat, chosen = nearest_droplet_pixels(layout, x, y, radius, active, EXTENT)
    owner = jnp.full((layout.n_pixels,), -1, jnp.int32).at[flat].max(jnp.where(chosen, jnp.asarray(layout.droplet), -1))
    return jnp.maximum(owner, 0), owner >= 0


def owner_features(pixels, owner, x, y, radius, composition, spec: ModelSpec):
    """``(k, 3 + types)`` features (dx/r, dy/r, r, composition) of flat pixel indices ``pixels``
    ``(k,)`` from their ``owner`` droplets ``(k,)``."""
    layout = spec.layout
    row, column = jnp.divmod(pixels, layout.width)
    owner_radius = jnp.minimum(radius, jnp.asarray(layout.radius_cap_px))[owner]
    u = (column - x[owner]) / owner_radius
    v = (row - y[owner]) / owner_radius
    return jnp.concatenate([u[:, None], v[:, None], owner_radius[:, None], composition[owner]], axis=1)


def nearest_droplet_features(x, y, radius, composition, active, spec: ModelSpec):
    """Per-pixel features of the nearest active droplet, for every pixel at once.

    Returns ``(h * w, 3 + types)`` features (0 where no droplet is near) and ``(h * w,)``
    coverage (1 where some droplet is within ``EXTENT`` radii, else 0).
    """
    owner, covered = nearest_owner(x, y, radius, active, spec)
    features = owner_features(jnp.arange(spec.layout.n_pixels), owner, x, y, radius, composition, spec)
    return jnp.where(covered[:, None], features, 0.0), covered.astype(features.dtype)


def model(observed, anchors, active, spec: ModelSpec):
    """numpyro model of an ``(h, w, 3)`` image; ``anchors`` ``(n, 3)`` detector x, y, radius (fit px)."""
    layout = spec.layout
    n, types, c = layout.n_droplets, spec.mask_types, layout.channels
    bg, background_image = sample_background(layout)
    noise = numpyro.sample("noise", dist.LogNormal(jnp.log(0.05), 1.0))
    with numpyro.plate("droplets", n):
        x = numpyro.sample("x", dist.Normal(anchors[:, 0], POSITION_PRIOR_SD_PX))
        y = numpyro.sample("y", dist.Normal(anchors[:, 1], POSITION_PRIOR_SD_PX))
        radius = numpyro.sample("radius", dist.LogNormal(1.5, 0.75))
        composition = numpyro.sample("composition", dist.Uniform(0.0, 1.0).expand([types]).to_event(1))
    optics = random_flax_module(
        "optics", DropletOptics(channels=c), dist.Normal(0.0, 1.0), input_shape=(1, feature_count(spec))
    )
    owner, covered = nearest_owner(x, y, radius, active, spec)

    # Pixel features are built chunk by chunk from each pixel's owner, so that no
    # (pixels, features) array is stored for the backward pass.
    def render(pixels, background, owner, covered):
        features = owner_features(pixels, owner, x, y, radius, composition, spec)
        rendered = optics(jnp.concatenate([background, features], axis=-1))
        return jnp.where(covered[:, None], rendered, background)

    background = background_image.reshape(-1, c)
    image = map_pixel_chunks(render, jnp.arange(layout.n_pixels), background, owner, covered)
    image = image.reshape(layout.height, layout.width, c)
    numpyro.deterministic("reconstruction", image)
    numpyro.deterministic("strength", droplet_strength(optics, bg, radius, composition))
    numpyro.sample("obs", dist.Normal(image, noise).to_event(3), obs=observed)


def droplet_strength(optics, bg, radius, composition):
    """``(n,)`` largest change a droplet makes to the background, probed at a few points."""
    probes = jnp.asarray([[0.0, 0.0], [0.0, 0.4], [0.0, -0.4], [0.4, 0.0], [-0.4, 0.0], [0.0, 0.9]])
    n, k = radius.shape[0], probes.shape[0]
    features = jnp.concatenate(
        [
            jnp.broadcast_to(bg, (n, k, bg.shape[0])),
            jnp.broadcast_to(probes, (n, k, 2)),
            jnp.broadcast_to(radius[:, None, None], (n, k, 1)),
            jnp.broadcast_to(composition[:, None, :], (n, k, composition.shape[1])),
        ],
        axis=-1,
    )
    values = optics(features.reshape(n * k, -1)).reshape(n, k, -1)
    return jnp.max(jnp.abs(values - bg), axis=(1, 2))


def initial_values(observed, candidates, background, spec: ModelSpec, key, appearance: dict | None = None) -> dict:
    """Start at the detector's candidates ``(n, 4)`` (x, y, radius, contrast); optics weights from
    the prior, or those of a reused ``appearance`` (``{"optics/...": weights}``)."""
    composition, weights = _random_start(
        key, candidates.shape[0], spec.mask_types, spec.layout.channels, feature_count(spec)
    )
    flat_weights = {
        "optics/" + ".".join(path): np.asarray(value)
        for path, value in flax.traverse_util.flatten_dict(weights).items()
    }
    # A small output layer starts the optics model close to "droplets change nothing".
    flat_weights["optics/output.kernel"] = flat_weights["optics/output.kernel"] * 0.1
    flat_weights.update(appearance or {})
    return {
        **flat_weights,
        **initial_background(background, observed.shape[2]),
        "noise": np.float32(0.05),
        "x": candidates[:, 0].astype(np.float32),
        "y": candidates[:, 1].astype(np.float32),
        "radius": np.maximum(candidates[:, 2], 0.5).astype(np.float32),
        "composition": np.asarray(composition, np.float32),
    }


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _random_start(key, n: int, types: int, channels: int, features: int):
    """``(n, types)`` random compositions and the optics model's weights drawn from its
    initialiser. Jitted: run eagerly, each of flax's initialiser ops compiles on its own."""
    composition_key, optics_key = jax.random.split(key)
    composition = jax.random.uniform(composition_key, (n, types), minval=0.3, maxval=0.7)
    weights = DropletOptics(channels=channels).init(optics_key, jnp.zeros((1, features)))["params"]
    return composition, weights


def droplet_columns(values: dict, uncertainty: dict, spec: ModelSpec) -> dict:
    """Per-droplet columns in fit px: x, y, radius, composition_0.., sd_x, sd_y, sd_radius,
    p_exists.

    ``x``, ``y`` and ``radius`` are the centre and edge of each droplet's drawn outline
    (``outline.outline_columns`` of ``droplet_looks``): the optics model draws at
    ``dx / r``, so it can scale its look and every radius together, and the model's own
    ``radius`` is pinned only by where the detector started it.
    """
    radius = np.minimum(np.asarray(values["radius"]), np.asarray(spec.layout.radius_cap_px))
    return outline_columns(
        droplet_looks(values, spec),
        EXTENT,
        values["x"],
        values["y"],
        radius,
        composition_and_uncertainty_columns(values, uncertainty),
    )


def droplet_looks(values: dict, spec: ModelSpec) -> np.ndarray:
    """``(n, m, m)`` each droplet drawn by the optics model minus the background, on a grid of
    ``OUTLINE_GRID_CELLS`` cells spanning ``-EXTENT..EXTENT`` of its radius, projected on the
    colour direction along which the looks vary most (one signed value per cell)."""
    c, types = spec.layout.channels, spec.mask_types
    axis = np.linspace(-EXTENT, EXTENT, OUTLINE_GRID_CELLS, dtype=np.float32)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    bg = np.asarray(values["bg"], np.float32)
    radius = np.minimum(np.asarray(values["radius"], np.float32), np.asarray(spec.layout.radius_cap_px, np.float32))
    composition = np.asarray(values["composition"], np.float32)
    params = optics_params(values)
    cells = u.size
    looks = []
    # A fixed number of droplets per call: one compiled program whatever the droplet count.
    for start in range(0, len(radius), LOOKS_PER_CALL):
        r = np.zeros(LOOKS_PER_CALL, np.float32)
        mix = np.zeros((LOOKS_PER_CALL, types), np.float32)
        count = min(LOOKS_PER_CALL, len(radius) - start)
        r[:count], mix[:count] = radius[start : start + count], composition[start : start + count]
        features = np.concatenate(
            [
                np.broadcast_to(bg, (LOOKS_PER_CALL, cells, c)),
                np.broadcast_to(u.ravel()[None, :, None], (LOOKS_PER_CALL, cells, 1)),
                np.broadcast_to(v.ravel()[None, :, None], (LOOKS_PER_CALL, cells, 1)),
                np.broadcast_to(r[:, None, None], (LOOKS_PER_CALL, cells, 1)),
                np.broadcast_to(mix[:, None, :], (LOOKS_PER_CALL, cells, types)),
            ],
            axis=2,
        )
        drawn = np.asarray(_draw(params, features.reshape(-1, feature_count(spec)), c))
        looks.append(drawn.reshape(LOOKS_PER_CALL, cells, c)[:count] - bg)
    looks = np.concatenate(looks) if looks else np.zeros((0, cells, c), np.float32)
    looks = np.where((np.hypot(u, v) < EXTENT).ravel()[None, :, None], looks, 0.0)
    flat = looks.reshape(-1, c)
    direction = np.linalg.svd(flat, full_matrices=False)[2][0] if flat.size else np.ones(c)
    return (looks @ direction).reshape(len(looks), *u.shape)


def optics_params(values: dict) -> dict:
    """Nested flax parameters of the optics MLP from the flat ``optics/...`` sample sites."""
    params: dict = {}
    for name, value in values.items():
        if not name.startswith("optics/"):
            continue
        node = params
        *path, leaf = name[len("optics/") :].split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return {"params": params}


def is_appearance_site(name: str) -> bool:
    """Whether a latent site describes the droplet look (held fixed when it is reused)."""
    return name.startswith("optics/")


def appearance(values: dict, spec: ModelSpec) -> dict:
    """``gallery`` ``(types * radii, s, s, c)``: the optics model's droplet drawn on the background
    for each pure composition type (``gallery_type``) at each radius of ``GALLERY_RADII_PX``
    (``gallery_radius_px``, fit pixels), and the flat optics weights."""
    c, types = spec.layout.channels, spec.mask_types
    half = GALLERY_SIZE_PX // 2
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    bg = np.asarray(values["bg"], np.float32)
    features, covered = [], []
    for t in range(types):
        composition = np.zeros(types, np.float32)
        composition[t] = 1.0
        for r in GALLERY_RADII_PX:
            u, v = dx / r, dy / r
            features.append(
                np.concatenate(
                    [
                        np.broadcast_to(bg, dx.shape + (c,)),
                        u[..., None],
                        v[..., None],
                        np.full(dx.shape + (1,), r, np.float32),
                        np.broadcast_to(composition, dx.shape + (types,)),
                    ],
                    axis=-1,
                )
            )
            covered.append((np.hypot(u, v) < EXTENT)[..., None])
    features = np.stack(features)
    tiles = np.asarray(_draw(optics_params(values), features.reshape(-1, feature_count(spec)), c))
    tiles = np.where(np.stack(covered), tiles.reshape(features.shape[:3] + (c,)), bg)
    weights = {name: np.asarray(v) for name, v in values.items() if name.startswith("optics/")}
    return {
        "gallery": tiles.astype(np.float32),
        "gallery_type": np.repeat(np.arange(types), len(GALLERY_RADII_PX)),
        "gallery_radius_px": np.tile(np.asarray(GALLERY_RADII_PX, np.float32), types),
        **weights,
    }


@partial(jax.jit, static_argnums=2)
def _draw(params: dict, features, channels: int):
    """``(m, channels)`` the optics model at ``(m, features)`` pixel features, all tiles in one
    compiled call (eagerly, every layer's ops would compile on their own)."""
    return DropletOptics(channels=channels).apply(params, features)


def radius_px(values: dict) -> np.ndarray:
    """``(n,)`` the model's droplet radii in fit px."""
    return values["radius"]


def drawn_radius_px(values: dict) -> np.ndarray:
    """The optics draw a droplet within ``EXTENT`` radii; its own radius is its edge."""
    return radius_px(values)


def added_droplet_values(peaks: np.ndarray, values: dict, active: np.ndarray) -> dict:
    """A droplet at a residual peak ``(k, 4)`` x, y, radius, contrast: its radius and the
    typical composition of the active droplets."""
    return {
        "radius": np.maximum(peaks[:, 2], 0.5),
        "composition": np.tile(np.median(values["composition"][active > 0], axis=0), (len(peaks), 1)),
    }
