"""Cheap droplet candidates (Laplacian of Gaussian on the background-subtracted channel).

They start the fits: the SVI model then refines positions and radii, learns the look,
and prunes the candidates that a learned appearance explains away (highlights, rims).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import blob_log, peak_local_max

SQRT2 = float(np.sqrt(2.0))


def contrast_image(channel: np.ndarray, background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deviation from the background of a ``(h, w, c)`` channel.

    Returns the magnitude ``(h, w)`` (Euclidean over channels) and the signed deviation
    ``(h, w, c)``, both relative to ``background`` ``(c,)``, by default the per-channel median
    (the background of a droplet image whose droplets cover under half of it).
    """
    level = np.median(channel, axis=(0, 1)) if background is None else np.asarray(background)
    signed = channel - np.reshape(level, (1, 1, -1))
    return np.sqrt(np.sum(signed**2, axis=2)), signed


def find_candidates(
    channel: np.ndarray,
    *,
    min_radius_px: float = 1.0,
    max_radius_px: float = 12.0,
    threshold_sd: float = 4.0,
    max_count: int | None = None,
) -> pd.DataFrame:
    """Locate droplet candidates in a ``(h, w, c)`` channel.

    Parameters
    ----------
    channel : (h, w, c) float image in [0, 1].
    min_radius_px, max_radius_px : radius range searched, in pixels of ``channel``.
    threshold_sd : LoG response threshold in robust standard deviations of the contrast.
    max_count : keep at most this many candidates (the strongest).

    Returns
    -------
    DataFrame with columns ``x`` (column), ``y`` (row), ``radius`` (px, sqrt(2) sigma of the
    best LoG scale) and ``contrast`` (signed deviation from the background at the centre,
    averaged over channels, smoothed at the droplet's scale), strongest first.
    """
    magnitude, signed = contrast_image(channel)
    noise = 1.4826 * np.median(np.abs(magnitude - np.median(magnitude))) + 1e-6
    blobs = blob_log(
        magnitude,
        min_sigma=max(min_radius_px / SQRT2, 0.5),
        max_sigma=max_radius_px / SQRT2,
        num_sigma=10,
        threshold=threshold_sd * noise * 0.25,
        overlap=0.5,
        exclude_border=False,
    )
    if blobs.size == 0:
        return pd.DataFrame({"x": [], "y": [], "radius": [], "contrast": []})
    rows, cols, sigmas = blobs[:, 0], blobs[:, 1], blobs[:, 2]
    contrast = centre_contrast(signed, cols, rows)
    table = pd.DataFrame({"x": cols, "y": rows, "radius": SQRT2 * sigmas, "contrast": contrast})
    table = table.iloc[np.argsort(-np.abs(table["contrast"].to_numpy()), kind="stable")]
    if max_count is not None:
        table = table.head(max_count)
    return table.reset_index(drop=True)


def strong_peaks(
    channel: np.ndarray,
    min_contrast: float,
    *,
    min_radius_px: float = 1.0,
    max_radius_px: float = 12.0,
    min_separation_px: int = 2,
) -> pd.DataFrame:
    """Blobs of a ``(h, w, c)`` channel whose centre contrast exceeds ``min_contrast``.

    For a residual, where only a few strong blobs matter among thousands of noise blobs:
    ``blob_log`` would find them all and prune their overlaps pair by pair in Python
    (seconds), so here the strong local maxima of the centre contrast come first and the
    Laplacian-of-Gaussian scale only sizes them.

    Parameters
    ----------
    channel : (h, w, c) float image.
    min_contrast : smallest |contrast| kept, in channel units (as ``centre_contrast``).
    min_radius_px, max_radius_px : radius range, in pixels of ``channel``.
    min_separation_px : peaks closer than this (in pixels, per axis) keep only the stronger.

    Returns
    -------
    DataFrame with columns ``x``, ``y``, ``radius`` (px, sqrt(2) sigma of the strongest
    scale-normalised LoG response of the peak's own sign) and ``contrast`` (signed),
    strongest first.
    """
    _, signed = contrast_image(channel)
    mean = signed.mean(axis=2)
    contrast = smoothed_contrast(mean)
    peaks = peak_local_max(
        np.abs(contrast), min_distance=min_separation_px, threshold_abs=min_contrast, exclude_border=False
    )
    rows, cols = peaks[:, 0], peaks[:, 1]
    sigmas = np.linspace(max(min_radius_px / SQRT2, 0.5), max_radius_px / SQRT2, 10)
    # The signed response, not that of the magnitude: inside a large blob the magnitude's
    # noise is all positive and its fine scales would outweigh the blob's own.
    sign = np.sign(contrast[rows, cols])
    response = -(sigmas[:, None] ** 2) * laplacian_of_gaussian_at(mean, rows, cols, sigmas) * sign
    radius = SQRT2 * sigmas[np.argmax(response, axis=0)] if rows.size else np.zeros(0)
    table = pd.DataFrame(
        {"x": cols.astype(float), "y": rows.astype(float), "radius": radius, "contrast": contrast[rows, cols]}
    )
    return table.iloc[np.argsort(-np.abs(table["contrast"].to_numpy()), kind="stable")].reset_index(drop=True)


# A peak of the residual overlaps a droplet of the fit by at most this fraction of its own
# radius to be a droplet of its own.
ADDED_OVERLAP_FRACTION = 0.5
# The band outside a droplet's edge (fraction of its radius) where residual peaks are its own.
EDGE_BAND_FRACTION = 0.15


def apart_from_droplets(
    centres_px: np.ndarray, radius_px: np.ndarray, peak_xy_px: np.ndarray, peak_radius_px: np.ndarray
) -> np.ndarray:
    """``(k,)`` whether each residual peak (``peak_xy_px`` ``(k, 2)``, ``peak_radius_px``
    ``(k,)``) lies apart from every droplet of a fit (``centres_px`` ``(n, 2)``, ``radius_px``
    ``(n,)``, all in the same pixels): a droplet missed, not part of one drawn.

    Droplets touch but do not overlap much, and a large droplet's edge is seldom drawn
    perfectly: a peak on that edge (or inside) is what the droplet left unexplained. Every
    droplet is asked, not only the one whose centre is nearest: on a large droplet's rim the
    nearest centre is often a small neighbour's or an inclusion's.
    """
    peak_xy_px = np.asarray(peak_xy_px).reshape(-1, 2)
    if len(centres_px) == 0:
        return np.ones(len(peak_xy_px), dtype=bool)
    reach = (1.0 + EDGE_BAND_FRACTION) * radius_px
    within = cKDTree(centres_px).query_ball_point(
        peak_xy_px, r=float(reach.max()) + ADDED_OVERLAP_FRACTION * peak_radius_px
    )
    return np.array(
        [
            np.all(np.hypot(*(centres_px[near] - xy).T) > reach[near] + ADDED_OVERLAP_FRACTION * r)
            for xy, r, near in zip(peak_xy_px, peak_radius_px, within)
        ],
        dtype=bool,
    )


# Peaks whose neighbourhoods are read at once (bounds the memory of the patches).
PEAKS_PER_BATCH = 512


def laplacian_of_gaussian_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """``(len(sigmas), k)`` what ``ndimage.gaussian_laplace(image, sigma)`` gives at the ``k``
    pixels ``rows``, ``cols`` of an ``(h, w)`` image, for every sigma (px).

    For a few peaks, filtering the whole image at every scale is almost all wasted: each
    response is the image's neighbourhood of the pixel weighted by the filter's impulse
    response (the filter is symmetric), with the image's border reflected as ndimage does.
    """
    reach = int(4.0 * float(np.max(sigmas)) + 0.5) + 1
    impulse = np.zeros((2 * reach + 1, 2 * reach + 1))
    impulse[reach, reach] = 1.0
    kernels = np.stack([ndimage.gaussian_laplace(impulse, sigma, mode="constant") for sigma in sigmas])
    padded = np.pad(np.asarray(image, np.float64), reach, mode="symmetric")
    window = np.arange(2 * reach + 1)
    responses = []
    for start in range(0, len(rows), PEAKS_PER_BATCH):
        r, c = rows[start : start + PEAKS_PER_BATCH], cols[start : start + PEAKS_PER_BATCH]
        patches = padded[r[:, None, None] + window[:, None], c[:, None, None] + window[None, :]]
        responses.append(kernels.reshape(len(sigmas), -1) @ patches.reshape(len(r), -1).T)
    return np.concatenate(responses, axis=1) if responses else np.zeros((len(sigmas), 0))


def smoothed_contrast(mean_signed: np.ndarray) -> np.ndarray:
    """``(h, w)`` deviation from the background (``contrast_image``'s signed ``(h, w, c)``
    averaged over channels, ``(h, w)``) smoothed by a 1 px Gaussian: what peaks are found in."""
    return ndimage.gaussian_filter(mean_signed, 1.0)


def centre_contrast(signed: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed deviation from the background at droplet centres ``(n,)``.

    Parameters
    ----------
    signed : ``(h, w, c)`` deviation from the background (``contrast_image``'s second output).
    x, y : ``(n,)`` centres, column and row in pixels (rounded down to a pixel).

    Returns
    -------
    ``(n,)`` deviation averaged over channels and smoothed by a 1 px Gaussian.
    """
    smoothed = smoothed_contrast(signed.mean(axis=2))
    rows = np.clip(np.asarray(y).astype(int), 0, smoothed.shape[0] - 1)
    cols = np.clip(np.asarray(x).astype(int), 0, smoothed.shape[1] - 1)
    return smoothed[rows, cols]
