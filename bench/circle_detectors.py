"""Classical detectors of round objects of any size, tuned on truth: the yardstick of ``bench.generality``.

- ``blob_log``: scikit-image ``blob_log`` (log-spaced scales); radius = sqrt(2) sigma.
- ``hough``: Canny edges and scikit-image's circular Hough transform over the radius range
  (log-spaced radii, half a pixel apart at least), peaks kept apart across radii.
- ``otsu_watershed``: Otsu threshold of a smoothed contrast image, holes filled (a dark rim
  around a bright centre becomes a disk), distance-transform watershed from the distance
  maxima; centre = region centroid, radius = sqrt(area / pi).

Each runs on a contrast image in which droplets are bright (``contrast_image``) and knows
the radius range a user would give it (``radius_min_px``, ``radius_max_px``): its scales,
radii and distances follow from it, and images whose smallest droplets are large are
block-averaged first (``pixel_step``) so that large droplets cost what small ones do.
``tune`` picks the rest (which contrast, thresholds, spacing) by a coordinate search for
the best F1 on one scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import color, feature, filters, measure, segmentation, transform
from skimage.util import img_as_float

from bench.classical import coordinate_search

CONTRASTS = ("bright", "dark", "deviation")
METHODS = ("blob_log", "hough", "otsu_watershed")

GRIDS = {
    "blob_log": {
        "contrast": list(CONTRASTS),
        "threshold": [0.02, 0.05, 0.1, 0.2, 0.3],
        "sigma_low": [0.5, 0.7, 1.0],
        "sigma_high": [0.7, 1.0, 1.4],
        "overlap": [0.3, 0.5, 0.9],
    },
    "hough": {
        "contrast": list(CONTRASTS),
        "edge_sigma": [1.0, 2.0, 3.0],
        "edge_quantile": [0.7, 0.8, 0.9, 0.95],
        "threshold": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "min_distance": [0.5, 1.0, 1.5, 2.0],
    },
    "otsu_watershed": {
        "contrast": list(CONTRASTS),
        "smooth": [0.0, 1.0, 2.0],
        "threshold_factor": [0.5, 0.75, 1.0, 1.25, 1.5],
        "min_distance": [0.5, 0.8, 1.2],
        "fill_holes": [True, False],
    },
}
STARTS = {
    "blob_log": {"contrast": "deviation", "threshold": 0.1, "sigma_low": 0.7, "sigma_high": 1.0, "overlap": 0.5},
    "hough": {"contrast": "deviation", "edge_sigma": 2.0, "edge_quantile": 0.9, "threshold": 0.4, "min_distance": 1.0},
    "otsu_watershed": {
        "contrast": "deviation",
        "smooth": 1.0,
        "threshold_factor": 1.0,
        "min_distance": 0.8,
        "fill_holes": True,
    },
}
# The radii a Hough transform tries: at most this many, log-spaced over the range.
HOUGH_RADII = 30


def contrast_image(image: np.ndarray, kind: str) -> np.ndarray:
    """A ``(h, w)`` image in [0, 1] where droplets are bright and the background 0.

    Parameters
    ----------
    image : ``(h, w, 3)`` float RGB in [0, 1] (as ``droplet_core.imaging.images.load_image`` gives).
    kind : ``"bright"`` (luminance: droplets brighter than the background, fluorescence),
        ``"dark"`` (1 - luminance) or ``"deviation"`` (distance of the RGB from the image
        median: bodies, rims and highlights all stand out).

    The result is shifted so the median (background) is 0, scaled so its 99.5th
    percentile is 1 and clipped, so thresholds carry over between images.
    """
    rgb = img_as_float(image)
    grey = color.rgb2gray(rgb)
    if kind == "bright":
        raw = grey
    elif kind == "dark":
        raw = 1.0 - grey
    elif kind == "deviation":
        raw = np.sqrt(np.sum((rgb - np.median(rgb, axis=(0, 1))) ** 2, axis=2))
    else:
        raise ValueError(f"unknown contrast {kind!r}; choose one of {', '.join(CONTRASTS)}")
    shifted = raw - np.median(raw)
    return np.clip(shifted / (np.percentile(shifted, 99.5) + 1e-12), 0.0, 1.0)


def pixel_step(radius_min_px: float) -> int:
    """Block-averaging factor that keeps the smallest droplets at least about 4 px in radius."""
    return max(1, int(radius_min_px // 4))


def _reduced(contrast: np.ndarray, step: int) -> np.ndarray:
    return transform.downscale_local_mean(contrast, (step, step)) if step > 1 else contrast


def _to_image_px(found: pd.DataFrame, step: int) -> pd.DataFrame:
    """Coordinates of a ``step``-times block-averaged image back in pixels of the image."""
    return pd.DataFrame(
        {
            "x": step * found["x"] + (step - 1) / 2,
            "y": step * found["y"] + (step - 1) / 2,
            "radius": step * found["radius"],
        }
    )


def detect_blob_log(
    contrast: np.ndarray,
    radius_min_px: float,
    radius_max_px: float,
    *,
    threshold: float,
    sigma_low: float,
    sigma_high: float,
    overlap: float,
) -> pd.DataFrame:
    """``blob_log`` with scales from ``sigma_low * r_min / sqrt 2`` to ``sigma_high * r_max / sqrt 2``.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius``, px.
    """
    step = pixel_step(radius_min_px)
    low, high = sigma_low * radius_min_px / math.sqrt(2) / step, sigma_high * radius_max_px / math.sqrt(2) / step
    blobs = feature.blob_log(
        _reduced(contrast, step),
        min_sigma=max(low, 0.5),
        max_sigma=max(high, low + 0.5),
        num_sigma=10,
        threshold=threshold,
        overlap=overlap,
        log_scale=True,
        exclude_border=False,
    ).reshape(-1, 3)
    found = pd.DataFrame({"x": blobs[:, 1], "y": blobs[:, 0], "radius": math.sqrt(2) * blobs[:, 2]})
    return _to_image_px(found, step)


def detect_hough(
    contrast: np.ndarray,
    radius_min_px: float,
    radius_max_px: float,
    *,
    edge_sigma: float,
    edge_quantile: float,
    threshold: float,
    min_distance: float,
) -> pd.DataFrame:
    """Circles through Canny edges: Hough votes (fraction of the circle on edges) above ``threshold``.

    Centres closer than ``min_distance * r_min`` keep only the best circle.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius``, px.
    """
    step = pixel_step(radius_min_px)
    reduced = _reduced(contrast, step)
    edges = feature.canny(
        reduced, sigma=edge_sigma, low_threshold=edge_quantile - 0.1, high_threshold=edge_quantile, use_quantiles=True
    )
    low, high = max(radius_min_px / step, 1.0), max(radius_max_px / step, 1.0)
    radii = np.unique(np.round(2 * np.geomspace(low, high, HOUGH_RADII)) / 2)
    votes = transform.hough_circle(edges, radii, normalize=True)
    # A circle is kept where its votes are the most within min_distance in x and y over all
    # radii: the cross-radius suppression of hough_circle_peaks, as one separable maximum filter.
    distance = max(1, int(round(min_distance * low)))
    strongest = ndimage.maximum_filter(
        votes, size=(2 * len(radii) + 1, 2 * distance + 1, 2 * distance + 1), mode="constant"
    )
    k, row, col = np.nonzero((votes == strongest) & (votes >= threshold))
    found = pd.DataFrame({"x": col.astype(float), "y": row.astype(float), "radius": radii[k]})
    return _to_image_px(found, step)


def detect_otsu_watershed(
    contrast: np.ndarray,
    radius_min_px: float,
    radius_max_px: float,
    *,
    smooth: float,
    threshold_factor: float,
    min_distance: float,
    fill_holes: bool,
) -> pd.DataFrame:
    """Otsu threshold (times ``threshold_factor``), then a distance-transform watershed.

    Watershed seeds are maxima of the distance to the background at least
    ``min_distance * r_min`` apart; regions smaller than a disk of radius ``r_min / 2``
    are dropped.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` (of the disk of equal area), px.
    """
    step = pixel_step(radius_min_px)
    reduced = _reduced(contrast, step)
    smoothed = filters.gaussian(reduced, smooth) if smooth > 0 else reduced
    mask = smoothed > threshold_factor * filters.threshold_otsu(smoothed)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    low = radius_min_px / step
    distance = ndimage.distance_transform_edt(mask)
    seeds = feature.peak_local_max(
        distance, min_distance=max(1, int(round(min_distance * low))), labels=measure.label(mask), exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    regions = segmentation.watershed(-distance, markers, mask=mask)
    props = [p for p in measure.regionprops(regions) if p.area >= math.pi * (low / 2) ** 2]
    found = pd.DataFrame(
        {
            "x": [p.centroid[1] for p in props],
            "y": [p.centroid[0] for p in props],
            "radius": [math.sqrt(p.area / math.pi) for p in props],
        },
        dtype=float,
    )
    return _to_image_px(found, step)


DETECTORS = {"blob_log": detect_blob_log, "hough": detect_hough, "otsu_watershed": detect_otsu_watershed}


def make_detector(
    method: str, params: dict, radius_min_px: float, radius_max_px: float
) -> Callable[[np.ndarray], pd.DataFrame]:
    """``image -> droplets`` (``x``, ``y``, ``radius`` px) for ``method`` with ``params``.

    ``image`` is ``(h, w, 3)`` float RGB in [0, 1]; ``params`` holds ``contrast`` and the
    detector's keywords.
    """
    detect = DETECTORS[method]
    keywords = {k: v for k, v in params.items() if k != "contrast"}
    return lambda image: detect(contrast_image(image, params["contrast"]), radius_min_px, radius_max_px, **keywords)


def tune(
    method: str, image: np.ndarray, radius_min_px: float, radius_max_px: float, score: Callable[[pd.DataFrame], float]
) -> tuple[dict, float, int]:
    """Parameters of ``method`` with the best ``score`` (e.g. F1 against truth) on ``image``.

    Returns
    -------
    parameters, their score, number of detector runs.
    """
    contrasts: dict[str, np.ndarray] = {}
    detect = DETECTORS[method]

    def evaluate(params: dict) -> float:
        kind = params["contrast"]
        if kind not in contrasts:
            contrasts[kind] = contrast_image(image, kind)
        keywords = {k: v for k, v in params.items() if k != "contrast"}
        return score(detect(contrasts[kind], radius_min_px, radius_max_px, **keywords))

    return coordinate_search(evaluate, GRIDS[method], STARTS[method])
