"""The generality bench's own harness: its scoring and its tuned classical detectors against truth."""

import pandas as pd
import pytest

from bench import circle_detectors
from bench.generality import (
    classical_detector,
    render_scene,
    score,
    score_detector,
    second_variant,
    within_image,
)

pytestmark = pytest.mark.slow  # runs the generality bench's fits


def test_droplets_cut_by_the_border_are_told_apart():
    circles = pd.DataFrame({"x": [5.0, 3.0, 50.0, 96.0], "y": [5.0, 40.0, 97.0, 50.0], "radius": [5.0, 4.0, 2.0, 4.0]})
    # A 100 x 100 image: pixel centres 0..99; the second and fourth circles reach past its edges.
    assert within_image(circles, (100, 100, 3)).tolist() == [True, False, True, False]


def test_score_ignores_out_of_focus_droplets_and_measures_bias():
    truth = pd.DataFrame(
        {"x": [10.0, 40.0, 70.0], "y": [10.0, 10.0, 10.0], "radius": [4.0, 4.0, 4.0], "in_focus": [True, True, False]}
    )
    shifted = pd.DataFrame(
        {
            "x": [10.5, 40.5, 70.0],
            "y": [9.0, 9.0, 10.0],
            "radius": [4.0, 5.0, 4.0],
            "sd_x": [0.2, 0.4, 1.0],
            "sd_y": [0.2, 0.2, 1.0],
            "sd_radius": [0.1, 0.1, 1.0],
        }
    )
    row = score(truth, shifted)
    # The detection of the out-of-focus droplet is dropped; missing it would cost nothing either.
    assert (row["n_true"], row["n_found"], row["f1"]) == (2, 2, 1.0)
    assert score(truth, shifted.iloc[:2])["f1"] == 1.0
    assert row["dx"] == pytest.approx(0.5) and row["dy"] == pytest.approx(-1.0)
    assert row["dx_r"] == pytest.approx(0.125)
    assert row["radius_error"] == pytest.approx(0.125)  # median of 0 and 0.25
    # 90 % half widths 1.645 sd: x 0.33 (misses 0.5) and 0.66 (holds it); y misses both; radius holds one.
    assert (row["cover_x"], row["cover_y"], row["cover_radius"]) == (0.5, 0.0, 0.5)


def test_otsu_watershed_tuned_on_one_fluorescence_scene_finds_the_droplets_of_another():
    variant = second_variant(
        "fluorescence", "small sparse", width_px=320, height_px=320, radius_max_px=20.0, density="sparse"
    )
    tuning, scored = render_scene(variant, 100), render_scene(variant, 1)
    params, tuning_f1, _ = circle_detectors.tune(
        "otsu_watershed",
        tuning.image,
        variant.radius_min_px,
        variant.radius_max_px,
        lambda found: score(tuning.truth, found)["f1"],
    )
    row = score_detector(
        classical_detector("otsu_watershed", params, variant.radius_min_px, variant.radius_max_px), [scored]
    )
    assert row["n_true"] >= 10
    assert row["f1"] > 0.9
    assert row["radius_error"] < 0.1
    assert abs(row["dx"]) < 0.3 and abs(row["dy"]) < 0.3
