"""Synthetic scenes: determinism, truth consistency, visibility, and classical-detector realism."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from skimage.color import rgb2gray
from skimage.feature import blob_log

from droplet_core.images import load_image
from droplet_core.scenes import SceneSettings, demo_image_bytes, demo_truth, encode_png, make_scene, write_scene

SMALL = SceneSettings(width_px=120, height_px=90, n_droplets=150)


@pytest.fixture(scope="module")
def default_scene():
    return make_scene(0)


def test_deterministic_per_seed():
    image_a, truth_a = make_scene(3, SMALL)
    image_b, truth_b = make_scene(3, SMALL)
    np.testing.assert_array_equal(image_a, image_b)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    image_c, truth_c = make_scene(4, SMALL)
    assert not np.array_equal(image_a, image_c)
    assert not truth_a[["x", "y"]].equals(truth_c[["x", "y"]])


def test_image_and_truth_format(default_scene):
    image, truth = default_scene
    settings = SceneSettings()
    assert image.shape == (settings.height_px, settings.width_px, 3) and image.dtype == np.uint8
    k = len(settings.palette_rgb)
    assert list(truth.columns) == ["x", "y", "radius"] + [f"composition_{i}" for i in range(k)]
    assert len(truth) == settings.n_droplets  # the default scene is crowded but fits
    assert truth.x.between(0, settings.width_px - 1).all() and truth.y.between(0, settings.height_px - 1).all()
    assert truth.radius.between(settings.radius_min_px, settings.radius_max_px).all()
    compositions = truth.filter(like="composition_").to_numpy()
    assert (compositions >= 0).all()
    np.testing.assert_allclose(compositions.sum(axis=1), 1.0)


def test_sizes_skewed_to_small(default_scene):
    radius = default_scene[1].radius
    assert (radius <= 3).mean() > 0.6
    assert 0 < (radius >= 6).sum() < 0.05 * len(radius)


def overlapping_pairs(truth, fraction):
    xy, radius = truth[["x", "y"]].to_numpy(), truth.radius.to_numpy()
    pairs = np.array(sorted(cKDTree(xy).query_pairs(2 * radius.max())))
    distance = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    return (distance < fraction * (radius[pairs[:, 0]] + radius[pairs[:, 1]]) - 1e-9).sum()


def test_crowded_but_not_heavily_overlapping(default_scene):
    truth = default_scene[1]
    assert overlapping_pairs(truth, 0.9) == 0
    assert overlapping_pairs(truth, 1.05) > 20  # many touch


def test_too_many_droplets_gives_fewer_and_says_so():
    settings = replace(SMALL, n_droplets=5000)
    image, truth = make_scene(1, settings)
    assert 150 < len(truth) < 5000
    assert overlapping_pairs(truth, 0.9) == 0


def disk_mask(truth, shape, scale=1.0, margin=0.0):
    """Pixels ``(h, w)`` within ``scale * radius + margin`` of a droplet centre in ``truth``."""
    height, width = shape
    mask = np.zeros(shape, bool)
    for x, y, r in truth[["x", "y", "radius"]].to_numpy():
        reach = scale * r + margin
        r0, r1 = int(max(y - reach, 0)), int(min(y + reach + 1, height))
        c0, c1 = int(max(x - reach, 0)), int(min(x + reach + 1, width))
        rows, cols = np.mgrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= np.hypot(cols - x, rows - y) <= reach
    return mask


def test_droplets_visible(default_scene):
    image, truth = default_scene
    rgb = image / 255.0
    centres = disk_mask(truth[truth.radius >= 3], image.shape[:2], scale=0.5)
    substrate = ~disk_mask(truth, image.shape[:2], margin=3.0)
    body, background = rgb[centres].mean(axis=0), rgb[substrate].mean(axis=0)
    assert np.linalg.norm(body - background) > 0.15, (body, background)
    assert body[2] > body[1]  # blue/purple droplets on a grey-green background
    assert background[1] > background[2]


def test_blob_log_over_detects(default_scene):
    """Caustic highlight and rim make a classical LoG detector count extra droplets."""
    image, truth = default_scene
    grey = rgb2gray(image / 255.0)
    contrast = np.clip(np.median(grey) - grey, 0.0, None)  # droplets are darker than the substrate
    blobs = blob_log(contrast / contrast.max(), min_sigma=0.7, max_sigma=8, num_sigma=8, threshold=0.04)
    truth_y, truth_x = truth.y.to_numpy()[:, None], truth.x.to_numpy()[:, None]
    distance = np.hypot(truth_y - blobs[None, :, 0], truth_x - blobs[None, :, 1])
    tolerance = np.maximum(1.5, truth.radius.to_numpy() / 2)[:, None]
    cost = np.where(distance <= tolerance, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    matched = int((cost[rows, cols] < 1e6).sum())
    precision, recall = matched / len(blobs), matched / len(truth)
    assert recall > 0.5, "droplets should still be findable"
    assert len(blobs) > 1.15 * len(truth) or precision < 0.85, (len(blobs), precision, recall)


def test_demo_image_and_truth(default_scene):
    data = demo_image_bytes()
    assert data is demo_image_bytes()  # cached
    image = load_image(data)
    assert image.shape == (400, 500, 3)
    truth = demo_truth()
    truth["x"] = -1.0  # a copy: the cached truth is untouched
    assert (demo_truth().x >= 0).all()
    np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), default_scene[0])
    pd.testing.assert_frame_equal(demo_truth(), default_scene[1])


def test_encode_png_round_trip():
    array = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.round(load_image(encode_png(array)) * 255), array)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(array.astype(np.float32))


def test_write_scene(tmp_path):
    write_scene(5, tmp_path / "out", SMALL)
    image, truth = make_scene(5, SMALL)
    written = pd.read_csv(tmp_path / "out" / "truth.csv")
    assert list(written.columns) == list(truth.columns)
    np.testing.assert_allclose(written.to_numpy(), truth.to_numpy(), atol=5e-5)
    assert load_image(tmp_path / "out" / "scene.png").shape == image.shape
    assert "." in (tmp_path / "out" / "truth.csv").read_text().splitlines()[1]
