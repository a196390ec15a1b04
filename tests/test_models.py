"""Rendering machinery shared by the model variants."""

from __future__ import annotations

import jax
import numpy as np
from scipy import ndimage

from droplet_core.models import templates
from droplet_core.models.common import (
    PADDING_OFFSET_PX,
    Layout,
    ModelSpec,
    background_level,
    bucket_size,
    make_layout,
)


def test_bucket_sizes_hold_the_count_and_waste_little():
    for count in (1, 7, 9, 100, 1000, 3029, 123_457):
        size = bucket_size(count)
        assert count <= size <= count * 1.125
    assert bucket_size(3000) == bucket_size(3050)


def test_background_is_read_between_droplets_that_cover_most_of_the_image():
    # A packed field: bright disks of radius 6-14 px on a hexagonal grid cover about 80 % of a
    # dark background (0.1), so the median pixel is a droplet's.
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:200, 0:240]
    centres = [
        (x + 12.0 * (j % 2), y)
        for j, y in enumerate(np.arange(10.0, 200.0, 21.0))
        for x in np.arange(10.0, 240.0, 24.0)
    ]
    x, y = np.array(centres).T
    radius = rng.uniform(9.0, 11.5, len(x))
    image = np.full((200, 240), 0.1)
    for cx, cy, r in zip(x, y, radius):
        image[(cols - cx) ** 2 + (rows - cy) ** 2 <= r**2] = rng.uniform(0.5, 0.9)
    observed = (image + rng.normal(0.0, 0.01, image.shape))[..., None].astype(np.float32)
    assert np.median(observed) > 0.4
    candidates = np.stack([x, y, radius], axis=1)
    assert abs(background_level(observed, candidates)[0] - 0.1) < 0.01
    # Disks covering everything leave no background to read: the median of all pixels.
    everywhere = np.array([[120.0, 100.0, 400.0]])
    assert background_level(observed, everywhere)[0] == np.median(observed)
    # Disks wholly outside the image cover nothing.
    outside = np.array([[-50.0, -50.0, 10.0], [400.0, 100.0, 20.0]])
    assert background_level(observed, outside)[0] == np.median(observed)


def test_layout_padding_draws_nothing():
    rng = np.random.default_rng(0)
    n = 25
    x, y = rng.uniform(0, 60, n).astype(np.float32), rng.uniform(0, 40, n).astype(np.float32)
    radius = rng.uniform(1.0, 6.0, n).astype(np.float32)
    padded = make_layout((40, 60, 1), radius, templates.EXTENT)
    real = int(np.sum(padded.offset_x != PADDING_OFFSET_PX))
    assert padded.droplet.size == bucket_size(real) > real
    trimmed = Layout(
        40, 60, 1, n, padded.droplet[:real], padded.offset_x[:real], padded.offset_y[:real], padded.radius_cap_px
    )
    masks = rng.normal(0.0, 0.2, (n, 15, 15)).astype(np.float32)
    background = np.full((40, 60, 1), 0.5, np.float32)
    images = [
        np.asarray(jax.jit(templates.render)(background, x, y, radius, masks, ModelSpec(layout, 1.0, 6, 15)))
        for layout in (padded, trimmed)
    ]
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - 0.5).max() > 0.05


def test_least_squares_compositions_start_near_the_truth():
    rng = np.random.default_rng(1)
    types, size, n = 3, 15, 30
    columns, rows = np.meshgrid(np.arange(6), np.arange(5))
    x = (12.0 + 20.0 * columns.ravel()).astype(np.float32)
    y = (12.0 + 20.0 * rows.ravel()).astype(np.float32)
    radius = rng.uniform(3.0, 6.0, n).astype(np.float32)
    # Smooth masks, as learned ones are: the least-squares start leaves out the blur the
    # model draws with, which a mask of pixel noise would not survive.
    masks = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (types, size, size)), (0, 1.5, 1.5)).astype(np.float32)
    truth = rng.uniform(0.1, 0.9, (n, types)).astype(np.float32)
    spec = ModelSpec(make_layout((100, 120, 1), radius, templates.EXTENT), 1.0, types, size)
    droplet_masks = np.einsum("nt,tij->nij", truth, masks * templates.envelope(size))
    background = np.full((100, 120, 1), 0.5, np.float32)
    observed = np.asarray(jax.jit(templates.render)(background, x, y, radius, droplet_masks, spec))
    observed = observed + rng.normal(0.0, 0.01, observed.shape).astype(np.float32)
    candidates = np.stack([x, y, radius, np.zeros(n, np.float32)], axis=1)

    start = templates.least_squares_composition(observed, candidates, np.array([0.5], np.float32), masks, spec)
    assert start.shape == (n, types)
    assert np.median(np.abs(start - truth)) < 0.5 * np.median(np.abs(0.5 - truth))
