"""A fit's verdict on itself, and the one droplet count: real short fits with known truth.

The verdict must flag fits that did not explain the image (the wrong channel, droplets
far larger than the model can draw at the chosen resolution, pure noise) and must not
flag good fits of the synthetic scenes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from droplet_core.imaging.images import noise_sd_estimate
from droplet_core.inference import verdict as verdict_filters
from droplet_core.inference.engine import run_fit
from droplet_core.inference.verdict import FitVerdict, judge_fit
from droplet_core.measurements.counting import (
    count_of_table,
    doubtful_mask,
    droplet_count,
)
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, make_scene

pytestmark = pytest.mark.slow  # judges real fits

SMALL_SCENE = SceneSettings(width_px=200, height_px=160, n_droplets=250)


def fit(image: np.ndarray, settings: FitSettings):
    return run_fit(image, settings, image_sha256="e" * 64)


def scene(seed: int) -> np.ndarray:
    return make_scene(seed, SMALL_SCENE)[0].astype(np.float32) / 255.0


def bright_disks(radius_px: float, count: int, side_px: int, seed: int = 0) -> np.ndarray:
    """``(side, side, 3)`` grey image: ``count`` separate bright disks on a dark field, with noise."""
    return bright_disks_and_centres(radius_px, count, side_px, seed)[0]


def bright_disks_and_centres(
    radius_px: float, count: int, side_px: int, seed: int = 0, inclusion_px: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``bright_disks`` and their ``(count, 2)`` centres (x, y px); each disk holding a dark
    inclusion of radius ``inclusion_px`` half its radius from its centre when that is not 0."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:side_px, :side_px]
    image = np.full((side_px, side_px), 0.08)
    centres: list[np.ndarray] = []
    while len(centres) < count:
        centre = rng.uniform(radius_px, side_px - radius_px, 2)
        if all(np.hypot(*(centre - other)) > 2.2 * radius_px for other in centres):
            centres.append(centre)
            image[np.hypot(cols - centre[0], rows - centre[1]) <= radius_px] = 0.8
            if inclusion_px:
                inside = centre + (0.5 * radius_px, 0.0)
                image[np.hypot(cols - inside[0], rows - inside[1]) <= inclusion_px] = 0.3
    image = np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)
    return np.repeat(image[:, :, None], 3, axis=2).astype(np.float32), np.array(centres)


@pytest.mark.parametrize("seed", [1, 2])
def test_good_fits_of_synthetic_scenes_are_not_flagged(seed):
    result = fit(scene(seed), FitSettings())
    verdict = result.report.verdict
    assert verdict.quality == "good", verdict
    assert verdict.ok and not verdict.problems and verdict.explained_fraction > 0.9


def test_the_wrong_channel_is_flagged():
    image = scene(1)
    # Droplets in red and green only; the blue channel is a flat field with noise.
    image[:, :, 2] = np.clip(0.5 + np.random.default_rng(0).normal(0.0, 0.01, image.shape[:2]), 0.0, 1.0)
    verdict = fit(image, FitSettings(channel="b")).report.verdict
    assert verdict.quality == "failed", verdict
    assert any("channel" in a for a in verdict.advice)


def test_droplets_far_outside_the_size_range_are_flagged():
    # Radius-40 px disks fitted at full resolution with the count given: far beyond the
    # radii the model draws at downscale 1.
    image = bright_disks(40.0, 12, 400)
    verdict = fit(image, FitSettings(downscale=1, droplets=12, initializer="log")).report.verdict
    assert verdict.quality == "failed", verdict
    assert verdict.explained_fraction < 0.4 and verdict.residual_spots > 12
    assert any("increase the downscale" in a for a in verdict.advice), verdict.advice


def test_pure_noise_is_flagged():
    image = np.clip(0.5 + np.random.default_rng(0).normal(0.0, 0.1, (160, 200, 3)), 0.0, 1.0).astype(np.float32)
    result = fit(image, FitSettings())
    verdict = result.report.verdict
    assert verdict.quality == "failed", verdict
    assert verdict.structure_to_noise < 0.5


def test_judge_fit_sees_an_unexplained_image_and_a_perfect_reconstruction():
    image, centres = bright_disks_and_centres(6.0, 20, 160)
    image = image[:, :, :1]
    flat = np.full_like(image, float(np.median(image)))
    missed = judge_fit(image, flat, np.zeros((0, 2)), np.zeros(0), np.zeros(0), (1.0, 12.0))
    assert missed.quality == "failed" and missed.explained_fraction < 0.1 and missed.residual_spots >= 15
    perfect = judge_fit(image, image, centres, np.full(20, 6.0), np.ones(20), (1.0, 12.0))
    assert perfect.quality == "good" and perfect.explained_fraction == 1.0 and perfect.residual_spots == 0
    at_cap = judge_fit(image, image, centres, np.full(20, 12.0), np.ones(20), (1.0, 12.0))
    assert at_cap.at_radius_limit_fraction == 1.0 and "downscale" in " ".join(at_cap.advice)
    assert FitVerdict.from_dict(missed.to_dict()) == missed


def test_spots_on_the_droplets_found_make_a_fit_partial_and_apart_from_them_failed():
    # Droplets with inclusions the model drew as plain disks: the fit found every droplet and
    # drew their look only in part. The same residual where the fit found no droplet there is
    # droplets missed.
    image, centres = bright_disks_and_centres(8.0, 20, 200, seed=4, inclusion_px=2.5)
    plain, _ = bright_disks_and_centres(8.0, 20, 200, seed=4)
    image, plain = image[:, :, :1], plain[:, :, :1]
    radius, sure = np.full(20, 8.0), np.ones(20)

    drawn_in_part = judge_fit(image, plain, centres, radius, sure, (1.0, 12.0))
    assert drawn_in_part.spots_on_droplets >= 15 and drawn_in_part.residual_spots == 0
    assert drawn_in_part.quality == "partial", drawn_in_part
    assert "drawn only in part" in drawn_in_part.problems[0]

    elsewhere = (centres + 100.0) % 200.0
    not_there = judge_fit(image, plain, elsewhere, radius, sure, (1.0, 12.0))
    assert not_there.residual_spots >= 15 and not_there.quality == "failed", not_there


def test_a_verdict_readied_ahead_is_the_one_judged_cold(monkeypatch):
    # A time-lapse readies the image's part of each frame's verdict in another thread; the
    # verdict must not change, and must not take that part again.
    image, centres = bright_disks_and_centres(6.0, 20, 160, seed=3)
    image = image[:, :, :1]
    missed_half = image.copy()
    missed_half[:, 80:] = float(np.median(image))
    found = centres[centres[:, 0] < 70]
    verdict_filters._observed_sides.clear()
    cold = judge_fit(image, missed_half, found, np.full(len(found), 6.0), np.ones(len(found)), (1.0, 12.0))
    assert cold.residual_spots >= 5
    verdict_filters._observed_sides.clear()
    verdict_filters.ready_verdict(image, (1.0, 12.0))

    def taken_again(*args):
        raise AssertionError("the image's part of the verdict was taken again")

    monkeypatch.setattr(verdict_filters, "_spot_threshold", taken_again)
    assert judge_fit(image, missed_half, found, np.full(len(found), 6.0), np.ones(len(found)), (1.0, 12.0)) == cold


@pytest.mark.parametrize("sigma_px", [0.7, 6.0, 36.2, 102.4])
def test_filters_on_the_dct_are_ndimages_reflect_filters(sigma_px):
    # The verdict filters products of DCT-II coefficients; they must be scipy.ndimage's own
    # filters with its reflect border, including kernels longer than the image (the high-pass).
    image = np.random.default_rng(5).normal(size=(90, 120, 1))
    spectrum = verdict_filters._spectrum(image)
    height, width = image.shape[:2]
    blurred = verdict_filters._image(spectrum * verdict_filters._transfer(height, width, sigma_px, (0, 0))[:, :, None])
    assert np.allclose(blurred[:, :, 0], ndimage.gaussian_filter(image[:, :, 0], sigma_px), rtol=0, atol=1e-12)
    laplacian = verdict_filters._transfer(height, width, sigma_px, (2, 0)) + verdict_filters._transfer(
        height, width, sigma_px, (0, 2)
    )
    expected = sigma_px**2 * np.abs(ndimage.gaussian_laplace(image[:, :, 0], sigma_px))
    assert np.allclose(verdict_filters._log_magnitude(spectrum, laplacian, sigma_px), expected, rtol=0, atol=1e-12)


def test_noise_estimate_ignores_the_droplets():
    rng = np.random.default_rng(3)
    image = bright_disks(8.0, 30, 200)[:, :, :1] * 0.0 + rng.normal(0.5, 0.05, (200, 200, 1))
    assert noise_sd_estimate(image) == pytest.approx(0.05, rel=0.1)
    with_droplets = bright_disks(8.0, 30, 200)  # noise sd 0.02 (before clipping)
    assert noise_sd_estimate(with_droplets) == pytest.approx(0.02, rel=0.15)


def test_count_is_the_expected_number_and_lies_in_its_interval():
    p = np.array([0.99] * 20 + [0.3] * 10 + [0.05] * 30)
    count = droplet_count(p, len(p))
    assert count.count == round(p.sum()) == 24
    assert count.low <= count.count <= count.high
    assert count.candidates == 60 and count.doubtful == 40
    table = pd.DataFrame({"x": np.zeros(60), "y": np.zeros(60), "radius": np.ones(60), "p_exists": p})
    assert count_of_table(table) == count
    assert doubtful_mask(table).sum() == 40
    old = count_of_table(table.drop(columns="p_exists"))
    assert (old.count, old.low, old.high, old.doubtful) == (60, 60, 60, 0)
