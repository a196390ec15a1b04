"""The second renderer's truth against its own pixels: areas, centroids, edges, contacts."""

import numpy as np
import pandas as pd
import pytest

from droplet_core.imaging.images import load_image
from tests.second_renderer import (
    FAMILIES,
    FluorescenceOptics,
    SeedlikeOptics,
    encode,
    render,
)

SMALL = {"width_px": 200, "height_px": 160}
SMALL_RADII = {
    "seedlike": {"n_droplets": 250},
    "fluorescence": {"radius_max_px": 20.0},
    "brightfield": {"radius_max_px": 25.0},
    "phase": {"radius_max_px": 20.0},
    "packed": {"radius_max_px": 20.0},
}


def isolated(truth: pd.DataFrame, shape: tuple[int, int], margin: float, min_radius: float) -> pd.DataFrame:
    """Droplets of at least ``min_radius`` with ``margin`` px of clear space to every neighbour and the border."""
    xy, r = truth[["x", "y"]].to_numpy(), truth["radius"].to_numpy()
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2) - r[:, None] - r[None, :]
    np.fill_diagonal(distance, np.inf)
    h, w = shape
    inside = (
        (xy[:, 0] - r > margin)
        & (xy[:, 0] + r < w - 1 - margin)
        & (xy[:, 1] - r > margin)
        & (xy[:, 1] + r < h - 1 - margin)
    )
    keep = (distance.min(axis=1) > margin) & inside & (r >= min_radius)
    return truth[keep]


def window(image: np.ndarray, x: float, y: float, reach: float):
    """The pixels within ``reach`` of ``(x, y)``: their values, columns and rows (1-D)."""
    r0, r1 = int(np.floor(y - reach)), int(np.ceil(y + reach)) + 1
    c0, c1 = int(np.floor(x - reach)), int(np.ceil(x + reach)) + 1
    rows, cols = np.mgrid[r0:r1, c0:c1]
    near = np.hypot(cols - x, rows - y) <= reach
    return image[r0:r1, c0:c1][near], cols[near], rows[near]


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_seed_and_truth_format(family):
    image_a, truth_a = render(family, 3, **SMALL, **SMALL_RADII[family])
    image_b, truth_b = render(family, 3, **SMALL, **SMALL_RADII[family])
    image_c, truth_c = render(family, 4, **SMALL, **SMALL_RADII[family])
    np.testing.assert_array_equal(image_a, image_b)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    assert not np.array_equal(image_a, image_c)
    assert list(truth_a.columns) == ["x", "y", "radius", "in_focus", "bubble"]
    assert len(truth_a) >= 5
    assert truth_a["x"].between(0, 199).all() and truth_a["y"].between(0, 159).all()
    if family == "fluorescence":
        assert image_a.shape == (160, 200) and image_a.dtype == np.uint16
    else:
        assert image_a.shape == (160, 200, 3) and image_a.min() >= 0.0 and image_a.max() <= 1.0


def test_fluorescence_disk_above_half_maximum_has_the_true_area_and_centre():
    optics = FluorescenceOptics()
    image, truth = render("fluorescence", 5, clean=True, density="sparse", out_of_focus_fraction=0.0)
    signal = image.astype(float) - optics.offset_adu - optics.gain_adu_per_photon * optics.background_photons
    checked = isolated(truth, image.shape, margin=8, min_radius=10)
    assert len(checked) >= 5
    for row in checked.itertuples():
        values, cols, rows = window(signal, row.x, row.y, row.radius + 7)
        peak = signal[int(round(row.y)), int(round(row.x))]
        area = np.count_nonzero(values >= 0.5 * peak)
        assert area == pytest.approx(np.pi * row.radius**2, rel=0.04)
        assert np.sum(values * cols) / values.sum() == pytest.approx(row.x, abs=0.1)
        assert np.sum(values * rows) / values.sum() == pytest.approx(row.y, abs=0.1)


def test_out_of_focus_droplets_are_flagged_and_dimmer():
    image, truth = render("fluorescence", 6, clean=True, density="sparse", out_of_focus_fraction=0.5)
    assert truth["in_focus"].any() and (~truth["in_focus"]).any()
    centre = image[np.round(truth["y"]).astype(int), np.round(truth["x"]).astype(int)].astype(float)
    # Brightness per droplet is drawn from one range; off the focal plane the centre loses light.
    assert np.median(centre[~truth["in_focus"]]) < 0.8 * np.median(centre[truth["in_focus"]])


def test_seedlike_absorbing_caps_are_centred_on_the_truth():
    image, truth = render("seedlike", 7, clean=True, n_droplets=400)
    background = np.round(np.asarray(SeedlikeOptics().background_rgb) * 255) / 255
    darkening = np.abs(1.0 - image / background).sum(axis=2)
    checked = isolated(truth, image.shape[:2], margin=3, min_radius=3)
    assert len(checked) >= 10
    for row in checked.itertuples():
        values, cols, rows = window(darkening, row.x, row.y, row.radius + 2)
        assert np.sum(values * cols) / values.sum() == pytest.approx(row.x, abs=0.1)
        assert np.sum(values * rows) / values.sum() == pytest.approx(row.y, abs=0.1)


# Brightfield spheres bend their edge's light out of the objective (a thick dark rim);
# seed-like caps are flat enough that only a thin, faint edge darkens.
@pytest.mark.parametrize(("family", "rim_darkness"), [("brightfield", 0.8), ("seedlike", 0.97)])
def test_radius_is_the_outer_edge_of_the_dark_rim(family, rim_darkness):
    options = {"brightfield": {"density": "crowded"}, "seedlike": {"n_droplets": 400}}[family]
    image, truth = render(family, 8, clean=True, **options)
    grey = image.mean(axis=2)
    background = np.median(grey)
    checked = isolated(truth, grey.shape, margin=4, min_radius=6)
    checked = checked[~checked["bubble"]]
    assert len(checked) >= 3
    for row in checked.itertuples():
        values, cols, rows = window(grey, row.x, row.y, row.radius + 3)
        d = np.hypot(cols - row.x, rows - row.y)
        just_outside = values[(d > row.radius + 1.5) & (d < row.radius + 2.5)]
        just_inside = values[(d > row.radius - 1.5) & (d < row.radius - 0.5)]
        assert just_outside.mean() > 0.95 * background
        assert just_inside.mean() < rim_darkness * background


def test_phase_contrast_droplets_are_dark_with_a_bright_halo():
    image, truth = render("phase", 9, clean=True, density="sparse")
    grey = image[..., 0]
    open_field = 0.5  # PhaseOptics.background_level, far from any droplet
    checked = isolated(truth, grey.shape, margin=6, min_radius=8)
    assert len(checked) >= 3
    for row in checked.itertuples():
        values, cols, rows = window(grey, row.x, row.y, row.radius + 4)
        d = np.hypot(cols - row.x, rows - row.y)
        assert values[d < 0.5 * row.radius].mean() < 0.95 * open_field
        assert values[(d > row.radius + 1) & (d < row.radius + 3)].mean() > open_field


def test_dic_shades_opposite_sides_of_a_droplet_opposite_ways():
    image, truth = render("phase", 9, clean=True, density="sparse", contrast="dic")
    grey = image[..., 0]
    shear = np.array([np.cos(0.785), np.sin(0.785)])  # PhaseOptics.dic_direction
    checked = isolated(truth, grey.shape, margin=6, min_radius=10)
    assert len(checked) >= 3
    for row in checked.itertuples():
        # Just inside the edge, where the thickness changes fastest along the shear.
        reach = (row.radius - 1.5) * shear
        ahead = grey[int(round(row.y + reach[1])), int(round(row.x + reach[0]))]
        behind = grey[int(round(row.y - reach[1])), int(round(row.x - reach[0]))]
        assert abs(ahead - behind) > 0.1
        assert (ahead - 0.5) * (behind - 0.5) < 0  # one side brighter than the open field, one darker


@pytest.mark.slow
def test_packed_emulsion_droplets_press_on_their_neighbours():
    image, truth = render("packed", 10)
    xy, r = truth[["x", "y"]].to_numpy(), truth["radius"].to_numpy()
    assert r.min() >= 8.0 and r.max() <= 35.0
    # Centre distance over the sum of radii: below 1 where two droplets press into each other.
    ratio = np.linalg.norm(xy[:, None] - xy[None], axis=2) / (r[:, None] + r[None, :])
    np.fill_diagonal(ratio, np.inf)
    assert np.all(ratio.min(axis=1) < 0.95)  # every droplet has at least one flattened contact
    assert np.all(ratio > 0.9)  # slightly flattened: no droplet pushed deep into another


def test_sizes_span_one_to_fifty_in_one_image():
    image, truth = render(
        "fluorescence", 11, width_px=1024, height_px=1024, radius_min_px=3.0, radius_max_px=150.0, density="sparse"
    )
    assert truth["radius"].min() >= 3.0 and truth["radius"].max() <= 150.0
    assert truth["radius"].max() / truth["radius"].min() > 20


@pytest.mark.parametrize("family", ["fluorescence", "brightfield"])
def test_encoded_image_loads_as_rendered(family):
    image, _ = render(family, 12, **SMALL, **SMALL_RADII[family])
    loaded = load_image(encode(image))
    expected = image.astype(float) / 65535.0 if image.dtype == np.uint16 else image
    if expected.ndim == 2:
        expected = np.repeat(expected[..., None], 3, axis=2)
    np.testing.assert_allclose(loaded, expected, atol=1e-6)
