"""Droplets of every size: the pyramid detector, the automatic downscale and the outline read-out.

Checked against known truth: planted detection tables, drawn masks, and scenes of both
renderers (``droplet_core.synthetic.scenes`` and the independent ``tests/second_renderer.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from droplet_core.detection import scale
from droplet_core.detection.log_candidates import centre_contrast, contrast_image
from droplet_core.detection.matching import match_pairs
from droplet_core.imaging.channels import extract_channel
from droplet_core.imaging.images import load_image
from droplet_core.inference.engine import run_fit
from droplet_core.models.common import background_level
from droplet_core.models.outline import outline, outline_columns
from droplet_core.models.templates import EXTENT
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import demo_image_bytes, demo_truth, family_settings, make_scene
from tests import second_renderer


def detections(radii_px, p_exists=0.9):
    radii = np.asarray(radii_px, float)
    return pd.DataFrame({"x": np.arange(radii.size) * 10.0, "y": 0.0, "radius": radii, "p_exists": p_exists})


def test_pyramid_levels_halve_down_to_the_smallest_useful_side():
    assert scale.pyramid_factors(400, 500) == [1, 2, 4, 8]
    assert scale.pyramid_factors(1024, 1024) == [1, 2, 4, 8, 16]
    # A huge image starts coarser, so the detector never sees more than PYRAMID_MAX_PIXELS.
    first = scale.pyramid_factors(4096, 4096)[0]
    assert first == 2 and (4096 // first) ** 2 <= scale.PYRAMID_MAX_PIXELS


def test_downscale_keeps_the_small_droplets_resolvable():
    rng = np.random.default_rng(0)
    radii = rng.uniform(12.0, 45.0, 200)
    choice = scale.choose_downscale(detections(radii), 1024, 1024)
    small = np.quantile(radii, scale.SMALL_RADIUS_QUANTILE)
    median = np.median(radii)
    assert choice.factor == min(int(small // scale.MIN_FIT_RADIUS_PX), int(median // scale.MEDIAN_FIT_RADIUS_PX))
    assert small / choice.factor >= scale.MIN_FIT_RADIUS_PX
    assert median / choice.factor >= scale.MEDIAN_FIT_RADIUS_PX
    assert "small droplets" in choice.reason and choice.detections == 200


def test_detections_outside_their_band_do_not_decide_the_downscale():
    large = detections([40.0] * 20)
    gaps = detections([10.0] * 20).assign(x=lambda t: t["x"] + 500.0)
    alone = scale.choose_downscale(large, 1000, 1000).factor
    both = pd.concat([large.assign(in_band=True), gaps.assign(in_band=False)], ignore_index=True)
    assert scale.choose_downscale(both, 1000, 1000).factor == alone
    assert scale.choose_downscale(both.assign(in_band=True), 1000, 1000).factor < alone


def test_faint_small_detections_do_not_decide_the_downscale():
    confident = detections(np.full(100, 30.0), p_exists=0.95)
    noise = detections(np.full(30, 1.5), p_exists=0.55)
    choice = scale.choose_downscale(pd.concat([confident, noise]), 1024, 1024)
    assert choice.factor == int(30.0 // scale.MEDIAN_FIT_RADIUS_PX)


def test_small_droplets_in_a_large_image_are_fitted_under_the_pixel_limit():
    choice = scale.choose_downscale(detections(np.full(50, 2.0)), 3000, 3000)
    assert (3000 // choice.factor) ** 2 <= scale.MAX_FIT_PIXELS
    assert "under" in choice.reason


def test_a_huge_droplet_brings_the_downscale_up_to_what_a_fit_draws():
    table = detections([2.0] * 20 + [300.0])
    table.loc[20, ["x", "y"]] = 400.0  # in the middle of the image
    choice = scale.choose_downscale(table, 800, 800)
    assert 300.0 / choice.factor <= scale.MAX_FIT_RADIUS_PX
    assert "largest" in choice.reason


def test_a_droplet_mostly_outside_the_image_does_not_set_the_downscale():
    """Its size is a guess from a small part of its outline (the detector oversizes such ones)."""
    table = detections([4.0] * 20 + [120.0, 120.0])
    table["y"] = 200.0
    table.loc[20, ["x", "y"]] = (-40.0, 200.0)  # a third of its disk in the image
    table.loc[21, ["x", "y"]] = (-40.0, 200.0)
    assert scale.choose_downscale(table.drop(index=21), 400, 400).factor == 1
    table.loc[21, "x"] = 20.0  # most of it in the image: it sets the scale
    choice = scale.choose_downscale(table, 400, 400)
    assert choice.factor == 3 and "largest droplet (120 px)" in choice.reason


def test_without_droplets_the_pixel_budget_decides():
    choice = scale.choose_downscale(detections([]), 2000, 2000)
    assert choice.factor == 4 and np.isnan(choice.radius_median_px)
    assert "too few" in choice.reason


def drawn_disk(size, centre_x, centre_y, edge, highlight=None):
    """``(1, size, size)`` mask: a dark disk (radii units) with a dark rim and an optional
    bright highlight ``(x, y, sd)``, on the templates' grid spanning -EXTENT..EXTENT."""
    axis = np.linspace(-EXTENT, EXTENT, size)
    x, y = np.meshgrid(axis, axis)
    distance = np.hypot(x - centre_x, y - centre_y)
    mask = -0.3 * np.clip((edge - distance) / 0.08 + 0.5, 0.0, 1.0)
    mask -= 0.2 * ((distance > 0.8 * edge) & (distance < edge))
    if highlight is not None:
        hx, hy, sd = highlight
        mask += 0.6 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * sd**2)) * (distance < edge)
    return mask[None]


@pytest.mark.parametrize("centre, edge", [((0.0, 0.0), 1.0), ((0.12, -0.08), 0.9), ((-0.1, 0.15), 1.1)])
def test_outline_reads_the_edge_not_the_highlight(centre, edge):
    mask = drawn_disk(61, *centre, edge, highlight=(centre[0], centre[1] + 0.5 * edge, 0.2))
    centre_x, centre_y, radius = outline(mask, EXTENT, np.array([8.0]))
    assert centre_x[0] == pytest.approx(centre[0], abs=0.03)
    assert centre_y[0] == pytest.approx(centre[1], abs=0.03)
    assert radius[0] == pytest.approx(edge, rel=0.04)


def test_a_blurred_edge_is_read_at_its_middle():
    axis = np.linspace(-EXTENT, EXTENT, 61)
    distance = np.hypot(*np.meshgrid(axis, axis))
    blurred = -0.3 / (1.0 + np.exp((distance - 1.0) / 0.12))[None]
    assert outline(blurred, EXTENT, np.array([8.0])).edge[0] == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("neighbours_shown", [True, False])
def test_a_packed_droplets_outline_stops_at_its_contacts(neighbours_shown):
    # Seven droplets of 10 px pressed together (hexagonal, 20 px apart); each look draws a
    # bright body and a dark line from its edge out to 1.2 radii: the neighbour's half of it.
    size = 61
    axis = np.linspace(-EXTENT, EXTENT, size)
    distance = np.hypot(*np.meshgrid(axis, axis))
    look = 0.3 * (distance < 1.0) - 0.4 * ((distance >= 1.0) & (distance < 1.2))
    angle = np.arange(6) * np.pi / 3
    x = np.concatenate([[0.0], 20.0 * np.cos(angle)])
    y = np.concatenate([[0.0], 20.0 * np.sin(angle)])
    p_exists = np.array([1.0] + [1.0 if neighbours_shown else 0.2] * 6)
    columns = outline_columns(np.stack([look] * 7), EXTENT, x, y, np.full(7, 10.0), {"p_exists": p_exists})
    # Pressed by shown neighbours, the middle droplet's outline is its own 10 px (the contact
    # lines make a hexagon, whose circle is up to 6 % larger); doubtful neighbours press
    # nothing and the outermost step of the look, 12 px, stands.
    if neighbours_shown:
        assert 9.8 <= columns["radius"][0] <= 10.6
    else:
        assert columns["radius"][0] == pytest.approx(12.0, rel=0.04)
    assert np.hypot(columns["x"][0], columns["y"][0]) < 0.2


def scored(truth, found):
    """F1, median relative radius error and mean position bias over radius of ``found``."""
    found = found[found["p_exists"] >= 0.5].reset_index(drop=True)
    true_index, found_index = match_pairs(truth, found)
    precision, recall = len(true_index) / max(len(found), 1), len(true_index) / len(truth)
    r = truth["radius"].to_numpy()[true_index]
    error = {c: (found[c].to_numpy()[found_index] - truth[c].to_numpy()[true_index]) / r for c in ("x", "y", "radius")}
    return {
        "f1": 2 * precision * recall / max(precision + recall, 1e-9),
        "radius_error": float(np.median(np.abs(error["radius"]))),
        "dx_r": float(np.mean(error["x"])),
        "dy_r": float(np.mean(error["y"])),
    }


@pytest.mark.slow
def test_large_fluorescent_droplets_are_fitted_at_their_own_scale():
    rgb, truth = make_scene(3, family_settings("fluorescence", width_px=512, height_px=512, n_droplets=90))
    truth = truth[truth["in_focus"]].reset_index(drop=True)
    result = run_fit(rgb.astype(np.float32) / 255.0, FitSettings(), image_sha256="1" * 64)
    assert result.report.downscale > 1, result.report.downscale_choice
    score = scored(truth, result.droplets)
    assert score["f1"] >= 0.9, score
    assert score["radius_error"] <= 0.08, score


@pytest.mark.slow
def test_an_independent_renderers_packed_emulsion_is_not_split_into_fragments():
    image, truth = second_renderer.render("packed", 7, width_px=384, height_px=384)
    result = run_fit(image, FitSettings(), image_sha256="2" * 64)
    score = scored(truth, result.droplets)
    assert score["f1"] >= 0.95, score
    # Whole droplets, not rim pieces, and centred on their outlines: the thin rim on the lit
    # side is their edge (with the bright body's edge inside it taken instead, every droplet
    # read 0.13-0.15 radii away from the light).
    assert abs(score["dx_r"]) <= 0.05 and abs(score["dy_r"]) <= 0.05, score
    assert score["radius_error"] <= 0.05, score


@pytest.mark.slow
def test_dim_droplets_of_a_packed_emulsion_are_kept():
    # Mid-grey droplets between brighter neighbours are drawn 0.05-0.07 above the shading
    # between them, under the residual's rms (0.07: the look draws the bright, uneven insides
    # imperfectly); pruned against it, four of them were lost here (recall 0.90).
    settings = family_settings("packed", width_px=250, height_px=200)
    rgb, truth = make_scene(
        1, family_settings("packed", width_px=250, height_px=200, n_droplets=settings.n_droplets // 4)
    )
    result = run_fit(rgb.astype(np.float32) / 255.0, FitSettings(), image_sha256="3" * 64)
    found = result.droplets[result.droplets["p_exists"] >= 0.5]
    true_index, _ = match_pairs(truth, found)
    inside = scale.visible_fraction(truth, *rgb.shape[:2]) == 1
    assert np.isin(np.flatnonzero(inside), true_index).all(), truth[
        inside & ~np.isin(np.arange(len(truth)), true_index)
    ]
    assert scored(truth, result.droplets)["f1"] >= 0.95


def ring(n, distance_px, radius_px, p_exists=0.9, centre=(100.0, 100.0)):
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return pd.DataFrame(
        {
            "x": centre[0] + distance_px * np.cos(angle),
            "y": centre[1] + distance_px * np.sin(angle),
            "radius": radius_px,
            "p_exists": p_exists,
        }
    )


def test_a_blob_holding_many_sure_droplets_is_a_cluster_and_they_stand():
    blob = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [40.0], "p_exists": [0.8]})
    # Six sure droplets of 6 px, each seen at two neighbouring levels.
    parts = ring(6, 18.0, 6.0)
    found = scale.outermost_droplets(pd.concat([blob, parts, parts.assign(radius=5.0)], ignore_index=True))
    assert len(found) == 6 and found["radius"].max() == 6.0


def test_a_doubtful_blob_holding_four_sure_droplets_is_a_cluster():
    """Four sure droplets inside a blob the detector doubts (p 0.45) make it a cluster; inside
    a sure droplet they are its rim, inclusions and highlights."""
    parts = ring(4, 18.0, 6.0)
    doubtful = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [40.0], "p_exists": [0.45]})
    found = scale.outermost_droplets(pd.concat([doubtful, parts], ignore_index=True))
    assert len(found) == 4 and found["radius"].max() == 6.0
    sure = scale.outermost_droplets(pd.concat([doubtful.assign(p_exists=0.8), parts], ignore_index=True))
    assert sure["radius"].tolist() == [40.0]


def test_a_doubtful_blob_around_a_certain_droplet_of_a_third_its_size_is_a_cluster():
    """A doubtful blob (p 0.36) of 16 px around a ring of small droplets holds one of 6 px the
    detector is certain of (0.99): the droplets stand. A doubtful droplet's inner texture seen
    as a part of that size is less certain (0.75), and a likely blob keeps such a part inside."""
    blob = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [16.0], "p_exists": [0.36]})
    part = pd.DataFrame({"x": [92.0], "y": [96.0], "radius": [6.0], "p_exists": [0.99]})
    found = scale.outermost_droplets(pd.concat([blob, part], ignore_index=True))
    assert found["radius"].tolist() == [6.0]
    texture = scale.outermost_droplets(pd.concat([blob, part.assign(p_exists=0.75)], ignore_index=True))
    assert texture["radius"].tolist() == [16.0]
    likely = scale.outermost_droplets(pd.concat([blob.assign(p_exists=0.6), part], ignore_index=True))
    assert likely["radius"].tolist() == [16.0]
    # A certain part of under 0.15 of the blob's radius is its highlight or inclusion.
    small = scale.outermost_droplets(pd.concat([blob, part.assign(radius=2.0)], ignore_index=True))
    assert small["radius"].tolist() == [16.0]


def test_a_doubtful_blob_over_two_phase_droplets_gives_way_to_them():
    """Our sparse phase scene 1: the 8x level sees two droplets of 9 px and the shading between
    them as a doubtful droplet of 50 px, with the droplets (certain of one) at 0.19 of its radius."""
    settings = family_settings("phase", n_droplets=family_settings("phase").n_droplets // 3)
    rgb, truth = make_scene(1, settings)
    found = scale.detect_in_image(rgb.astype(np.float32) / 255.0, threshold=scale.CANDIDATE_THRESHOLD)
    assert found["radius"].max() <= 1.5 * truth["radius"].max()
    true_index, _ = match_pairs(truth, found)
    assert len(true_index) == len(truth)


@pytest.mark.parametrize("seed", [6, 12])
def test_a_droplet_no_level_sizes_within_its_band_is_still_found(seed):
    """The second renderer's phase-contrast droplets of 10-40 px: on these scenes one of them
    was kept by no level (each saw it outside its band, or doubted it) and was lost; sure
    detections just outside their band stand where nothing else claims the place."""
    image, truth = second_renderer.render("phase", seed)
    found = scale.detect_in_image(image.astype(np.float32), threshold=scale.CANDIDATE_THRESHOLD)
    large = truth[truth["radius"] > 10.0].reset_index(drop=True)
    true_index, found_index = match_pairs(large, found)
    assert len(true_index) == len(large), large.drop(index=true_index)
    ratio = found["radius"].to_numpy()[found_index] / large["radius"].to_numpy()[true_index]
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


@pytest.mark.slow
def test_the_demo_fit_draws_no_droplet_over_a_ring_of_small_ones():
    """The demo image holds a ring of 7 droplets of 1-6 px around an empty middle, which the
    4x pyramid level sees as a doubtful 16 px droplet; drawn by the fit, it hid the ring."""
    data = demo_image_bytes()
    truth = demo_truth()
    result = run_fit(load_image(data), FitSettings(), image_sha256="4" * 64)
    shown = result.droplets[result.droplets["p_exists"] >= 0.5].reset_index(drop=True)
    assert shown["radius"].max() <= 1.25 * truth["radius"].max()
    true_index, _ = match_pairs(truth, shown)
    missed = truth.drop(index=true_index)
    assert (missed["radius"] < 2.0).all(), missed


def test_visible_fraction_of_disks_cut_by_the_border():
    disks = pd.DataFrame({"x": [-0.5, 50.0, -0.5, 50.0], "y": [50.0, 50.0, -0.5, 119.5], "radius": 10.0})
    share = scale.visible_fraction(disks, 120, 100)
    np.testing.assert_allclose(share, [0.5, 1.0, 0.25, 0.5], atol=1e-9)
    # A disk cut at half its radius keeps the segment's share, 1 - (acos(1/2) - sqrt(3)/4) / pi.
    cut = scale.visible_fraction(disks.assign(x=[4.5, 50.0, 50.0, 50.0], y=50.0), 120, 100)[0]
    assert cut == pytest.approx(1 - (np.pi / 3 - np.sqrt(3) / 4) / np.pi)


def test_a_blob_cut_by_the_border_is_a_cluster_by_the_droplets_of_its_visible_part():
    """Half of a blob of small droplets lies outside the image: its three visible droplets make
    it a cluster, while a droplet cut in half keeps the two pieces inside it."""
    blob = pd.DataFrame({"x": [0.0], "y": [100.0], "radius": [40.0], "p_exists": [0.8]})
    parts = ring(6, 18.0, 6.0, centre=(0.0, 100.0))
    parts = parts[parts["x"] > 0]
    table = pd.concat([blob, parts], ignore_index=True)
    table = table.assign(visible_fraction=scale.visible_fraction(table, 200, 200))
    found = scale.outermost_droplets(table)
    assert len(parts) == 3 and len(found) == 3 and found["radius"].max() == 6.0
    pieces = table.iloc[[0, 1, 2]]
    assert scale.outermost_droplets(pieces)["radius"].tolist() == [40.0]
    # Without the border (the same detections in the middle of an image) it takes five.
    assert len(scale.outermost_droplets(table.drop(columns="visible_fraction"))) == 1


def test_a_droplet_keeps_its_rim_pieces_inclusions_and_faint_spots_inside():
    droplet = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [40.0], "p_exists": [0.8]})
    rim = ring(12, 37.0, 4.0)
    inclusions = ring(4, 15.0, 5.0)
    faint = ring(8, 20.0, 3.0, p_exists=0.4)
    found = scale.outermost_droplets(pd.concat([droplet, rim, inclusions, faint], ignore_index=True))
    assert found[["x", "y", "radius"]].to_numpy().tolist() == [[100.0, 100.0, 40.0]]


def test_a_droplet_with_a_textured_inside_is_no_cluster():
    """Grains of a droplet's textured inside (a real packed brightfield emulsion: 5-59 grains of
    2-3 px in droplets of 33 px) are sure detections too, and many: the droplet stands and
    they are its texture. Droplets of 6 px in the same blob make it a cluster (above)."""
    droplet = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [36.0], "p_exists": [0.9]})
    rng = np.random.default_rng(3)
    angle, distance = rng.uniform(0, 2 * np.pi, 20), 26.0 * np.sqrt(rng.uniform(0, 1, 20))
    grains = pd.DataFrame(
        {"x": 100 + distance * np.cos(angle), "y": 100 + distance * np.sin(angle), "radius": 2.5, "p_exists": 0.9}
    )
    assert len(scale.outermost_droplets(grains)) >= scale.CLUSTER_MIN_DROPLETS
    found = scale.outermost_droplets(pd.concat([droplet, grains], ignore_index=True))
    assert found[["x", "y", "radius"]].to_numpy().tolist() == [[100.0, 100.0, 36.0]]


def test_the_scale_choice_names_the_downscale_for_the_large_droplets_of_two_sizes():
    """Grains of 2 px beside droplets of 36 px: the fit keeps the grains resolvable, and says
    which downscale would fit the droplets; radii spread evenly over 1:50 are one population."""
    rng = np.random.default_rng(0)

    def detections(radius_px):
        xy = rng.uniform(100, 900, (len(radius_px), 2))
        return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "radius": radius_px, "p_exists": 0.9})

    two_sizes = scale.choose_downscale(detections(np.r_[np.full(60, 2.0), np.full(300, 36.0)]), 1000, 1000)
    assert two_sizes.factor == 1 and "downscale 9x fits the large ones" in two_sizes.reason
    spread = scale.choose_downscale(detections(3.0 * 50.0 ** rng.uniform(0, 1, 400)), 1000, 1000)
    assert "two sizes" not in spread.reason


def test_a_sure_droplet_at_the_edge_of_an_oversized_neighbour_stands():
    """A large droplet sized a fifth too large (36 px for 30) takes in the centre of the 8 px
    droplet pressed against it: a sure detection there stands, a doubtful one (a rim piece
    of the large droplet, as far as the detector can tell) does not."""
    large = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [36.0], "p_exists": [0.95]})
    beside = pd.DataFrame({"x": [100.0 + 30.0 + 4.0], "y": [100.0], "radius": [8.0], "p_exists": [0.9]})
    found = scale.outermost_droplets(pd.concat([large, beside], ignore_index=True))
    assert found["radius"].tolist() == [36.0, 8.0]
    doubtful = scale.outermost_droplets(pd.concat([large, beside.assign(p_exists=0.4)], ignore_index=True))
    assert doubtful["radius"].tolist() == [36.0]
    # Deeper inside it is the large droplet's own inclusion or rim, however sure.
    inside = scale.outermost_droplets(pd.concat([large, beside.assign(x=100.0 + 28.0)], ignore_index=True))
    assert inside["radius"].tolist() == [36.0]


def test_a_doubtful_oversized_disk_does_not_swallow_a_surer_droplet_beside_it():
    """A coarse level sizes a crowded fluorescent droplet a third too large (30 px, doubtful)
    and its disk takes in the centre of the sure 17 px droplet beside it: that one stands. The
    same droplet seen at two levels (centres together) is still one, and beside a surer
    disk of similar size nothing changes."""
    oversized = pd.DataFrame({"x": [100.0], "y": [100.0], "radius": [30.0], "p_exists": [0.55]})
    beside = pd.DataFrame({"x": [100.0 + 26.0], "y": [100.0], "radius": [17.0], "p_exists": [0.95]})
    found = scale.outermost_droplets(pd.concat([oversized, beside], ignore_index=True))
    assert found["radius"].tolist() == [30.0, 17.0]
    same = scale.outermost_droplets(pd.concat([oversized, beside.assign(x=102.0)], ignore_index=True))
    assert same["radius"].tolist() == [30.0]
    surer = scale.outermost_droplets(pd.concat([oversized.assign(p_exists=0.99), beside], ignore_index=True))
    assert surer["radius"].tolist() == [30.0]


def test_small_droplets_of_a_packed_emulsion_are_found_beside_large_ones():
    # The independent renderer's packed emulsion: radii 8-35 px, every droplet pressed against
    # its neighbours; the detector sizes the large ones too large.
    image, truth = second_renderer.render("packed", 6, width_px=256, height_px=256)
    found = scale.detect_in_image(image, threshold=scale.CANDIDATE_THRESHOLD)
    distance, _ = cKDTree(found[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
    assert np.mean(distance < 0.5 * truth["radius"].to_numpy()) >= 0.95


def packed_fluorescence(seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The independent renderer's packed fluorescence (512², radii 5-45 px) as a user's file loads."""
    raw, truth = second_renderer.render("fluorescence", seed, density="packed")
    return load_image(second_renderer.encode(raw)), truth


def test_large_droplets_cut_by_the_border_of_a_packed_emulsion_are_candidates():
    # The coarse levels see them with p_exists 0.3-0.5, as they see strips of small droplets
    # along the border; unlike those strips they hold no sure smaller droplet.
    image, truth = packed_fluorescence(5)
    cut = truth[(scale.visible_fraction(truth, *image.shape[:2]) < 1) & truth["in_focus"] & (truth["radius"] >= 15)]
    found = scale.detect_in_image(image, threshold=scale.CANDIDATE_THRESHOLD)
    distance, _ = cKDTree(found[["x", "y"]].to_numpy()).query(cut[["x", "y"]].to_numpy())
    assert len(cut) >= 15
    assert np.all(distance < 0.5 * cut["radius"].to_numpy())


def test_the_background_of_a_packed_emulsion_is_read_between_its_droplets():
    # Droplets cover three quarters of the image, so its median pixel is a droplet's: against
    # it, dim droplets have no contrast or the wrong sign, and a fit started them with no look.
    image, truth = packed_fluorescence(5)
    grey = extract_channel(image, "grey")
    shown = truth[truth["in_focus"]]
    x, y = shown["x"].to_numpy(), shown["y"].to_numpy()
    background = background_level(grey, shown[["x", "y", "radius"]].to_numpy())
    against_background = centre_contrast(contrast_image(grey, background)[1], x, y)
    against_median = centre_contrast(contrast_image(grey)[1], x, y)
    assert np.all(against_background > 0)
    assert np.mean(against_median <= 0) > 0.05


def test_grains_of_photon_noise_are_not_droplets_but_dim_droplets_in_it_are():
    """A dim fluorescence field of 20 photons a pixel: the detector alone takes hundreds of
    noise grains for droplets of 1-3 px (400 of them here); those that do not stand out of the
    noise are dropped, while droplets 60 % brighter than the field are all kept."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    centres = [(60.0, 60.0, 4.0), (180.0, 70.0, 6.0), (90.0, 190.0, 10.0), (200.0, 200.0, 3.0)]
    photons = np.full((256, 256), 20.0)
    for x, y, r in centres:
        photons[np.hypot(xx - x, yy - y) <= r] *= 1.6
    image = rng.poisson(photons).astype(np.float32)
    image = np.repeat((image / image.max())[:, :, None], 3, axis=2)
    found = scale.detect_in_image(image, "grey", threshold=0.5)
    assert len(found) <= 30
    distance, _ = cKDTree(found[["x", "y"]].to_numpy()).query([c[:2] for c in centres])
    assert np.all(distance < [c[2] for c in centres])


def test_faint_dic_droplets_stand_out_by_their_relief():
    """DIC droplets are lit on one side and shaded on the other: their middle and their rim's
    mean are the field's, so only the relief (one half of the rim against the other) shows
    them. Our renderer's faint DIC scene: every droplet stands out by it (by the middle and
    the rim's mean alone, half of them did not)."""
    settings = family_settings(
        "phase",
        mode="dic",
        contrast=0.2,
        noise_sd=0.02,
        width_px=256,
        height_px=256,
        n_droplets=60,
        radius_min_px=3.0,
        radius_max_px=12.0,
        radius_median_px=6.0,
    )
    rgb, truth = make_scene(3, settings)
    ses = scale.contrast_ses(rgb.astype(np.float32) / 255.0, truth)
    assert np.all(ses >= scale.MIN_CONTRAST_SES)


def test_small_droplets_crowded_together_are_not_taken_for_one_large_one():
    # The independent renderer's seed-like scene: droplets of 1-9 px, 2000 of them; a coarse
    # level sees some tight groups as one blob.
    image, truth = second_renderer.render("seedlike", 7, width_px=500, height_px=400)
    found = scale.detect_in_image(image, threshold=scale.CANDIDATE_THRESHOLD)
    assert found["radius"].max() <= 1.5 * truth["radius"].max()
    assert len(found) >= 0.85 * len(truth)


def test_the_largest_fit_radius_is_the_largest_patch_with_room_to_grow():
    from droplet_core.models.common import GROWTH_ROOM, RADIUS_CAPS_PX

    assert scale.MAX_FIT_RADIUS_PX == pytest.approx(RADIUS_CAPS_PX[-1] / GROWTH_ROOM)
