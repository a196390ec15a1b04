"""Cheap candidate detection, checked against planted blobs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from droplet_core.detection.log_candidates import laplacian_of_gaussian_at, strong_peaks


def planted_blobs(rng, shape, blobs, noise_sd):
    """``(h, w, 1)`` noise plus Gaussian blobs ``(x, y, radius_px, contrast)``."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(0.0, noise_sd, shape)
    for x, y, radius, contrast in blobs:
        sigma = radius / np.sqrt(2.0)
        image += contrast * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2.0 * sigma**2))
    return image[..., None].astype(np.float32)


def test_strong_peaks_finds_the_strong_blobs_and_sizes_them():
    rng = np.random.default_rng(0)
    strong = [(30, 40, 2.0, 0.5), (120, 25, 5.0, -0.4), (80, 100, 8.0, 0.3)]
    weak = [(150, 110, 3.0, 0.03)]
    residual = planted_blobs(rng, (128, 180), strong + weak, noise_sd=0.01)
    found = strong_peaks(residual, min_contrast=0.1, min_radius_px=1.0, max_radius_px=12.0)
    assert len(found) == len(strong)
    for x, y, radius, contrast in strong:
        distance = np.hypot(found["x"] - x, found["y"] - y)
        match = found.iloc[int(np.argmin(distance))]
        assert distance.min() <= 1.0
        assert np.sign(match["contrast"]) == np.sign(contrast)
        assert abs(match["radius"] - radius) <= 0.35 * radius
    assert list(np.abs(found["contrast"])) == sorted(np.abs(found["contrast"]), reverse=True)


def test_strong_peaks_of_pure_noise_is_empty():
    residual = np.random.default_rng(1).normal(0.0, 0.01, (64, 64, 1)).astype(np.float32)
    assert strong_peaks(residual, min_contrast=0.06).empty


def test_laplacian_of_gaussian_at_peaks_is_the_whole_image_filter_read_there():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(70, 90))
    # Corners and edges too: the border is reflected as ndimage does.
    rows = np.array([0, 69, 0, 35, 3, 66, 20])
    cols = np.array([0, 89, 89, 0, 45, 2, 60])
    sigmas = np.linspace(0.7, 8.5, 5)
    whole = np.stack([ndimage.gaussian_laplace(image, sigma)[rows, cols] for sigma in sigmas])
    np.testing.assert_allclose(laplacian_of_gaussian_at(image, rows, cols, sigmas), whole, atol=1e-12)
    assert laplacian_of_gaussian_at(image, rows[:0], cols[:0], sigmas).shape == (5, 0)
