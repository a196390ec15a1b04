"""Out-of-focus droplets: the blur of each droplet's edge, measured in the image, against truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from droplet_core.imaging.channels import extract_channel
from droplet_core.imaging.images import load_image
from droplet_core.measurements.focus import edge_blur_px, in_focus, with_edge_blur
from tests import second_renderer


def blurred_disks(blurs_px, radius_px=15.0, noise_sd=0.02, seed=0) -> tuple[np.ndarray, pd.DataFrame]:
    """``(h, w)`` bright disks on a dark field, each blurred by its own Gaussian sd, with noise."""
    spacing = int(4 * radius_px)
    height, width = spacing, spacing * len(blurs_px)
    rows, cols = np.mgrid[:height, :width]
    image = np.zeros((height, width))
    centres = [(spacing * (k + 0.5) + 0.3, spacing * 0.5 - 0.2) for k in range(len(blurs_px))]
    for (x, y), blur in zip(centres, blurs_px):
        disk = (np.hypot(cols - x, rows - y) <= radius_px).astype(float)
        image += ndimage.gaussian_filter(disk, blur) if blur > 0 else disk
    image += np.random.default_rng(seed).normal(0.0, noise_sd, image.shape)
    x, y = np.array(centres).T
    return image, pd.DataFrame({"x": x, "y": y, "radius": radius_px})


def test_the_blur_of_an_edge_is_measured():
    blurs = [0.7, 1.5, 3.0, 6.0]
    image, disks = blurred_disks(blurs, radius_px=30.0)
    measured = edge_blur_px(image, disks["x"], disks["y"], disks["radius"])
    # The ladder of blurs tried steps by about a fifth; a drawn disk's pixels add about 0.3 px.
    np.testing.assert_allclose(measured, np.hypot(blurs, 0.3), rtol=0.25)


def test_out_of_focus_droplets_of_an_independent_renderer_are_flagged():
    # Crowded confocal fluorescence with photon noise; a sixth of the droplets lie off the
    # focal plane, dimmer and blurred by 0.2-0.45 of their radius (the small ones, of 6 px,
    # by little more than the in-focus psf: one of nine is missed).
    raw, truth = second_renderer.render("fluorescence", 5, density="crowded")
    channel = extract_channel(load_image(second_renderer.encode(raw)), "grey")[..., 0]
    measured = with_edge_blur(truth.assign(p_exists=1.0), channel)
    flagged = ~measured["in_focus"].to_numpy()
    out = ~truth["in_focus"].to_numpy()
    assert out.sum() >= 5
    assert flagged[out].mean() >= 0.85
    assert flagged[~out].mean() <= 0.05


@pytest.mark.parametrize("radius_px", [3.0, 40.0])
def test_sharp_droplets_of_any_size_are_in_focus(radius_px):
    image, disks = blurred_disks([1.0] * 6, radius_px=radius_px)
    blur = edge_blur_px(image, disks["x"], disks["y"], disks["radius"])
    assert in_focus(blur, disks["radius"].to_numpy()).all()
