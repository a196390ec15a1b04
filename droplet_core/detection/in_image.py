"""Droplets found by the trained detector in an uploaded image, in that image's pixels.

The one route from an uploaded image to detections, for the instant detection of the app,
the command line's ``detect`` and the fit's starting droplets: crop to the region of
interest, run the detector on every level of an image pyramid (``droplet_core.detection.scale``),
and shift the positions back by the crop's origin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from droplet_core.detection import detector_net, scale
from droplet_core.imaging import images


def pyramid_detections_in_image(
    image: np.ndarray,
    channel: str = "rgb",
    threshold: float = detector_net.DEFAULT_THRESHOLD,
    downscale: int = 1,
    crop: tuple[int, int, int, int] | None = None,
) -> pd.DataFrame:
    """Every pyramid level's detections in an uploaded ``(H, W, 3)`` image, before merging.

    Parameters
    ----------
    image : (H, W, 3) float RGB in [0, 1], as uploaded.
    channel : the channel the detector looks at (``droplet_core.imaging.channels``).
    threshold : presence probability a detection needs.
    downscale : the pyramid's finest level.
    crop : region of interest ``(x0, y0, x1, y1)`` in pixels of ``image`` (end exclusive).

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` in pixels of ``image``, ``p_exists``,
    ``level``; ``scale.outermost_droplets`` merges the levels.
    """
    region = images.crop(image, crop) if crop is not None else image
    levels = scale.pyramid_detections(region, channel, threshold, downscale)
    return _shifted(levels, crop)


def detect_droplets(
    image: np.ndarray,
    channel: str = "rgb",
    threshold: float = detector_net.DEFAULT_THRESHOLD,
    downscale: int = 1,
    crop: tuple[int, int, int, int] | None = None,
    weights_dir: str | None = None,
    with_band: bool = False,
) -> pd.DataFrame:
    """Droplets of every size in an uploaded ``(H, W, 3)`` image, in its pixels: the merged
    ``pyramid_detections_in_image`` (same arguments and columns; ``weights_dir``: the
    detector's weights, default the shipped ones; ``with_band``: keep ``in_band``)."""
    region = images.crop(image, crop) if crop is not None else image
    return _shifted(scale.detect_in_image(region, channel, threshold, downscale, weights_dir, with_band), crop)


def _shifted(table: pd.DataFrame, crop: tuple[int, int, int, int] | None) -> pd.DataFrame:
    """``table`` with positions in a crop moved to pixels of the image the crop was cut from."""
    if crop is None:
        return table
    x0, y0 = images.crop_origin(crop)
    return table.assign(x=table["x"] + x0, y=table["y"] + y0)
