"""The reuse fit reads each droplet's outline once a fit (``reuse_fit._DrawnOutlines``)."""

from __future__ import annotations

import numpy as np

from droplet_core.inference.reuse_fit import _DrawnOutlines


class _LookScaledVariant:
    """A variant whose droplets are drawn to ``(1 + look) * radius``, counting the outlines it reads."""

    def __init__(self):
        self.read = []

    def radius_px(self, values: dict) -> np.ndarray:
        return values["radius"]

    def drawn_radius_px(self, values: dict) -> np.ndarray:
        self.read.append(len(values["radius"]))
        return (1.0 + values["look"]) * values["radius"]


def test_outlines_are_read_once_and_again_where_a_slot_changes():
    variant = _LookScaledVariant()
    outlines = _DrawnOutlines(variant, 4)
    active = np.array([1.0, 1.0, 1.0, 0.0])
    first = {"radius": np.array([2.0, 3.0, 4.0, 5.0]), "look": np.array([0.5, 0.25, 0.0, 1.0])}
    np.testing.assert_allclose(outlines.of(active).drawn_radius_px(first), [3.0, 3.75, 4.0, 5.0])
    # Later: the radii grew and the looks changed; the ratio read first stands for the look.
    later = {"radius": np.array([4.0, 3.0, 2.0, 5.0]), "look": np.array([0.0, 0.0, 0.0, 1.0])}
    np.testing.assert_allclose(outlines.of(active).drawn_radius_px(later), [6.0, 3.75, 2.0, 5.0])
    assert variant.read == [3]
    # Slot 1 is given a new droplet and slot 3 switched on: only they are read again.
    outlines.forget(np.array([False, True, False, True]))
    np.testing.assert_allclose(outlines.of(np.ones(4)).drawn_radius_px(later), [6.0, 3.0, 2.0, 10.0])
    assert variant.read == [3, 2]


def test_known_ratios_are_not_read_again():
    variant = _LookScaledVariant()
    outlines = _DrawnOutlines(variant, 4, known_ratio=np.array([2.0, np.nan, 1.0, np.nan], np.float32))
    values = {"radius": np.array([2.0, 3.0, 4.0, 5.0]), "look": np.array([0.5, 0.25, 0.0, 1.0])}
    drawn = outlines.of(np.array([1.0, 1.0, 1.0, 0.0])).drawn_radius_px(values)
    np.testing.assert_allclose(drawn, [4.0, 3.75, 4.0, 5.0])
    assert variant.read == [1]
