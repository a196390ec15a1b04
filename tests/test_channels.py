"""Colour channels on known colours: values, shapes, ranges, errors."""

import numpy as np
import pytest

from droplet_core.imaging.channels import (
    CHANNEL_LABELS,
    CHANNELS,
    all_channels,
    extract_channel,
)

RED, GREEN, BLUE, WHITE, BLACK = (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)


def solid(colour, shape=(8, 10)):
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), shape + (3,)).copy()


def value(colour, name):
    return float(extract_channel(solid(colour), name)[0, 0, 0])


@pytest.mark.parametrize(
    "colour, name, expected",
    [
        (RED, "r", 1.0),
        (RED, "g", 0.0),
        (RED, "b", 0.0),
        (RED, "h", 0.0),
        (RED, "s", 1.0),
        (RED, "v", 1.0),
        (GREEN, "h", 1 / 3),
        (BLUE, "h", 2 / 3),
        (WHITE, "grey", 1.0),
        (WHITE, "L", 1.0),
        (WHITE, "s", 0.0),
        (BLACK, "L", 0.0),
        (BLACK, "grey", 0.0),
        (BLACK, "v", 0.0),
        (WHITE, "a", 128 / 255),  # neutral: a* = 0
        (WHITE, "b*", 128 / 255),
    ],
)
def test_known_colours(colour, name, expected):
    assert value(colour, name) == pytest.approx(expected, abs=2e-3)


def test_lab_opponent_directions():
    assert value(RED, "a") > 0.7 and value(GREEN, "a") < 0.3
    assert value(BLUE, "b*") < 0.3 and value((1, 1, 0), "b*") > 0.8


def test_shapes_and_range_on_random_image():
    rgb = np.random.default_rng(0).uniform(0, 1, (12, 9, 3))
    for name in CHANNELS:
        out = extract_channel(rgb, name)
        assert out.shape == (12, 9, 3 if name == "rgb" else 1)
        assert out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    singles = all_channels(rgb)
    assert list(singles) == list(CHANNELS[1:])
    for name, channel in singles.items():
        assert channel.shape == (12, 9) and channel.dtype == np.float32
        np.testing.assert_array_equal(channel, extract_channel(rgb, name)[..., 0])


def test_every_channel_has_a_label():
    assert set(CHANNEL_LABELS) == set(CHANNELS)
    assert CHANNEL_LABELS["h"] == "hue (HSV)" and CHANNEL_LABELS["L"] == "CIE L*"


def test_unknown_channel():
    with pytest.raises(ValueError, match=r"unknown channel 'x'; choose one of rgb, r, g, b, grey"):
        extract_channel(solid(RED), "x")
