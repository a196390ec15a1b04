"""Fits with a reused appearance (Levenberg-Marquardt), checked against synthetic truth."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from droplet_core.detection.matching import match_droplets
from droplet_core.inference import engine
from droplet_core.inference.droplet_switching import residual_peaks, residual_spread
from droplet_core.inference.engine import run_fit
from droplet_core.inference.reuse_fit import _solved_shading
from droplet_core.inference.uncertainty import droplet_uncertainty
from droplet_core.models.common import SHADING_GRID, shading_basis
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, make_scene

pytestmark = pytest.mark.slow  # fits, then refits with the learned look

SCENE = SceneSettings(width_px=160, height_px=128, n_droplets=150, radius_min_px=1.5, radius_max_px=6.0)


def scene_image(seed: int):
    image, truth = make_scene(seed, SCENE)
    return image.astype(np.float32) / 255.0, truth


@pytest.fixture(scope="module")
def source_fit():
    """A templates fit that learned its masks on one scene."""
    image, _ = scene_image(7)
    return run_fit(image, FitSettings(steps=300, downscale=1), image_sha256="a" * 64)


def test_shading_is_solved_exactly_for_fixed_droplets():
    rng = np.random.default_rng(0)
    height, width = 50, 70
    rows, columns = shading_basis(height, width)
    truth, start = (rng.normal(0.0, 0.1, (*SHADING_GRID, 2)) for _ in range(2))
    draw = lambda grid: np.einsum("hi,ijc,wj->hwc", rows, grid, columns)  # noqa: E731
    residual = (draw(truth) - draw(start)).reshape(height * width, 2)
    solved = _solved_shading(residual, {"bg_shading": start}, height, width)
    np.testing.assert_allclose(solved, truth, atol=1e-5)


def test_residual_peaks_keep_only_the_droplets_polarity():
    rows, cols = np.mgrid[:64, :64]
    residual = np.zeros((64, 64, 1), np.float32)
    for x, y, contrast in ((16, 16, -0.5), (48, 40, 0.5)):
        residual[..., 0] += contrast * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / 8.0)
    residual += np.random.default_rng(1).normal(0.0, 0.005, residual.shape).astype(np.float32)
    none_active = {"x": np.zeros(1), "y": np.zeros(1), "radius": np.ones(1)}
    spread = residual_spread(residual)
    dark = residual_peaks(residual, none_active, none_active["radius"], np.zeros(1), -1.0, spread)
    bright = residual_peaks(residual, none_active, none_active["radius"], np.zeros(1), 1.0, spread)
    assert [tuple(p[:2]) for p in dark] == [(16.0, 16.0)]
    assert [tuple(p[:2]) for p in bright] == [(48.0, 40.0)]


def test_a_reused_appearance_converges_in_a_few_iterations_and_beats_a_new_fit(source_fit):
    image, truth = scene_image(8)
    new = run_fit(image, FitSettings(downscale=1), image_sha256="e" * 64)
    reused = run_fit(
        image,
        FitSettings(downscale=1, appearance_from=source_fit.fit_id),
        image_sha256="e" * 64,
        appearance_source=source_fit,
    )
    # At most the default 150 iterations; it stops once an iteration gains under 1 % RMSE.
    assert reused.report.steps_done <= 20
    assert len(reused.losses) == reused.report.steps_done
    assert np.mean(reused.report.rmse) < np.mean(new.report.rmse)
    score = match_droplets(truth, reused.droplets)
    assert score.f1 >= max(0.9, match_droplets(truth, new.droplets).f1 - 0.02), score
    # The guide's scales are the Laplace sds (positive, per droplet), not the starting 0.01.
    assert np.all(reused.params["x_auto_scale"][reused.warm_start.active > 0] > 0)
    assert not np.allclose(reused.params["x_auto_scale"], 0.01)


def test_a_reuse_fit_is_deterministic_and_stops_on_request(source_fit):
    image, _ = scene_image(8)
    settings = FitSettings(steps=6, downscale=1, appearance_from=source_fit.fit_id)
    one, two = (run_fit(image, settings, image_sha256="e" * 64, appearance_source=source_fit) for _ in range(2))
    pd.testing.assert_frame_equal(one.droplets, two.droplets)
    stop = threading.Event()
    stopped = run_fit(
        image,
        settings,
        image_sha256="e" * 64,
        appearance_source=source_fit,
        progress=lambda progress: stop.set(),
        stop=stop,
    )
    assert stopped.status == "stopped"
    assert stopped.report.steps_done == 1
    assert len(stopped.droplets) > 0


def test_a_reuse_fits_uncertainty_from_its_last_jacobian_is_the_one_taken_anew(source_fit, monkeypatch):
    """The Laplace sds of a reuse fit come from its last iteration's Jacobian (one render); taken
    anew at the end (a render per parameter) they differ by a small fraction, and nothing else
    in the table does."""
    image, _ = scene_image(8)
    settings = FitSettings(downscale=1, appearance_from=source_fit.fit_id)
    reused = run_fit(image, settings, image_sha256="e" * 64, appearance_source=source_fit)

    def taken_anew(reuse, evaluate_at, locs, prior_curvature, observed, noise_sd, radius_px, layout):
        active = reuse.run.active
        return droplet_uncertainty(evaluate_at, locs, prior_curvature, observed, active, layout, noise_sd, radius_px)

    monkeypatch.setattr(engine, "reuse_uncertainty", taken_anew)
    anew = run_fit(image, settings, image_sha256="e" * 64, appearance_source=source_fit)
    uncertain = ["sd_x", "sd_y", "sd_radius", "p_exists", "in_focus"]
    pd.testing.assert_frame_equal(reused.droplets.drop(columns=uncertain), anew.droplets.drop(columns=uncertain))
    for column in ("sd_x", "sd_y", "sd_radius"):
        ratio = reused.droplets[column].to_numpy() / anew.droplets[column].to_numpy()
        assert np.median(np.abs(ratio - 1.0)) < 0.02, column
        assert np.percentile(np.abs(ratio - 1.0), 90) < 0.1, column
    assert np.mean(np.abs(reused.droplets["p_exists"] - anew.droplets["p_exists"]) > 0.05) < 0.02
