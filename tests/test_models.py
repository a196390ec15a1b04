"""Rendering machinery shared by the model variants."""

from __future__ import annotations

import jax
import numpy as np

from droplet_core.models import templates
from droplet_core.models.common import PADDING_OFFSET_PX, Layout, ModelSpec, bucket_size, make_layout


def test_bucket_sizes_hold_the_count_and_waste_little():
    for count in (1, 7, 9, 100, 1000, 3029, 123_457):
        size = bucket_size(count)
        assert count <= size <= count * 1.125
    assert bucket_size(3000) == bucket_size(3050)


def test_layout_padding_draws_nothing():
    rng = np.random.default_rng(0)
    n = 25
    x, y = rng.uniform(0, 60, n).astype(np.float32), rng.uniform(0, 40, n).astype(np.float32)
    radius = rng.uniform(1.0, 6.0, n).astype(np.float32)
    padded = make_layout((40, 60, 1), radius, templates.EXTENT)
    real = int(np.sum(padded.offset_x != PADDING_OFFSET_PX))
    assert padded.droplet.size == bucket_size(real) > real
    trimmed = Layout(40, 60, 1, n, padded.droplet[:real], padded.offset_x[:real], padded.offset_y[:real],
                     padded.radius_cap_px)
    masks = rng.normal(0.0, 0.2, (n, 15, 15)).astype(np.float32)
    background = np.full((40, 60, 1), 0.5, np.float32)
    images = [
        np.asarray(jax.jit(templates.render)(background, x, y, radius, masks, ModelSpec(layout, 1.0, 6, 15)))
        for layout in (padded, trimmed)
    ]
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - 0.5).max() > 0.05
