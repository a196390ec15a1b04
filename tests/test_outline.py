"""The outline read-out's edge rule: the middle of a plateau of equal radial steps, whatever the arithmetic.

Checked against known truth: drawn looks whose edge is a ramp of constant slope, and looks
of a fit's six masks mixed by random compositions, read with products that round differently.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from droplet_core.models import outline as outline_module
from droplet_core.models.outline import outline
from droplet_core.models.templates import EXTENT, disk_profile, envelope


def ramp_look(size: int, inner: float, outer: float) -> np.ndarray:
    """``(size, size)`` dark disk whose edge falls linearly from ``inner`` to ``outer`` radii."""
    axis = np.linspace(-EXTENT, EXTENT, size)
    distance = np.hypot(*np.meshgrid(axis, axis))
    return -0.3 * np.clip((outer - distance) / (outer - inner), 0.0, 1.0)


@pytest.mark.parametrize("inner, outer", [(0.8, 1.2), (0.7, 1.1), (0.9, 1.4)])
def test_the_edge_of_a_ramp_is_its_middle(inner, outer):
    # Along the rays that follow the grid the bilinear look is the ramp itself: its radial
    # gradient is the same all along it, every point of it is a maximum, and the edge is its
    # middle (before, the outermost point that float rounding let pass).
    look = ramp_look(61, inner, outer)[None]
    _, points = outline_module._outline_and_edge_points(look, EXTENT, np.array([10.0]))
    along_grid = np.isclose(np.mod(points.angle, np.pi / 2), 0.0)
    assert points.found[0, along_grid].all()
    np.testing.assert_allclose(points.distance[0, along_grid], 0.5 * (inner + outer), atol=0.02)


def mixed_looks(count: int, seed: int) -> np.ndarray:
    """``(count, 21, 21)`` looks mixed from six disk-like masks of the templates' 21-cell grid, as a fit draws them."""
    rng = np.random.default_rng(seed)
    masks = -0.3 * disk_profile(21)[None] * (1.0 + 0.3 * rng.normal(size=(6, 21, 21))) * envelope(21)
    return np.einsum("nt,tij->nij", rng.uniform(0.0, 1.0, size=(count, 6)), masks).astype(np.float32)


def test_outlines_do_not_depend_on_float_rounding():
    looks = mixed_looks(300, seed=1)
    radius_px = np.random.default_rng(2).uniform(1.0, 6.0, len(looks))
    read = outline(looks, EXTENT, radius_px)
    # The same looks read in float64 with a dense product: every step rounds differently.
    rays = outline_module._ray_sampling(21, EXTENT)
    dense = rays._replace(gradient=rays.gradient.toarray().astype(np.float64))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outline_module, "_ray_sampling", lambda size, extent: dense)
        exact = outline(looks.astype(np.float64), EXTENT, radius_px)
    for field in ("centre_x", "centre_y", "edge"):
        np.testing.assert_allclose(getattr(read, field), getattr(exact, field), atol=1e-6)


def caustic_look(size: int) -> np.ndarray:
    """``(1, size, size)`` dark droplet of radius 1 with a bright caustic below its centre that
    spills a little past the edge (as the seed kind draws them): at the lower edge the step from
    the caustic to its spill is weak, and the strong one is the caustic's rise inside."""
    axis = np.linspace(-EXTENT, EXTENT, size)
    x, y = np.meshgrid(axis, axis)
    inside = np.hypot(x, y) < 1.0
    body = -0.3 * inside - 0.1 * (inside & (np.hypot(x, y) > 0.75))
    caustic = 0.9 * np.exp(-(x**2 + (y - 0.6) ** 2) / (2 * 0.36**2)) * np.where(inside, 1.0, 0.3)
    return ndimage.gaussian_filter(body + caustic, 1.0)[None]


def test_a_caustic_at_the_lower_edge_moves_no_outline_of_a_droplet_of_a_few_pixels():
    look = caustic_look(61)
    drawn = outline(look, EXTENT, np.array([outline_module.OUTLINE_STRICT_MIN_RADIUS_PX]))
    assert drawn.centre_x[0] == pytest.approx(0.0, abs=0.01)
    assert drawn.centre_y[0] == pytest.approx(0.0, abs=0.01)
    assert drawn.edge[0] == pytest.approx(1.0, abs=0.01)
    # One rejection of outlying edge points (what droplets below a few pixels get) leaves
    # enough of the caustic's rim points to move the outline up and shrink it.
    loose = outline(look, EXTENT, np.array([0.5 * outline_module.OUTLINE_STRICT_MIN_RADIUS_PX]))
    assert loose.centre_y[0] < -0.03 and loose.edge[0] < 0.985
