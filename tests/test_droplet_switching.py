"""Switching droplets on and off between fit steps, checked on drawn residuals and values."""

from __future__ import annotations

import numpy as np

from droplet_core.inference.droplet_switching import residual_peaks


def dark_blobs(
    shape: tuple[int, int], blobs: list[tuple[float, float, float]], noise_sd: float, seed: int
) -> np.ndarray:
    """``(h, w, 1)`` residual of Gaussian dark blobs ``(x, y, sigma)`` of depth 0.5 plus noise."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    residual = np.zeros((*shape, 1), np.float32)
    for x, y, sigma in blobs:
        residual[..., 0] -= 0.5 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    return residual + np.random.default_rng(seed).normal(0.0, noise_sd, residual.shape).astype(np.float32)


def test_a_peak_on_a_large_droplets_rim_is_refused_even_beside_a_smaller_droplet():
    # A droplet of 40 px at (80, 80) with an inclusion of 4 px drawn near its rim; the residual
    # shows a blob on the rim, nearer the inclusion's centre than the large droplet's, and a
    # missed droplet well apart from both.
    values = {"x": np.array([80.0, 80.0]), "y": np.array([80.0, 112.0]), "radius": np.array([40.0, 4.0])}
    drawn = values["radius"]
    rim, missed = (80.0, 121.0), (20.0, 150.0)
    residual = dark_blobs((170, 170), [(*rim, 2.5), (*missed, 2.5)], 0.005, seed=3)
    peaks = residual_peaks(residual, values, drawn, np.ones(2), polarity=-1.0)
    assert [tuple(np.round(p[:2])) for p in peaks] == [missed]
