"""Droplets in two sizes: the fit at the small ones' scale, and the large ones' when it is
judged better."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from droplet_core.detection.matching import match_droplets
from droplet_core.detection.scale import choose_downscale
from droplet_core.inference import engine
from droplet_core.inference.verdict import judge_fit
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import family_settings, make_scene

pytestmark = pytest.mark.slow  # two fits

SCENE = family_settings(
    "fluorescence", width_px=160, height_px=128, n_droplets=10, radius_min_px=10.0, radius_max_px=12.0
)


@pytest.mark.parametrize(
    ("fine_quality", "coarse_quality", "kept"),
    [("failed", None, "coarse"), ("partial", None, "coarse"), ("partial", "partial", "fine")],
)
def test_a_fit_at_the_grains_scale_judged_worse_is_redone_at_the_droplets_scale(
    monkeypatch, fine_quality, coarse_quality, kept
):
    rgb, truth = make_scene(5, SCENE)
    image = rgb.astype(np.float32) / 255.0
    height, width = image.shape[:2]
    # The detector finds every droplet, and sure grains of 0.9 px (a texture) inside
    # them: the scale choice takes them for small droplets and fits at their scale.
    rng = np.random.default_rng(0)
    host = rng.integers(len(truth), size=8)
    angle, depth = rng.uniform(0, 2 * np.pi, 8), rng.uniform(0, 0.6, 8)
    grains = pd.DataFrame(
        {
            "x": truth["x"].to_numpy()[host] + depth * truth["radius"].to_numpy()[host] * np.cos(angle),
            "y": truth["y"].to_numpy()[host] + depth * truth["radius"].to_numpy()[host] * np.sin(angle),
            "radius": 0.9,
            "p_exists": 0.9,
        }
    )
    found = pd.concat([truth[["x", "y", "radius"]].assign(p_exists=0.99), grains], ignore_index=True)
    monkeypatch.setattr(engine, "detect_droplets", lambda *args, **kwargs: found)
    planned = choose_downscale(found, height, width)
    assert planned.factor_for_large > planned.factor
    # A texture the model cannot draw leaves the fit at the grains' scale unexplained (failed)
    # or explained in part: that is what its verdict says on real images of textured droplets.
    # The fit at the droplets' scale is judged as it is (good here) or as given.
    judged_shapes = []

    def verdict_of_this_case(observed, *args):
        judged_shapes.append(observed.shape[:2])
        verdict = judge_fit(observed, *args)
        if observed.shape[0] > height // planned.factor_for_large:
            return replace(verdict, quality=fine_quality, problems=("texture",))
        return replace(verdict, quality=coarse_quality) if coarse_quality else verdict

    monkeypatch.setattr(engine, "judge_fit", verdict_of_this_case)
    result = engine.run_fit(image, FitSettings(), image_sha256="t" * 64)

    assert judged_shapes[0] == (height // planned.factor, width // planned.factor)
    assert len(judged_shapes) == 2
    if kept == "fine":
        assert result.report.downscale == planned.factor
        assert result.report.verdict.quality == fine_quality
        return
    assert result.report.downscale == planned.factor_for_large
    assert result.report.verdict.quality == "good"
    assert "texture" in result.report.downscale_choice["reason"]
    shown = result.droplets[result.droplets["p_exists"] >= 0.5]
    matched = match_droplets(truth, shown)
    assert matched.f1 >= 0.9, matched
