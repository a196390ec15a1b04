"""Colour channels of an RGB image, each scaled to [0, 1], for fitting and display.

Conversions are scikit-image's. Scalings to [0, 1]:

- ``r``, ``g``, ``b``, ``grey`` (``rgb2gray`` luminance), ``h``, ``s``, ``v``
  (``rgb2hsv``) are already in [0, 1]; hue is the fraction of a turn (red 0, green 1/3,
  blue 2/3).
- ``L`` is CIE L* / 100.
- ``a`` and ``b*`` are CIE a*, b* mapped by ``(value + 128) / 255`` and clipped, so 0.502
  is neutral grey; ``b*`` is named so to differ from blue ``b``.
"""

from __future__ import annotations

import numpy as np
from skimage import color

CHANNELS = ("rgb", "r", "g", "b", "grey", "h", "s", "v", "L", "a", "b*")

CHANNEL_LABELS = {
    "rgb": "RGB (all three)",
    "r": "red",
    "g": "green",
    "b": "blue",
    "grey": "grey (luminance)",
    "h": "hue (HSV)",
    "s": "saturation (HSV)",
    "v": "value (HSV)",
    "L": "CIE L*",
    "a": "CIE a* (green-red)",
    "b*": "CIE b* (blue-yellow)",
}


def _single_channels(rgb: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The requested single channels ``(h, w)``, computing each colour space at most once."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    out: dict[str, np.ndarray] = {}
    for index, name in enumerate(("r", "g", "b")):
        if name in names:
            out[name] = rgb[..., index]
    if "grey" in names:
        out["grey"] = color.rgb2gray(rgb)
    if {"h", "s", "v"} & set(names):
        hsv = color.rgb2hsv(rgb)
        out.update(h=hsv[..., 0], s=hsv[..., 1], v=hsv[..., 2])
    if {"L", "a", "b*"} & set(names):
        lab = color.rgb2lab(rgb)
        out["L"] = lab[..., 0] / 100.0
        out["a"] = (lab[..., 1] + 128.0) / 255.0
        out["b*"] = (lab[..., 2] + 128.0) / 255.0
    return {name: np.clip(out[name], 0.0, 1.0).astype(np.float32) for name in names}


def extract_channel(rgb: np.ndarray, name: str) -> np.ndarray:
    """One named channel of an RGB image.

    Parameters
    ----------
    rgb : float ``(h, w, 3)`` in [0, 1].
    name : one of ``CHANNELS``.

    Returns
    -------
    float32 ``(h, w, c)`` in [0, 1]; ``c`` is 3 for ``"rgb"``, otherwise 1.
    """
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")
    if name == "rgb":
        return np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    return _single_channels(rgb, (name,))[name][..., None]


def all_channels(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Every single channel (all of ``CHANNELS`` but ``"rgb"``) as float32 ``(h, w)`` in [0, 1]."""
    return _single_channels(rgb, CHANNELS[1:])
