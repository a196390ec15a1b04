"""Fit ids of unchanged results stay the same across refactorings of the code around them.

The expected keys were computed by the code before the typed-contracts redesign (issue 16):
a share link made then must still find its fit, and an unchanged request must still be
served from the store instead of recomputed. They were computed at ``CODE_VERSION`` 7; a
later version (a change of the model maths) changes every key on purpose, so the check
runs at version 7, with the settings of that time spelled out (the default ``mask_size``
was 15 then).
"""

import pytest

from droplet_core import fit_ids
from droplet_core.fit_ids import fit_key
from droplet_core.settings import FitSettings

IMAGE_SHA256 = "ab" * 32


@pytest.mark.parametrize(
    ("settings", "parent_fit_id", "stopped_at_step", "expected"),
    [
        (FitSettings(mask_size=15), None, None, "6d71ed97b3cfb31278e8f0feac3c00dc"),
        (
            FitSettings(model="gaussian", channel="r", downscale=2, steps=300, seed=3, mask_size=15),
            None,
            None,
            "d0504209d024fb499fccf3b8b328feda",
        ),
        (
            FitSettings(model="neural", channel="rgb", crop=(1, 2, 30, 40), initializer="log", mask_size=15),
            "0" * 32,
            50,
            "8fa6569a7abb29a5d640f57862e50a07",
        ),
        (
            FitSettings(appearance_from="f" * 32, droplets=40, mask_size=15),
            None,
            None,
            "cf1cd97fa39d52f607eccc354ec8507a",
        ),
    ],
)
def test_fit_keys_are_those_of_the_code_before_the_redesign(
    settings, parent_fit_id, stopped_at_step, expected, monkeypatch
):
    monkeypatch.setattr(fit_ids, "CODE_VERSION", "7")
    assert fit_key(IMAGE_SHA256, settings, parent_fit_id, stopped_at_step) == expected
