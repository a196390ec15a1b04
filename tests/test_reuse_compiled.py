"""A reuse fit's compiled step (``reuse_compiled``) against the host's (``reuse_fit``), on a small synthetic pair."""

from __future__ import annotations

import numpy as np
import pytest

from bench.reuse_compiled import (
    LINEARISED_ARGS,
    captured_reuse_fit,
    compiled_step,
    exact_blocks,
    first_iteration,
    host_step,
)
from droplet_core.detection.matching import match_droplets
from droplet_core.inference import reuse_compiled, reuse_fit
from droplet_core.inference.damping import INITIAL_DAMPING
from droplet_core.inference.engine import run_fit
from droplet_core.inference.uncertainty import at_locs, by_site, droplet_jacobian, stacked_by_site
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, make_scene

pytestmark = pytest.mark.slow  # a full fit, then reuse fits

SCENE = SceneSettings(width_px=128, height_px=128, n_droplets=30, radius_min_px=2.0, radius_max_px=8.0)


def scene_image(seed: int):
    image, truth = make_scene(seed, SCENE)
    return image.astype(np.float32) / 255.0, truth


@pytest.fixture(scope="module")
def reuse_request():
    """A full fit of one scene, and the ``run_fit`` arguments of a reuse fit of another."""
    image, _ = scene_image(3)
    full = run_fit(image, FitSettings(steps=150, downscale=1), image_sha256="a" * 64)
    other, truth = scene_image(4)
    settings = FitSettings(steps=8, downscale=1, appearance_from=full.fit_id)
    return {"image": other, "settings": settings, "image_sha256": "b" * 64, "appearance_source": full}, truth


@pytest.fixture(scope="module")
def inputs(reuse_request):
    """The inputs of the reuse fit's first step (``bench.reuse_compiled.first_iteration``)."""
    fit_args, _ = captured_reuse_fit(**reuse_request[0])
    return first_iteration(fit_args)


def assert_same_step(step, damping, expected_step, expected_damping, active):
    on = active > 0
    assert on.sum() >= 20
    scale = np.abs(expected_step[on]).max()
    assert scale > 0.05  # the droplets did move
    np.testing.assert_allclose(step[on], expected_step[on], rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(damping, expected_damping, rtol=1e-5)


def test_compiled_step_is_the_host_algebra_on_the_same_jacobian(inputs):
    step, damping = compiled_step(inputs)
    expected_step, expected_damping = host_step(inputs, exact_blocks(inputs))
    assert_same_step(step, damping, expected_step, expected_damping, inputs["active"])
    # Some droplets' first tries failed: the second, more damped try was taken too.
    assert np.any(damping > INITIAL_DAMPING)


def test_compiled_step_is_the_host_algebra_for_a_model_of_three_channels():
    image, _ = scene_image(3)
    settings = FitSettings(model="neural", channel="rgb", steps=100, downscale=1)
    full = run_fit(image, settings, image_sha256="a" * 64)
    other, _ = scene_image(4)
    reuse = FitSettings(model="neural", channel="rgb", steps=2, downscale=1, appearance_from=full.fit_id)
    fit_args, _ = captured_reuse_fit(image=other, settings=reuse, image_sha256="b" * 64, appearance_source=full)
    rgb = first_iteration(fit_args)
    assert rgb["observed"].shape[2] == 3
    step, damping = compiled_step(rgb)
    expected_step, expected_damping = host_step(rgb, exact_blocks(rgb))
    assert_same_step(step, damping, expected_step, expected_damping, rgb["active"])


def test_a_reused_linearisation_is_brought_up_to_date_as_on_the_host(inputs):
    """After a step, the Jacobian of the locations before it is reused (every other iteration)."""
    args = tuple(inputs[name] for name in LINEARISED_ARGS)
    linearisation = reuse_compiled.linearised(*args, inputs["radius_px"])
    blocks = exact_blocks(inputs)
    step, _ = compiled_step(inputs, linearisation)
    moved_locs = {name: inputs["locs"][name] + change for name, change in by_site(step, inputs["locs"]).items()}
    moved_params = {**inputs["params"], **{f"{name}_auto_loc": loc for name, loc in moved_locs.items()}}
    evaluation = inputs["evaluate"](moved_params, *args[3:])
    moved = {
        **inputs,
        "params": moved_params,
        "locs": moved_locs,
        "prior_curvature": stacked_by_site(evaluation.prior_curvature, moved_locs),
    }
    evaluate_at = at_locs(inputs["evaluate"], moved_params, inputs["observed"], inputs["anchors"], inputs["spec"])
    updated, _ = reuse_fit._brought_up_to_date(
        blocks, None, inputs["locs"], evaluate_at, moved_locs, moved["prior_curvature"], inputs["active"]
    )
    expected_step, expected_damping = host_step(moved, updated)
    step_again, damping = compiled_step(moved, linearisation)
    assert_same_step(step_again, damping, expected_step, expected_damping, inputs["active"])


def test_forward_mode_derivatives_agree_with_the_host_forward_differences(inputs):
    exact = exact_blocks(inputs)
    evaluate_at = at_locs(inputs["evaluate"], inputs["params"], inputs["observed"], inputs["anchors"], inputs["spec"])
    differences = droplet_jacobian(
        evaluate_at, inputs["locs"], inputs["active"], inputs["spec"].layout, inputs["radius_px"]
    )
    np.testing.assert_array_equal(exact.pixels, differences.pixels)
    on = inputs["active"] > 0
    exact_diagonal = np.einsum("nii->ni", exact.gram())[on]
    differences_diagonal = np.einsum("nii->ni", differences.gram())[on]
    # Forward differences of 0.01 err by about 0.01 / radius, more where the bilinear
    # sampling of the masks kinks: each droplet's curvature agrees to a few per cent.
    relative = np.abs(exact_diagonal - differences_diagonal) / np.maximum(differences_diagonal, 1e-12)
    assert np.median(relative) < 0.02
    assert np.quantile(relative, 0.9) < 0.1


def test_a_reuse_fit_recovers_the_droplets_alike_on_both_paths(reuse_request, monkeypatch):
    request, truth = reuse_request
    scores, droplets = {}, {}
    for path in reuse_compiled.PATHS:
        monkeypatch.setenv(reuse_compiled.PATH_VARIABLE, path)
        result = run_fit(**request)
        scores[path], droplets[path] = match_droplets(truth, result.droplets), result.droplets
    assert scores["host"].f1 >= 0.9, scores
    assert scores["compiled"].f1 >= scores["host"].f1 - 0.02, scores
    assert scores["compiled"].median_radius_error <= scores["host"].median_radius_error + 0.01, scores
    assert len(droplets["compiled"]) == len(droplets["host"])


def test_the_path_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(reuse_compiled.PATH_VARIABLE, "compiled")
    assert reuse_compiled.compiled_chosen()
    monkeypatch.setenv(reuse_compiled.PATH_VARIABLE, "host")
    assert not reuse_compiled.compiled_chosen()
    monkeypatch.delenv(reuse_compiled.PATH_VARIABLE)
    assert reuse_compiled.compiled_chosen() == (reuse_compiled.jax.default_backend() != "cpu")
    monkeypatch.setenv(reuse_compiled.PATH_VARIABLE, "gpu")
    with pytest.raises(ValueError, match=reuse_compiled.PATH_VARIABLE):
        reuse_compiled.compiled_chosen()
