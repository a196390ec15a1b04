"""Time-lapse: a synthetic stack with known tracks and scripted coalescences, fitted frame after
frame, linked and scored against the truth; events from hand-made tracks; the ``track`` command."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_info, threadpool_limits

from droplet_core.detection.matching import match_pairs
from droplet_core.detection.scale import visible_fraction
from droplet_core.imaging import images
from droplet_core.imaging.stacks import Stack, read_stack
from droplet_core.inference.moved_start import (
    HALO_RADII,
    LEFT_FIELD_VISIBLE,
    RECENTRED_MAX_RADIUS_PX,
    moved_warm_start,
)
from droplet_core.service import timelapse
from droplet_core.service.requests import StoreSaveError
from droplet_core.service.store import FitStore
from droplet_core.synthetic.scenes import SceneSettings
from droplet_core.synthetic.stack_scenes import StackSceneSettings, make_stack, score_tracks

pytestmark = pytest.mark.slow  # fits stacks of frames

REPO = Path(__file__).resolve().parents[1]
SEED = 0


def _tiff(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, frames, photometric="rgb", metadata={"axes": "TYXS"})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def movie():
    return make_stack(SEED)


@pytest.fixture(scope="module")
def fitted(movie):
    frames, _, _ = movie
    stack = read_stack([("movie.tif", _tiff(frames))])
    settings = timelapse.TimelapseSettings(frame_interval_s=2.0)
    store = FitStore()
    fits = timelapse.fit_stack(stack, settings, store)
    return stack, settings, store, fits, timelapse.analyse_stack(stack, settings, fits, store)


def test_synthetic_stack_has_its_scripted_truth(movie):
    frames, truth, events = movie
    assert frames.shape == (8, 160, 200, 3)
    assert list(events["kind"]) == ["coalescence", "coalescence"]
    for event in events.itertuples(index=False):
        parts = [int(t) for t in event.tracks_before.split(";")]
        before = truth[(truth["frame"] == event.frame - 1) & truth["track"].isin(parts)]
        after = truth[(truth["frame"] == event.frame) & (truth["track"] == int(event.tracks_after))]
        assert len(before) == 2 and len(after) == 1
        assert (after["radius"] ** 3).sum() == pytest.approx((before["radius"] ** 3).sum())
        assert truth[truth["track"].isin(parts)]["frame"].max() == event.frame - 1


def test_long_synthetic_stack_grows_to_its_neighbours_and_dissolves_the_shrunk():
    # 80 frames of 3 % growth-rate sd: unchecked, radii would grow up to tenfold into their
    # neighbours and shrink to nothing.
    settings = StackSceneSettings(n_frames=80, growth_sd=0.03, coalescences=0)
    _, truth, events = make_stack(SEED, settings)
    scene = settings.scene
    spacing = scene.min_distance_fraction
    assert truth["radius"].min() >= settings.vanish_radius_fraction * scene.radius_min_px
    gone = events[events["kind"] == "disappearance"]
    assert len(gone) >= 5
    for event in gone.itertuples(index=False):
        rows = truth[truth["track"] == int(event.tracks_before)]
        assert rows["frame"].max() == event.frame - 1
    grew = 0
    for frame in range(1, settings.n_frames):
        before = truth[truth["frame"] == frame - 1].set_index("track")
        now = truth[truth["frame"] == frame].set_index("track")
        both = now.index.intersection(before.index)
        grown = both[now.loc[both, "radius"].to_numpy() > before.loc[both, "radius"].to_numpy()]
        grew += len(grown)
        for track in grown:
            others = both[both != track]
            distance = np.hypot(now.loc[others, "x"] - now.loc[track, "x"], now.loc[others, "y"] - now.loc[track, "y"])
            assert (distance >= spacing * (now.loc[track, "radius"] + before.loc[others, "radius"]) - 1e-9).all()
    assert grew > 500


def test_first_frame_full_then_reuse_and_drift_measured(fitted):
    _, _, _, fits, tables = fitted
    assert [fit.kind for fit in fits] == ["full"] + ["reuse"] * 7
    frames = tables.frames
    # The field drifts by (1.0, 0.5) px a frame: the registration's shifts start the fits near the
    # droplets, and the drift from the linked droplets (Brownian steps of 0.25 px average out) is finer.
    np.testing.assert_allclose(frames["shift_x_px"].iloc[1:], 1.0, atol=0.25)
    np.testing.assert_allclose(frames["shift_y_px"].iloc[1:], 0.5, atol=0.25)
    np.testing.assert_allclose(frames["drift_x_px"], np.arange(8) * 1.0, atol=0.2)
    np.testing.assert_allclose(frames["drift_y_px"], np.arange(8) * 0.5, atol=0.2)
    assert frames["time_s"].tolist() == [2.0 * i for i in range(8)]


def test_tracks_follow_the_truth_and_coalescences_are_found(fitted, movie):
    _, truth, true_events = movie
    tables = fitted[4]
    score = score_tracks(tables.tracks, tables.events, truth, true_events)
    assert score.followed_fraction >= 0.9
    assert score.switches_per_1000 <= 5.0
    assert score.coalescence_recall == 1.0
    assert score.coalescence_precision >= 0.6
    # Counted droplets per frame: the truth's, plus droplets cut by the border whose centres lie just outside.
    counts = tables.frames["droplet_count"].to_numpy()
    true_counts = truth.groupby("frame").size().to_numpy()
    assert np.all(counts >= true_counts - 2) and np.all(counts <= true_counts + 12)
    assert list(tables.tracks.columns[:12]) == list(timelapse.TRACK_COLUMNS)
    assert tables.tracks["sd_radius_px"].gt(0).all()


def test_stack_fit_resumes_from_the_store(fitted):
    stack, settings, store, fits, _ = fitted
    again = timelapse.fit_stack(stack, settings, store)
    assert [fit.fit_id for fit in again] == [fit.fit_id for fit in fits]
    assert all(fit.from_store for fit in again)


def test_a_frame_starts_from_the_previous_fit_moved_with_the_field(fitted):
    store, fits = fitted[2], fitted[3]
    previous = store.load(fits[0].fit_id)
    factor = previous.report.downscale
    n = len(previous.warm_start.active)
    # A droplet grown at once (a coalescence's product) 2 px right of and 1 px above one of the fit's droplets.
    grown_over = int(np.flatnonzero(previous.warm_start.active)[0])
    x = float(images.to_original_px(previous.params["x_auto_loc"][grown_over], factor)) + 2.0
    y = float(images.to_original_px(previous.params["y_auto_loc"][grown_over], factor)) - 1.0
    new = pd.DataFrame({"x": [x], "y": [y], "radius": [2.0 * previous.droplets["radius"].max()]})
    start = moved_warm_start(previous, (2.0, -1.0), new)

    x_fit, y_fit = start.params["x_auto_loc"], start.params["y_auto_loc"]
    placed = np.isclose(images.to_original_px(x_fit, factor), x) & np.isclose(images.to_original_px(y_fit, factor), y)
    assert placed.sum() == 1 and start.warm_start.active[placed] == 1.0 and start.losses.size == 0
    # Every other droplet that stays on is where the field's shift took it, and anchored there.
    kept = (start.warm_start.active[:n] > 0) & (previous.warm_start.active > 0) & ~placed[:n]
    np.testing.assert_allclose(x_fit[:n][kept], previous.params["x_auto_loc"][kept] + 2.0 / factor, atol=1e-4)
    np.testing.assert_allclose(y_fit[:n][kept], previous.params["y_auto_loc"][kept] - 1.0 / factor, atol=1e-4)
    np.testing.assert_allclose(start.warm_start.anchors[:n][kept, :2], np.stack([x_fit, y_fit], axis=1)[:n][kept])
    # What the new droplet covers is switched off; droplets clear of its halo stay on.
    distance = np.hypot(x_fit[:n] - x_fit[placed], y_fit[:n] - y_fit[placed])
    reach = new["radius"][0] / factor
    was_on = previous.warm_start.active > 0
    assert not (kept & (distance < reach)).any() and (was_on & (distance < reach)).sum() >= 1
    halo = HALO_RADII * reach + previous.droplets["radius"].max() / factor
    anchors = start.warm_start.anchors[:n]
    moved = pd.DataFrame({"x": anchors[:, 0], "y": anchors[:, 1], "radius": anchors[:, 2]})
    left_field = visible_fraction(moved, *previous.observed.shape[:2]) < LEFT_FIELD_VISIBLE
    assert (kept | placed[:n] | ~was_on | (distance < halo) | left_field).all()


def test_a_frame_starts_from_the_outline_ratios_of_the_previous_table(fitted):
    store, fits = fitted[2], fitted[3]
    previous = store.load(fits[0].fit_id)
    factor = previous.report.downscale
    on = previous.warm_start.active > 0
    ratio = previous.warm_start.drawn_ratio
    assert np.isfinite(ratio[on]).all() and np.isnan(ratio[~on]).all()
    # Each slot's ratio times its model radius is the radius the table shows at its outline.
    model_x, model_y = previous.params["x_auto_loc"][on], previous.params["y_auto_loc"][on]
    table = previous.droplets
    row = cKDTree(table[["x", "y"]].to_numpy() / factor).query(np.stack([model_x, model_y], axis=1))[1]
    carried_px = ratio[on] * np.exp(previous.params["radius_auto_loc"][on]) * factor
    assert np.mean(np.isclose(carried_px, table["radius"].to_numpy()[row], rtol=1e-3)) >= 0.95

    grown_over = int(np.flatnonzero(on)[0])
    x = float(images.to_original_px(previous.params["x_auto_loc"][grown_over], factor))
    y = float(images.to_original_px(previous.params["y_auto_loc"][grown_over], factor))
    new = pd.DataFrame({"x": [x], "y": [y], "radius": [2.0 * table["radius"].max()]})
    start = moved_warm_start(previous, (2.0, -1.0), new)
    n = len(on)
    placed = np.isclose(images.to_original_px(start.params["x_auto_loc"], factor), x) & np.isclose(
        images.to_original_px(start.params["y_auto_loc"], factor), y
    )
    kept = (start.warm_start.active[:n] > 0) & on & ~placed[:n]
    assert kept.sum() >= 0.9 * on.sum()
    np.testing.assert_array_equal(start.warm_start.drawn_ratio[:n][kept], ratio[kept])
    assert placed.sum() == 1 and np.isnan(start.warm_start.drawn_ratio[placed]).all()


def test_a_small_droplet_starts_at_its_detection_in_the_new_frame(fitted):
    # Sampled at pixel centres, a droplet of a pixel or two has a dip in its misfit near wherever
    # it starts: started where the last frame left it, its error would be carried on.
    store, fits = fitted[2], fitted[3]
    previous = store.load(fits[0].fit_id)
    factor = previous.report.downscale
    none_new = pd.DataFrame({"x": [], "y": [], "radius": []})
    moved = moved_warm_start(previous, (2.0, -1.0), none_new)
    x, y, drawn = moved.warm_start.anchors.T
    on = moved.warm_start.active > 0
    small = np.flatnonzero(on & (drawn < RECENTRED_MAX_RADIUS_PX))
    large = np.flatnonzero(on & (drawn > RECENTRED_MAX_RADIUS_PX))
    assert small.size >= 2 and large.size >= 1
    # Detections 0.4 radii right of three droplets: two small ones (one detection of its size, one
    # twice its size) and a large one.
    chosen = np.array([small[0], small[1], large[0]])
    detections = pd.DataFrame(
        {
            "x": images.to_original_px(x[chosen] + 0.4 * drawn[chosen], factor),
            "y": images.to_original_px(y[chosen], factor),
            "radius": np.array([1.0, 2.0, 1.0]) * drawn[chosen] * factor,
            "p_exists": 1.0,
        }
    )
    start = moved_warm_start(previous, (2.0, -1.0), none_new, detections)

    started_x, started_y = start.params["x_auto_loc"], start.params["y_auto_loc"]
    expected_x = x.copy()
    expected_x[small[0]] += 0.4 * drawn[small[0]]
    np.testing.assert_allclose(started_x[on], expected_x[on], atol=1e-3)
    np.testing.assert_allclose(started_y[on], y[on], atol=1e-3)
    np.testing.assert_allclose(start.warm_start.anchors[on, :2], np.stack([started_x, started_y], axis=1)[on])
    np.testing.assert_array_equal(start.warm_start.active, moved.warm_start.active)


def test_small_droplets_keep_up_with_their_motion_frame_after_frame(tmp_path):
    # The seed kind's droplets of 1-2 px, wandering 0.25 px a frame: started where the last frame
    # left them, their x error grew from 0.21 to 0.31-0.34 px rms by frames 3-5 (a lag that the
    # intervals do not know of); started at their detections it stays within 0.22-0.27.
    scene = SceneSettings(width_px=250, height_px=200, n_droplets=375)
    frames, truth, _ = make_stack(3, StackSceneSettings(scene=scene, n_frames=6, coalescences=0))
    stack = read_stack([("movie.tif", _tiff(frames))])
    settings, store = timelapse.TimelapseSettings(), FitStore(tmp_path)
    fits = timelapse.fit_stack(stack, settings, store)
    tracks = timelapse.analyse_stack(stack, settings, fits, store).tracks
    assert [fit.kind for fit in fits] == ["full"] + ["reuse"] * 5

    def small_droplets_x_rms(frame: int) -> float:
        true = truth[truth["frame"] == frame].reset_index(drop=True)
        found = tracks[tracks["frame"] == frame].rename(columns={"x_px": "x", "y_px": "y", "radius_px": "radius"})
        true_index, found_index = match_pairs(true, found.reset_index(drop=True))
        error = found["x"].to_numpy()[found_index] - true["x"].to_numpy()[true_index]
        return float(np.sqrt(np.mean(error[true["radius"].to_numpy()[true_index] < 2.0] ** 2)))

    assert np.mean([small_droplets_x_rms(frame) for frame in (3, 4, 5)]) <= 1.35 * small_droplets_x_rms(0)


def test_droplets_the_field_carries_out_of_the_frame_are_switched_off(fitted):
    # Fitted on, the sliver of a droplet mostly out of the frame grew it (2.7 px to 21 px on the
    # browser test's example stack): such droplets have left the field.
    store, fits = fitted[2], fitted[3]
    previous = store.load(fits[0].fit_id)
    shift_px = -20.0
    start = moved_warm_start(previous, (shift_px, 0.0), pd.DataFrame({"x": [], "y": [], "radius": []}))
    was_on = previous.warm_start.active > 0
    n = len(was_on)
    x, y, drawn_radius = start.warm_start.anchors[:n].T
    height, width = previous.observed.shape[:2]
    outside = was_on & (x < -0.7 * drawn_radius)
    margin = drawn_radius + 1.0
    inside = was_on & (x > margin) & (x < width - margin) & (y > margin) & (y < height - margin)
    assert outside.sum() >= 5 and inside.sum() >= 0.5 * was_on.sum()
    assert not start.warm_start.active[:n][outside].any()
    assert start.warm_start.active[:n][inside].all()


def test_only_sure_detections_of_grown_or_new_droplets_start_a_frame():
    droplets = pd.DataFrame({"x": [10.0, 30.0, 50.0], "y": [10.0, 10.0, 10.0], "radius": [3.0, 3.0, 3.0]})
    detections = pd.DataFrame(
        [
            (10.0, 10.0, 4.0, 0.95),  # grown at once over a droplet: kept
            (30.0, 10.0, 4.0, 0.7),  # as large, but unsure (a cluster of small droplets looks so)
            (50.0, 10.0, 3.2, 0.99),  # the droplet there, measured a little larger
            (80.0, 40.0, 3.0, 0.95),  # a new droplet: kept
            (80.0, 10.0, 3.0, 0.6),  # an unsure new one
            (100.0, 40.0, 6.0, 0.99),  # twice the largest droplet: a texture, not a droplet
        ],
        columns=["x", "y", "radius", "p_exists"],
    )
    new = timelapse.new_detections(droplets, detections)
    assert list(zip(new["x"], new["y"], new["grown"])) == [(10.0, 10.0, True), (80.0, 40.0, False)]


def test_a_grown_detection_must_have_changed_the_frame_where_it_is():
    rng = np.random.default_rng(4)
    reference = np.repeat(ndimage.gaussian_filter(rng.uniform(size=(60, 80)), 2.0)[:, :, None], 3, axis=2)
    # Moved by (2, 1) px: the first row and columns wrap round, the rest is the field moved.
    moving = np.roll(reference, (1, 2), axis=(0, 1)) + rng.normal(0.0, 0.002, reference.shape)
    rows, columns = np.mgrid[:60, :80]
    moving[np.hypot(columns - 20, rows - 30) <= 4] += 0.1  # a coalescence's product, say
    change = timelapse.field_change_sds(reference, moving, (2.0, 1.0))
    assert np.sqrt(np.mean(change[25:36, 15:26] ** 2)) > 10 * np.sqrt(np.mean(change[5:, 50:70] ** 2)) > 0
    droplets = pd.DataFrame({"x": [20.0, 50.0, 50.0], "y": [30.0, 30.0, 10.0], "radius": [2.0, 2.0, 4.0]})
    detections = pd.DataFrame(
        # All grown; only the first changed the frame. The third is far larger than the droplet it
        # covers (not two droplets read as one): the fit drew it too small, which the detection mends.
        [(20.0, 30.0, 2.5, 0.99), (50.0, 30.0, 2.5, 0.99), (50.0, 10.0, 5.5, 0.99)],
        columns=["x", "y", "radius", "p_exists"],
    )
    assert len(timelapse.new_detections(droplets, detections)) == 3
    new = timelapse.new_detections(droplets, detections, change)
    assert list(zip(new["x"], new["y"], new["grown"])) == [(20.0, 30.0, True), (50.0, 10.0, True)]
    # Less sure (p_exists 0.7): taken only where the frame changed, however large.
    unsure = detections.assign(p_exists=0.7)
    assert timelapse.new_detections(droplets, unsure).empty
    new = timelapse.new_detections(droplets, unsure, change)
    assert list(zip(new["x"], new["y"], new["grown"])) == [(20.0, 30.0, True)]
    # Parts of 0.72 of each other's radius grow the larger by 1.11 times only: grown where the
    # frame changed, and where it did not, the detector's sizing spread.
    slightly = detections.iloc[:2].assign(radius=2.22)
    assert timelapse.new_detections(droplets, slightly).empty
    new = timelapse.new_detections(droplets, slightly, change)
    assert list(zip(new["x"], new["y"], new["grown"])) == [(20.0, 30.0, True)]


def test_a_detection_overlapping_droplets_a_gap_apart_grew_from_them():
    # Parts of 4 px 13 px apart (a gap of 5 px): their product's centre lies beyond both radii,
    # but it overlaps each by more than half its radius, so it grew from them.
    droplets = pd.DataFrame({"x": [20.0, 33.0, 66.5], "y": [30.0, 30.0, 30.0], "radius": [4.0, 4.0, 4.0]})
    product = (26.5, 30.0, np.cbrt(2 * 4.0**3), 0.99)
    touching = (60.0, 30.0, 3.0, 0.99)  # a new droplet that only touches the one beside it
    detections = pd.DataFrame([product, touching], columns=["x", "y", "radius", "p_exists"])
    new = timelapse.new_detections(droplets, detections)
    assert list(zip(new["x"], new["grown"])) == [(26.5, True), (60.0, False)]
    # Where the frame did not change, the detector read the two as one: not taken.
    still = timelapse.new_detections(droplets, detections, np.zeros((60, 100)))
    assert list(zip(still["x"], still["grown"])) == [(60.0, False)]


def test_a_frame_that_looks_different_gets_a_full_fit(movie):
    frames = movie[0][:3].copy()
    frames[2] = 255 - frames[2]  # a look the first frame's appearance cannot draw
    stack = read_stack([("odd.tif", _tiff(frames))])
    fits = timelapse.fit_stack(stack, timelapse.TimelapseSettings(), FitStore())
    assert [fit.kind for fit in fits] == ["full", "reuse", "refit"]


def test_fitting_starts_from_a_chosen_frame_and_goes_both_ways():
    assert timelapse.frame_order(4, 2) == [(2, None), (3, 2), (1, 2), (0, 1)]
    with pytest.raises(ValueError, match="first frame 5 is not in a stack of 4 frames"):
        timelapse.frame_order(4, 4)


def _track_rows(rows):
    """Hand-made tracks: (frame, track, x, y, radius) with a 5 % radius sd."""
    table = pd.DataFrame(rows, columns=["frame", "track", "x_px", "y_px", "radius_px"])
    table["x_aligned_px"], table["y_aligned_px"] = table["x_px"], table["y_px"]
    table["sd_radius_px"] = 0.05 * table["radius_px"]
    table["volume_px3"] = 4 / 3 * np.pi * table["radius_px"] ** 3
    table["sd_volume_px3"] = 4 * np.pi * table["radius_px"] ** 2 * table["sd_radius_px"]
    return table


def test_events_from_tracks():
    merged = np.cbrt(5.0**3 + 4.0**3)
    rows = [
        (0, 0, 50, 50, 5.0),
        (1, 0, 50, 50, 5.0),  # 0 and 1 coalesce into 2 at frame 2
        (0, 1, 58, 50, 4.0),
        (1, 1, 58, 50, 4.0),
        (2, 2, 53.5, 50, merged),
        (3, 2, 53.5, 50, merged),
        (0, 3, 20, 20, 4.0),
        (1, 3, 20, 20, 4.0),  # 3 shrinks away; 4 appears where 3 was, much larger
        (2, 4, 21, 20, 9.0),
        (3, 4, 21, 20, 9.0),
        (0, 5, 1.0, 70, 3.0),
        (1, 5, 1.0, 70, 3.0),  # 5 leaves through the left edge
        (0, 6, 80, 80, 3.0),
        (1, 6, 80, 80, 3.0),
        (2, 6, 80, 80, 3.0),
        (3, 6, 80, 80, 3.0),
    ]
    events = timelapse.find_events(_track_rows(rows), 4, (100, 100), frame_interval_s=10.0)
    found = {(e.frame, e.kind, e.tracks_before, e.tracks_after) for e in events.itertuples()}
    assert found == {
        (2, "coalescence", "0;1", "2"),
        (2, "disappearance", "3", ""),
        (2, "appearance", "", "4"),
        (2, "left_field", "5", ""),
    }
    coalescence = events[events["kind"] == "coalescence"].iloc[0]
    assert coalescence["time_s"] == 20.0
    assert coalescence["volume_after_px3"] == pytest.approx(coalescence["volume_before_px3"])


def test_splitting_and_a_droplet_that_takes_in_a_neighbour():
    big = np.cbrt(6.0**3 + 3.0**3)
    rows = [
        (0, 0, 50, 50, big),
        (1, 0, 49.2, 50, 6.0),
        (1, 1, 57.5, 50, 3.0),  # 0 splits off 1 (their centre of volume stays at 50)
        (0, 2, 20, 20, 5.0),
        (0, 3, 27, 20, 3.0),
        (1, 2, 21, 20, np.cbrt(5.0**3 + 3.0**3)),  # 2 takes in 3
    ]
    # Droplets that stay as they are, within 0.3 % of their radius: the frame-to-frame jitter.
    rows += [
        (frame, 10 + i, 80, 10 + 12 * i, 4.0 * (1 + 0.003 * (-1) ** (i + frame))) for i in range(6) for frame in (0, 1)
    ]
    events = timelapse.find_events(_track_rows(rows), 2, (100, 100))
    found = {(e.frame, e.kind, e.tracks_before, e.tracks_after) for e in events.itertuples()}
    assert found == {(1, "splitting", "0", "0;1"), (1, "coalescence", "2;3", "2")}


def test_a_droplet_lost_in_a_cluster_did_not_coalesce_with_a_neighbour_that_grew():
    grown = np.cbrt(1.9**3 + 1.6**3)  # 2 grew by exactly the volume of 0, which is lost,
    centre = (45 * 1.9**3 + 50 * 1.6**3) / (1.9**3 + 1.6**3)  # and moved to their centre of volume
    rows = [
        (0, 0, 50, 50, 1.6),
        (0, 1, 52.5, 50, 1.8),
        (1, 1, 52.5, 50, 1.8),
        (0, 2, 45, 50, 1.9),
        (1, 2, centre, 50, grown),
    ]
    rows += [
        (frame, 10 + i, 80, 10 + 12 * i, 2.0 * (1 + 0.003 * (-1) ** (i + frame))) for i in range(6) for frame in (0, 1)
    ]

    def kinds(table):
        return {(e.kind, e.tracks_before) for e in timelapse.find_events(table, 2, (100, 100)).itertuples()}

    # 0 touches 1, which is nearer (in summed radii) than 2: 0 was lost, not taken in by 2.
    assert kinds(_track_rows(rows)) == {("disappearance", "0")}
    # With nothing nearer, the same change is a coalescence.
    assert kinds(_track_rows([row for row in rows if row[1] != 1])) == {("coalescence", "0;2")}


def test_a_droplet_that_grew_where_it_was_did_not_take_in_its_lost_neighbour():
    # 1 grows by the volume of 0, which is lost: a coalescence only if 1 moved to their
    # common centre of volume (coalescing droplets keep it), not where it stayed in place.
    grown = np.cbrt(4.0**3 + 2.5**3)
    centre = (40 * 4.0**3 + 46 * 2.5**3) / (4.0**3 + 2.5**3)
    steady = [
        (frame, 10 + i, 80, 10 + 12 * i, 4.0 * (1 + 0.003 * (-1) ** (i + frame))) for i in range(6) for frame in (0, 1)
    ]

    def kinds(x_after):
        rows = [(0, 0, 46, 50, 2.5), (0, 1, 40, 50, 4.0), (1, 1, x_after, 50, grown), *steady]
        return {(e.kind, e.tracks_before) for e in timelapse.find_events(_track_rows(rows), 2, (100, 100)).itertuples()}

    assert kinds(centre) == {("coalescence", "0;1")}
    assert kinds(40.0) == {("disappearance", "0")}


def test_a_part_the_fit_still_draws_beside_the_new_droplet_is_one_of_its_parts():
    # 0 and 1 coalesce into 2 at frame 1, but the fit draws 1 for one frame more, overlapping 2.
    merged = np.cbrt(5.0**3 + 4.0**3)
    centre = (40 * 5.0**3 + 48.5 * 4.0**3) / (5.0**3 + 4.0**3)
    rows = [(0, 0, 40, 50, 5.0), (0, 1, 48.5, 50, 4.0), (1, 1, 48.5, 50, 4.0)]
    rows += [(frame, 2, centre, 50, merged) for frame in (1, 2)]
    events = timelapse.find_events(_track_rows(rows), 3, (100, 100))
    found = {(e.frame, e.kind, e.tracks_before, e.tracks_after) for e in events.itertuples()}
    assert found == {(1, "coalescence", "0;1", "2")}


def test_a_part_the_fit_draws_two_frames_more_beside_the_new_droplet_is_one_of_its_parts():
    # 0 and 1 coalesce into 2 at frame 1; the fit draws 1 for two frames more, overlapping 2.
    merged = np.cbrt(5.0**3 + 4.0**3)
    centre = (40 * 5.0**3 + 48.5 * 4.0**3) / (5.0**3 + 4.0**3)
    rows = [(0, 0, 40, 50, 5.0), *[(frame, 1, 48.5, 50, 4.0) for frame in (0, 1, 2)]]
    rows += [(frame, 2, centre, 50, merged) for frame in (1, 2, 3)]
    events = timelapse.find_events(_track_rows(rows), 4, (100, 100))
    found = {(e.frame, e.kind, e.tracks_before, e.tracks_after) for e in events.itertuples()}
    assert found == {(1, "coalescence", "0;1", "2")}


def _steady(frames, radius_px, jitter):
    """Droplets that stay as they are, their radii alternating by ``jitter`` (a fraction) from frame to frame."""
    return [
        (frame, 100 + i, 80 + 12 * (i % 2), 6 + 4 * i, radius_px * (1 + jitter * (-1) ** (i + frame)))
        for i in range(24)
        for frame in frames
    ]


def test_a_pressed_droplet_that_grew_when_its_small_neighbour_was_lost_took_nothing_in():
    # 0 (4.25 px) grows by 20 % of its volume when 1 beside it is lost: more than the droplets'
    # jitter (5.3 % of the volume, from radii alternating by 0.6 %), and within half the volume of 1
    # of it; but 1's own volume is within that jitter. (A droplet whose outline the neighbour
    # pressed grows by the cap it lost, whatever the neighbour's volume.)
    def kinds(part_radius_px, grown_px):
        part_x = 40 + 4.25 + part_radius_px - 0.5
        weights = np.array([4.25, part_radius_px]) ** 3
        centre = np.average([40, part_x], weights=weights)
        rows = [(0, 0, 40, 50, 4.25), (0, 1, part_x, 50, part_radius_px), (1, 0, centre, 50, grown_px)]
        table = _track_rows(rows + _steady((0, 1), 4.3, 0.006))
        return {(e.kind, e.tracks_before) for e in timelapse.find_events(table, 2, (100, 100)).itertuples()}

    assert kinds(2.21, 4.52) == {("disappearance", "1")}
    # A neighbour whose volume stands above the jitter, taken in whole: a coalescence.
    assert kinds(2.8, np.cbrt(4.25**3 + 2.8**3)) == {("coalescence", "0;1")}


def test_a_droplet_drawn_only_since_the_frame_before_took_nothing_in():
    # 1 grows by the volume of 0, which is lost, and moves to their common centre of volume; but
    # 1 was first drawn in the frame before (switched on at a residual peak, its size unsettled).
    grown = np.cbrt(4.0**3 + 2.5**3)
    centre = (40 * 4.0**3 + 46 * 2.5**3) / (4.0**3 + 2.5**3)

    def kinds(first_frame_of_1):
        rows = [*[(frame, 0, 46, 50, 2.5) for frame in (0, 1)], (2, 1, centre, 50, grown)]
        rows += [(frame, 1, 40, 50, 4.0) for frame in range(first_frame_of_1, 2)]
        table = _track_rows(rows + _steady((0, 1, 2), 4.0, 0.003))
        return {(e.kind, e.tracks_before) for e in timelapse.find_events(table, 3, (100, 100)).itertuples()}

    assert ("coalescence", "0;1") in kinds(0)
    assert ("coalescence", "0;1") not in kinds(1)


def test_linking_removes_a_large_drift():
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(20, 180, 40), rng.uniform(20, 140, 40)
    rows = []
    for frame in range(5):
        # 6 px a frame: more than the droplets' spacing allows a linker to bridge unaided.
        for index in range(40):
            rows.append((frame, 6.0 * frame + x0[index] + rng.normal(0, 0.2), y0[index] + rng.normal(0, 0.2), 3.0))
    droplets = pd.DataFrame(rows, columns=["frame", "x_px", "y_px", "radius_px"]).assign(
        sd_x_px=0.1, sd_y_px=0.1, sd_radius_px=0.1, p_exists=1.0
    )
    shifts = np.array([[0, 0]] + [[6.0, 0.0]] * 4)
    tracks, drift = timelapse.link_droplets(droplets, shifts, search_range_px=2.0)
    assert tracks["track"].nunique() == 40
    assert (tracks.groupby("track")["frame"].count() == 5).all()
    np.testing.assert_allclose(drift["drift_x_px"], np.arange(5) * 6.0, atol=0.1)


def droplets_drifting_past_the_border() -> pd.DataFrame:
    """30 droplets moving 1 px a frame in x for 5 frames, and 3 cut by the right edge of a
    200 x 160 field that stay put."""
    rng = np.random.default_rng(3)
    x0, y0 = rng.uniform(20, 180, 30), rng.uniform(20, 140, 30)
    rows = []
    for frame in range(5):
        rows.extend((frame, x0[i] + frame + rng.normal(0, 0.1), y0[i] + rng.normal(0, 0.1), 3.0) for i in range(30))
        # Droplets cut by the right edge, which a fit can leave in place while the field moves.
        rows.extend((frame, 199.0, y, 4.0) for y in (30.0, 90.0, 120.0))
    return pd.DataFrame(rows, columns=["frame", "x_px", "y_px", "radius_px"]).assign(
        sd_x_px=0.1, sd_y_px=0.1, sd_radius_px=0.1, p_exists=1.0
    )


def test_droplets_at_the_border_do_not_count_in_the_drift():
    droplets = droplets_drifting_past_the_border()
    shifts = np.zeros((5, 2))
    _, drift = timelapse.link_droplets(droplets, shifts, search_range_px=2.0, shape_hw=(160, 200))
    np.testing.assert_allclose(drift["drift_x_px"], np.arange(5.0), atol=0.1)
    _, dragged = timelapse.link_droplets(droplets, shifts, search_range_px=2.0)
    assert dragged["drift_x_px"].iloc[-1] < 4.0 - 0.2


def test_droplets_in_any_order_are_linked_alike():
    droplets = droplets_drifting_past_the_border()
    shuffled = droplets.sample(frac=1.0, random_state=1).reset_index(drop=True)
    tracks, drift = timelapse.link_droplets(shuffled, np.zeros((5, 2)), search_range_px=2.0, shape_hw=(160, 200))
    np.testing.assert_allclose(drift["drift_x_px"], np.arange(5.0), atol=0.1)
    assert tracks["track"].nunique() == 33
    steps = tracks.sort_values(["track", "frame"]).groupby("track")["x_px"].diff().dropna()
    # Each track moves with its droplet: 1 px a frame, or not at all at the border.
    assert (((steps - 1.0).abs() < 0.5) | (steps.abs() < 0.5)).all()


def test_the_droplet_shown_first_is_a_long_whole_large_one():
    def track(track_id, frames, x_px, radius_px):
        return pd.DataFrame({"track": track_id, "frame": frames, "x_px": x_px, "y_px": 50.0, "radius_px": radius_px})

    tracks = pd.concat(
        [
            track(0, [0, 1, 2, 3], 100.0, 5.0),
            track(1, [0, 1, 2, 3], 100.0, 8.0),  # as long, larger: shown
            track(2, [0, 1, 2], 100.0, 20.0),  # larger still, but seen in fewer frames
            track(3, [0, 1, 2, 3], [3.0, 8.0, 9.0, 10.0], 12.0),  # cut by the edge in frame 0
        ]
    )
    assert timelapse.representative_track(tracks, 100, 200) == 1
    # With every track at the edge, the longest and largest.
    assert timelapse.representative_track(tracks, 100, 104) == 3


def test_track_command_writes_the_three_tables(fitted, movie, tmp_path):
    frames = movie[0]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"t{index + 1}.png")
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "droplet_core",
            "track",
            str(folder),
            "--out",
            str(out),
            "--frame-interval",
            "2s",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    tracks = pd.read_csv(out / "tracks.csv")
    events = pd.read_csv(out / "events.csv")
    frame_table = pd.read_csv(out / "frames.csv")
    # The same frames as the fixture's TIFF: every fit comes from the store and the tables agree.
    assert frame_table["fit_id"].tolist() == [fit.fit_id for fit in fitted[3]]
    assert len(tracks) == len(fitted[4].tracks) and list(tracks.columns) == list(timelapse.TRACK_COLUMNS)
    assert (events["kind"] == "coalescence").sum() == (fitted[4].events["kind"] == "coalescence").sum()
    assert {"droplet_count", "mean_radius_px", "mean_diameter", "mean_diameter_low_90"} <= set(frame_table.columns)


def test_track_command_refuses_a_stack_with_no_usable_frame(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    done = subprocess.run(
        [sys.executable, "-m", "droplet_core", "track", str(bad), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


def _changed_over(shape_hw, *disks):
    """``frame_change`` for ``find_events``: 10 sds of change over the ``disks`` (x, y, radius px)
    in every frame, none elsewhere."""
    rows, columns = np.mgrid[: shape_hw[0], : shape_hw[1]]
    change = np.zeros(shape_hw)
    for x, y, radius in disks:
        change[np.hypot(columns - x, rows - y) <= radius] = 10.0
    return lambda frame: change


def test_a_coalescence_changed_the_frame_where_its_parts_were():
    # Two droplets of 1.8 and 1.1 px become one of their joint volume at their centre of volume,
    # as when the fit drew one droplet as two and then as one: a coalescence by the tracks alone.
    merged = np.cbrt(1.8**3 + 1.1**3)
    centre = (50 * 1.8**3 + 54 * 1.1**3) / (1.8**3 + 1.1**3)
    rows = [(frame, 0, 50, 50, 1.8) for frame in (0, 1)] + [(frame, 1, 54, 50, 1.1) for frame in (0, 1)]
    rows += [(2, 2, centre, 50, merged), *_steady((0, 1, 2), 1.8, 0.003)]

    def kinds(frame_change):
        events = timelapse.find_events(_track_rows(rows), 3, (100, 100), frame_change=frame_change)
        return {(e.kind, e.tracks_before) for e in events.itertuples()}

    assert ("coalescence", "0;1") in kinds(None)
    # The frame did not change where they were: the fit re-drew them, nothing coalesced.
    assert ("coalescence", "0;1") not in kinds(_changed_over((100, 100)))
    assert ("coalescence", "0;1") in kinds(_changed_over((100, 100), (50, 50, 3.0), (54, 50, 2.0)))
    # Changed over one part only: the other is still there.
    assert ("coalescence", "0;1") not in kinds(_changed_over((100, 100), (54, 50, 2.0)))


def test_a_large_droplet_taking_in_a_small_one_is_seen_where_the_frame_changed():
    # 0 (10 px) takes in 1 (4 px, 6 % of the volume) and moves to their centre of volume: the
    # volumes alone are within the jitter of droplets of 10 px (0.6 % of the radius, about 4 %
    # of the volume, alternating), so only the frame shows that 1 went.
    grown = np.cbrt(10.0**3 + 4.0**3)
    centre = (40 * 10.0**3 + 54.5 * 4.0**3) / (10.0**3 + 4.0**3)
    rows = [*[(frame, 0, 40, 50, 10.0) for frame in (0, 1)], *[(frame, 1, 54.5, 50, 4.0) for frame in (0, 1)]]
    rows += [(2, 0, centre, 50, grown), *_steady((0, 1, 2), 10.0, 0.006)]

    def kinds(frame_change):
        events = timelapse.find_events(_track_rows(rows), 3, (100, 200), frame_change=frame_change)
        return {(e.kind, e.tracks_before) for e in events.itertuples()}

    assert kinds(None) == {("disappearance", "1")}
    assert kinds(_changed_over((100, 200), (54.5, 50, 5.0))) == {("coalescence", "0;1")}


def test_a_stack_is_fitted_with_one_blas_thread(monkeypatch, tmp_path):
    """A reuse frame's many small products and solves, with the next frame's look in a thread
    beside them, ran far slower with a second BLAS thread waiting for a core; the limit
    holds while frames are fitted and is lifted after."""
    seen = []

    def fitted_frame(stack, settings, store, index, *rest):
        seen.append([info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"])
        return timelapse.FrameFit(index, "fit", timelapse.FULL, 0.0, 0.0, 0.0, True), None, {}, 0.0

    monkeypatch.setattr(timelapse, "_fitted_frame", fitted_frame)
    frames = np.zeros((2, 8, 8, 3), np.float32)
    stack = Stack(frames, ("frame 1", "frame 2"), ("a" * 64, "b" * 64), None, ())
    with threadpool_limits(limits=2, user_api="blas"):
        timelapse.fit_stack(stack, timelapse.TimelapseSettings(), FitStore(tmp_path))
        after = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    assert seen and all(threads == [timelapse.STACK_BLAS_THREADS] * len(threads) for threads in seen)
    assert after and set(after) == {2}


def test_a_fit_being_saved_counts_as_stored_and_a_failed_save_is_reported(tmp_path):
    """``fit_stack`` saves each frame's fit in a thread while the next frame is fitted."""
    release, kept = threading.Event(), []

    class SlowStore(FitStore):
        def save(self, result):
            release.wait()
            if result.fit_id == "unwritable":
                raise OSError("disk full")
            kept.append(result.fit_id)

    saving = timelapse._SavedAside(SlowStore(tmp_path))
    saving.save(SimpleNamespace(fit_id="first"))
    assert saving.has("first") and not kept
    release.set()
    saving.save(SimpleNamespace(fit_id="unwritable"))
    with pytest.raises(StoreSaveError, match="disk full"):
        saving.close()
    assert kept == ["first"]
