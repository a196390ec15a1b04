"""Images a person can see: a percentile contrast stretch for display only.

Fluorescence images (often 16-bit, with droplets a few percent of the full range) look
black when shown as they are. For display, the ``low`` and ``high`` percentiles of the
image's brightness are mapped to black and white. The fit never sees this: it works on
the raw data.
"""

from __future__ import annotations

import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)


def stretch_limits(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """The values of an ``(h, w[, c])`` image at the ``low`` and ``high`` percentiles.

    One pair for all channels together, so colours keep their balance. ``(0, 100)``
    gives the image's own range; an image with one value gives ``(v, v + 1e-6)``.
    """
    low_pct, high_pct = sorted(float(p) for p in percentiles)
    finite = np.asarray(image, np.float32)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [low_pct, high_pct]))
    return low, max(high, low + 1e-6)


def apply_stretch(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``image`` with ``limits[0]`` mapped to 0 and ``limits[1]`` to 1, clipped (float32)."""
    low, high = limits
    return np.clip((np.asarray(image, np.float32) - low) / (high - low), 0.0, 1.0)


def stretch_contrast(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """An ``(h, w[, c])`` image in [0, 1] stretched between its ``percentiles`` (display only)."""
    return apply_stretch(image, stretch_limits(image, percentiles))
