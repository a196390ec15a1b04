"""Classical droplet detectors (scikit-image ``blob_log``, trackpy ``locate``), tuned on truth.

Each detector runs on a contrast image in which droplets are bright on a dark
background; which contrast image works best is itself tuned:

- ``grey_inverted``: 1 - luminance (droplet bodies are darker than the substrate);
- ``saturation``: HSV saturation (droplets are coloured, the substrate nearly grey);
- ``rgb_deviation``: Euclidean distance of the pixel's RGB from the image median (the
  background of a crowded droplet image is its most common value), so bodies, rims
  and highlights all stand out.

Each is shifted so the median (background) is 0, scaled so its 99.5th percentile is 1
and clipped to [0, 1], which makes detector thresholds comparable across contrast
images and images.

Tuning is a coordinate search over a small grid, maximising F1 against one synthetic
scene's truth (``TUNING_SEED``); ``tuned_blob_log`` and ``tuned_trackpy`` tune once per
process (under a minute each on 2 CPU cores) and then detect with the tuned parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pandas as pd
import trackpy
from skimage import color
from skimage.feature import blob_log
from skimage.util import img_as_float

from droplet_core.detection.matching import match_droplets, match_pairs
from droplet_core.synthetic.scenes import SceneSettings, make_scene

TUNING_SEED = 100
CONTRASTS = ("grey_inverted", "saturation", "rgb_deviation")
SQRT2 = float(np.sqrt(2.0))

BLOB_LOG_GRID = {
    "contrast": list(CONTRASTS),
    "threshold": [0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.25],
    "min_sigma": [0.5, 0.7, 1.0, 1.4],
    "max_sigma": [3.0, 4.0, 6.0, 8.0],
    "num_sigma": [5, 10, 15],
    "overlap": [0.1, 0.3, 0.5, 0.7, 0.9],
}
BLOB_LOG_START = {
    "contrast": "rgb_deviation",
    "threshold": 0.05,
    "min_sigma": 0.7,
    "max_sigma": 6.0,
    "num_sigma": 10,
    "overlap": 0.5,
}

TRACKPY_GRID = {
    "contrast": list(CONTRASTS),
    "diameter": [3, 5, 7, 9],
    # Masses of a [0, 1] contrast image: about 0.2-1.5 for droplets with diameter 5.
    "minmass": [0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5, 4.0],
    "separation": [1.5, 2.0, 3.0, 4.0, 6.0],
    "percentile": [0.0, 30.0, 64.0],
}
TRACKPY_START = {"contrast": "rgb_deviation", "diameter": 5, "minmass": 0.2, "separation": 3.0, "percentile": 64.0}

trackpy.quiet()


def contrast_image(rgb: np.ndarray, kind: str) -> np.ndarray:
    """A ``(h, w)`` image in [0, 1] where droplets are bright, background 0.

    Parameters
    ----------
    rgb : ``(h, w, 3)`` image, uint8 or float in [0, 1].
    kind : one of ``CONTRASTS``.
    """
    rgb = img_as_float(rgb)
    if kind == "grey_inverted":
        raw = 1.0 - color.rgb2gray(rgb)
    elif kind == "saturation":
        raw = color.rgb2hsv(rgb)[..., 1]
    elif kind == "rgb_deviation":
        raw = np.sqrt(np.sum((rgb - np.median(rgb, axis=(0, 1))) ** 2, axis=2))
    else:
        raise ValueError(f"unknown contrast {kind!r}; choose one of {', '.join(CONTRASTS)}")
    shifted = raw - np.median(raw)
    return np.clip(shifted / (np.percentile(shifted, 99.5) + 1e-9), 0.0, 1.0)


def detect_blob_log(
    image: np.ndarray, *, threshold: float, min_sigma: float, max_sigma: float, num_sigma: int, overlap: float
) -> pd.DataFrame:
    """``blob_log`` on a contrast image; radius = sqrt(2) sigma (a disk's LoG peak).

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` in px.
    """
    blobs = blob_log(
        image,
        min_sigma=min_sigma,
        max_sigma=max_sigma,
        num_sigma=num_sigma,
        threshold=threshold,
        overlap=overlap,
        exclude_border=False,
    ).reshape(-1, 3)
    return pd.DataFrame({"x": blobs[:, 1], "y": blobs[:, 0], "radius": SQRT2 * blobs[:, 2]})


def detect_trackpy(
    image: np.ndarray,
    *,
    diameter: int,
    minmass: float,
    separation: float,
    percentile: float,
    radius_per_size: float = 1.0,
) -> pd.DataFrame:
    """trackpy ``locate`` on a contrast image; radius = ``radius_per_size`` x size.

    trackpy's ``size`` is the radius of gyration of the brightness inside a ``diameter``
    window, not an edge radius, hence the tuned factor.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` in px.
    """
    found = trackpy.locate(
        image, diameter, minmass=minmass, separation=separation, percentile=percentile, engine="python"
    )
    return pd.DataFrame(
        {
            "x": found["x"].to_numpy(float),
            "y": found["y"].to_numpy(float),
            "radius": radius_per_size * found["size"].to_numpy(float),
        }
    )


def coordinate_search(
    score: Callable[[dict], float], grid: dict[str, list], start: dict, max_rounds: int = 3
) -> tuple[dict, float, int]:
    """Maximise ``score`` over a grid, one parameter at a time, until nothing improves.

    A full grid of these sizes takes thousands of detector runs; coordinate search
    needs tens and, for these smooth responses, lands on the same optimum or close.

    Returns
    -------
    best parameters, their score, number of distinct evaluations.
    """
    cache: dict[tuple, float] = {}

    def evaluate(params: dict) -> float:
        key = tuple(sorted(params.items()))
        if key not in cache:
            cache[key] = score(params)
        return cache[key]

    best, best_score = dict(start), evaluate(start)
    for _ in range(max_rounds):
        improved = False
        for name, values in grid.items():
            for value in values:
                candidate = {**best, name: value}
                candidate_score = evaluate(candidate)
                if candidate_score > best_score:
                    best, best_score, improved = candidate, candidate_score, True
        if not improved:
            break
    return best, best_score, len(cache)


def _contrast_cache(rgb: np.ndarray) -> Callable[[str], np.ndarray]:
    """``kind -> contrast_image(rgb, kind)``, each computed once."""
    return functools.cache(lambda kind: contrast_image(rgb, kind))


def tune_blob_log(rgb: np.ndarray, truth: pd.DataFrame) -> tuple[dict, float, int]:
    """Tune ``blob_log`` and its contrast image for F1 on one scene.

    Returns
    -------
    parameters (``contrast`` plus ``detect_blob_log``'s keywords), F1, evaluations.
    """
    contrast = _contrast_cache(rgb)

    def f1(params: dict) -> float:
        found = detect_blob_log(contrast(params["contrast"]), **_without_contrast(params))
        return match_droplets(truth, found).f1

    return coordinate_search(f1, BLOB_LOG_GRID, BLOB_LOG_START)


def tune_trackpy(rgb: np.ndarray, truth: pd.DataFrame) -> tuple[dict, float, int]:
    """Tune trackpy ``locate`` and its contrast image for F1 on one scene, then the size factor.

    ``radius_per_size`` is the median of true radius / trackpy size over matched pairs,
    which minimises the median relative radius error on the tuning scene.

    Returns
    -------
    parameters (``contrast`` plus ``detect_trackpy``'s keywords), F1, evaluations.
    """
    contrast = _contrast_cache(rgb)

    def f1(params: dict) -> float:
        found = detect_trackpy(contrast(params["contrast"]), **_without_contrast(params))
        return match_droplets(truth, found).f1

    best, score, evaluations = coordinate_search(f1, TRACKPY_GRID, TRACKPY_START)
    found = detect_trackpy(contrast(best["contrast"]), **_without_contrast(best))
    true_index, found_index = match_pairs(truth, found)
    ratio = truth["radius"].to_numpy(float)[true_index] / found["radius"].to_numpy(float)[found_index]
    return {**best, "radius_per_size": float(np.median(ratio))}, score, evaluations


def _without_contrast(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "contrast"}


TUNERS = {"blob_log": tune_blob_log, "trackpy": tune_trackpy}


@functools.cache
def tuned_parameters(
    method: str, seed: int = TUNING_SEED, scene: SceneSettings = SceneSettings()
) -> tuple[dict, float, int]:
    """Parameters of ``method`` (a key of ``TUNERS``) tuned on scene ``seed`` made with ``scene``.

    Returns
    -------
    parameters, tuning-scene F1, evaluations; computed once per process.
    """
    rgb, truth = make_scene(seed, scene)
    return TUNERS[method](rgb, truth)


def make_detector(method: str, params: dict) -> Callable[[np.ndarray], pd.DataFrame]:
    """``rgb -> droplets`` (``x``, ``y``, ``radius`` px) for ``method`` with ``params``.

    ``rgb`` is ``(h, w, 3)``, uint8 or float in [0, 1].
    """
    detect = {"blob_log": detect_blob_log, "trackpy": detect_trackpy}[method]
    keywords = _without_contrast(params)
    return lambda rgb: detect(contrast_image(rgb, params["contrast"]), **keywords)


def tuned_blob_log(rgb: np.ndarray) -> pd.DataFrame:
    """Droplets in ``rgb`` (``(h, w, 3)``, uint8 or float) by ``blob_log`` tuned on a scene.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` in px.
    """
    return make_detector("blob_log", tuned_parameters("blob_log")[0])(rgb)


def tuned_trackpy(rgb: np.ndarray) -> pd.DataFrame:
    """Droplets in ``rgb`` (``(h, w, 3)``, uint8 or float) by trackpy tuned on a scene.

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` in px.
    """
    return make_detector("trackpy", tuned_parameters("trackpy")[0])(rgb)
