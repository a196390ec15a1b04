"""Amortised droplet detection: a small convolutional network trained on synthetic scenes.

The network (flax linen) maps an image of any size to a grid of cells, ``STRIDE`` pixels
on a side, and predicts per cell a presence logit (a droplet centre lies in this cell),
the centre's offset from the cell centre and the log radius, as in CenterNet or the
amortised source detectors of astronomy. Decoding keeps cells above a presence
probability threshold and suppresses weaker cells whose centre lies inside a stronger
detection (non-maximum suppression).

Input normalisation makes one network serve every channel: a ``(h, w, c)`` channel
(``c`` = 1 or 3) becomes two features, the signed deviation of the channel mean from its
median and the Euclidean deviation over channels from the per-channel median, both
divided by the 99th percentile of the latter (robust to background level, colour and
droplet density).

The network is trained by ``droplet_core.detection.detector_training``; the weights
shipped in ``droplet_core/detection/encoder_weights/`` were made by
``python -m droplet_core train-encoder`` and then fine-tuned by
``python -m droplet_core train-encoder --init-weights``; their
``training.json`` records the command, the weights it started from (checksum and
command), the architecture, settings, seeds, versions and the training curve.

Coordinates follow the project's contract: ``x`` = column, ``y`` = row, pixel centre at
its integer index, ``radius`` in pixels of the image given.

This module imports neither numpyro nor streamlit, so ``detect`` starts fast.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from droplet_core.imaging.channels import extract_channel

STRIDE = 2
WEIGHTS_DIR = Path(__file__).with_name("encoder_weights")
WEIGHTS_FILE = "encoder.msgpack"
RECORD_FILE = "training.json"
DEFAULT_THRESHOLD = 0.5
# A weaker detection whose centre lies within this fraction of a stronger one's radius
# (and within MIN_SEPARATION_PX) is the same droplet.
SUPPRESS_FRACTION_OF_RADIUS = 0.5
MIN_SEPARATION_PX = 1.0
# Radius range of the other families' training scenes (px): the pyramid detector
# (``droplet_core.detection.scale``) trusts a level with radii of 2-8 px, and larger droplets in the
# training scenes teach the network not to take their rims for small droplets.
FAMILY_RADIUS_RANGE_PX = (1.5, 24.0)
# Predicted radii are clipped to this (px).
MAX_PREDICTED_RADIUS_PX = 2 * FAMILY_RADIUS_RANGE_PX[1]


@dataclass(frozen=True)
class EncoderArchitecture:
    """Shape of the network.

    Attributes
    ----------
    stem_features : channels of the full-resolution 3x3 convolution.
    features : channels of the stride-``STRIDE`` convolution and the residual blocks.
    dilations : dilation of each residual 3x3 block at cell resolution (receptive field).
    """

    stem_features: int = 16
    features: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 1)


class Encoder(nn.Module):
    """Per-cell droplet predictions of a normalised image.

    ``__call__`` takes ``(b, h, w, 2)`` features (``normalise``) and returns
    ``(b, ceil(h / STRIDE), ceil(w / STRIDE), 4)``: presence logit, offset of the centre
    from the cell centre in cells (x, y), log radius in pixels.
    """

    architecture: EncoderArchitecture = EncoderArchitecture()

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        a = self.architecture
        h = nn.relu(nn.Conv(a.stem_features, (3, 3))(features))
        h = nn.relu(nn.Conv(a.features, (3, 3), strides=STRIDE)(h))
        for dilation in a.dilations:
            h = h + nn.relu(nn.Conv(a.features, (3, 3), kernel_dilation=dilation)(h))
        return nn.Conv(4, (1, 1))(h)


def normalise(channel: np.ndarray) -> np.ndarray:
    """Network input ``(h, w, 2)`` float32 of a ``(h, w, c)`` channel in [0, 1] (``c`` = 1 or 3).

    Feature 0 is the signed deviation of the channel mean from its median, feature 1 the
    Euclidean deviation over channels from the per-channel median divided by ``sqrt(c)``;
    both are divided by the 99th percentile of feature 1 (the background of a droplet
    image is its most common value; the percentile measures droplet contrast).
    """
    channel = np.asarray(channel, dtype=np.float32)
    if channel.ndim != 3 or channel.shape[2] not in (1, 3):
        raise ValueError(f"the encoder takes an (h, w, 1) or (h, w, 3) channel, not shape {channel.shape}")
    signed = channel - np.median(channel, axis=(0, 1), keepdims=True)
    magnitude = np.sqrt(np.mean(signed**2, axis=2))
    mean = signed.mean(axis=2)
    scale = float(np.percentile(magnitude, 99.0)) + 1e-3
    return np.stack([mean / scale, magnitude / scale], axis=2).astype(np.float32)


def raw_from_output(out: np.ndarray) -> dict:
    """Per-cell detections (flattened arrays, px) from the network output ``(hc, wc, 4)``."""
    rows, cols = np.meshgrid(np.arange(out.shape[0]), np.arange(out.shape[1]), indexing="ij")
    centre = (STRIDE - 1) / 2.0
    logits = out[..., 0].astype(np.float64)
    return {
        "p_exists": (1.0 / (1.0 + np.exp(-logits))).ravel(),
        "x": (STRIDE * cols + centre + STRIDE * out[..., 1]).ravel(),
        "y": (STRIDE * rows + centre + STRIDE * out[..., 2]).ravel(),
        "radius": np.exp(np.clip(out[..., 3], np.log(0.5), np.log(MAX_PREDICTED_RADIUS_PX))).ravel(),
    }


def decode(raw: dict, threshold: float = DEFAULT_THRESHOLD, min_radius_px: float = 0.0) -> pd.DataFrame:
    """Droplets from per-cell predictions: threshold, minimum radius, then suppression.

    Parameters
    ----------
    raw : per-cell ``p_exists``, ``x``, ``y``, ``radius`` (``(n,)`` arrays, px), as
        ``raw_predictions`` returns; cheap to filter again with other thresholds.
    threshold : presence probability a detection needs.
    min_radius_px : smallest radius kept (px of the image given).

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` (px), ``p_exists``, most probable
    first. A detection whose centre lies within ``max(1 px, radius / 2)`` of a more
    probable one's is dropped.
    """
    keep = (raw["p_exists"] >= threshold) & (raw["radius"] >= min_radius_px)
    table = {k: np.asarray(raw[k])[keep] for k in ("x", "y", "radius", "p_exists")}
    order = np.argsort(-table["p_exists"], kind="stable")
    table = {k: v[order] for k, v in table.items()}
    xy = np.stack([table["x"], table["y"]], axis=1)
    if len(xy):
        reach = np.maximum(SUPPRESS_FRACTION_OF_RADIUS * table["radius"], MIN_SEPARATION_PX)
        neighbours = cKDTree(xy).query_ball_point(xy, reach)
        suppressed = np.zeros(len(xy), dtype=bool)
        for index, near in enumerate(neighbours):
            if not suppressed[index]:
                suppressed[[j for j in near if j > index]] = True
        table = {k: v[~suppressed] for k, v in table.items()}
    return pd.DataFrame({k: table[k].astype(np.float64) for k in ("x", "y", "radius", "p_exists")})


@functools.cache
def load_weights(weights_dir: str | None = None) -> tuple[EncoderArchitecture, dict]:
    """The architecture and parameters saved in ``weights_dir`` (default: the shipped ones).

    Cached per process. Raises ``FileNotFoundError`` or ``ValueError`` for a missing or
    unreadable weights folder.
    """
    folder = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    record = json.loads((folder / RECORD_FILE).read_text())
    architecture = architecture_from_dict(record["architecture"])
    # The shapes a fresh network would have, without running it (initialising costs seconds).
    template = jax.eval_shape(functools.partial(init_params, architecture), jax.random.PRNGKey(0))
    params = flax.serialization.msgpack_restore((folder / WEIGHTS_FILE).read_bytes())
    shapes = jax.tree_util.tree_map(np.shape, params)
    if shapes != jax.tree_util.tree_map(lambda leaf: leaf.shape, template):
        raise ValueError(f"the encoder weights in {folder} do not fit the architecture in {RECORD_FILE}")
    return architecture, jax.tree_util.tree_map(jnp.asarray, params)


def architecture_from_dict(values: dict) -> EncoderArchitecture:
    return EncoderArchitecture(
        stem_features=int(values["stem_features"]),
        features=int(values["features"]),
        dilations=tuple(int(d) for d in values["dilations"]),
    )


def init_params(architecture: EncoderArchitecture, key: jax.Array) -> dict:
    """Fresh parameters (a pytree of small arrays) of ``Encoder(architecture)``."""
    return Encoder(architecture).init(key, jnp.zeros((1, 16, 16, 2), jnp.float32))["params"]


@functools.cache
def _apply(architecture: EncoderArchitecture):
    return jax.jit(lambda params, features: Encoder(architecture).apply({"params": params}, features))


def warm_up(shape: tuple[int, ...], weights_dir: str | None = None) -> None:
    """Load the weights and compile the network for ``(h, w, c)`` channels of this size.

    ``raw_predictions`` does both on first use; calling this first lets a caller time
    the one-off costs apart from the detection itself.
    """
    architecture, params = load_weights(weights_dir)
    zeros = jnp.zeros((1, shape[0], shape[1], 2), jnp.float32)
    _apply(architecture)(params, zeros).block_until_ready()


def raw_predictions(channel: np.ndarray, weights_dir: str | None = None) -> dict:
    """Per-cell predictions of the encoder on a ``(h, w, c)`` channel in [0, 1].

    Returns
    -------
    dict of flattened ``(n_cells,)`` arrays ``p_exists``, ``x``, ``y``, ``radius`` (px of
    ``channel``); ``decode`` turns them into droplets.
    """
    architecture, params = load_weights(weights_dir)
    features = normalise(channel)[None]
    out = np.asarray(_apply(architecture)(params, jnp.asarray(features)))[0]
    return raw_from_output(out)


def detect(
    channel: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_radius_px: float = 0.0,
    weights_dir: str | None = None,
) -> pd.DataFrame:
    """Droplets in a ``(h, w, c)`` channel (c = 1 or 3, values in [0, 1]); see ``decode``."""
    return decode(raw_predictions(channel, weights_dir), threshold, min_radius_px)


def prepare_image(image: np.ndarray, channel: str = "rgb", downscale: int = 0) -> tuple[np.ndarray, int]:
    """The ``(h, w, c)`` channel the encoder looks at, and the downscale factor used.

    Parameters
    ----------
    image : ``(H, W, 3)`` float RGB in [0, 1], as uploaded.
    channel : a name from ``droplet_core.imaging.channels.CHANNELS`` with 1 or 3 channels.
    downscale : integer block-mean factor, or 0 for about ``scale.FALLBACK_FIT_PIXELS`` pixels.
    """
    from droplet_core.detection.scale import FALLBACK_FIT_PIXELS
    from droplet_core.imaging import images

    height, width = image.shape[:2]
    factor = downscale or images.auto_downscale_factor(height, width, FALLBACK_FIT_PIXELS)
    return extract_channel(images.downscale(image, factor), channel), factor


def to_image_px(table: pd.DataFrame, factor: int) -> pd.DataFrame:
    """Detections ``x, y, radius`` in pixels of a ``factor``-downscaled image, in pixels of the image as given."""
    from droplet_core.imaging import images

    out = table.copy()
    out["x"] = images.to_original_px(out["x"].to_numpy(), factor)
    out["y"] = images.to_original_px(out["y"].to_numpy(), factor)
    out["radius"] = out["radius"] * factor
    return out


def overlay_png(image: np.ndarray, droplets: pd.DataFrame, colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """``image`` ``(H, W, 3)`` (float in [0, 1] or uint8) with a circle drawn per droplet (px of ``image``)."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    picture = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for x, y, r in droplets[["x", "y", "radius"]].to_numpy(float):
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour)
    return picture
