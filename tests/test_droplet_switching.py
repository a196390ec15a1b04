"""Switching droplets on and off between fit steps, checked on drawn residuals and values."""

from __future__ import annotations

import numpy as np

from droplet_core.inference.droplet_switching import prune_and_merge, residual_peaks, residual_spread


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
    peaks = residual_peaks(residual, values, drawn, np.ones(2), -1.0, residual_spread(residual))
    assert [tuple(np.round(p[:2])) for p in peaks] == [missed]


def test_a_faint_droplet_far_above_the_noise_stands_among_strong_ones():
    # Bubbles draw five to ten times the contrast of the droplets beside them (a brightfield
    # field); a faint droplet is still many noise sds strong, so it is no fit artefact.
    strength = np.array([1.0, 0.9, 1.1, 0.95, 0.12, 0.15])
    values = {"x": 30.0 + 30.0 * np.arange(6.0), "y": np.full(6, 50.0)}
    radius = np.full(6, 5.0)
    np.testing.assert_array_equal(prune_and_merge(values, strength, np.ones(6), radius, (100, 220), 0.01), np.ones(6))
    # One under the noise (and far under the others) is negligible.
    weak = strength.copy()
    weak[4] = 0.008
    assert prune_and_merge(values, weak, np.ones(6), radius, (100, 220), 0.01)[4] == 0.0
    # A faint one mostly outside the image may be the field's shading at the border...
    at_corner = {**values, "x": values["x"].copy(), "y": values["y"].copy()}
    at_corner["x"][4], at_corner["y"][4] = 1.0, 1.0
    assert prune_and_merge(at_corner, strength, np.ones(6), radius, (100, 220), 0.01)[4] == 0.0
    # ...and so is a faint disk far larger than the droplets around it.
    large = radius.copy()
    large[4] = 20.0
    kept = prune_and_merge(values, strength, np.ones(6), large, (100, 220), 0.01)
    np.testing.assert_array_equal(kept, [1, 1, 1, 1, 0, 1])
