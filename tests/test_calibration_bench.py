"""The calibration bench's rule for the model discrepancy, on errors drawn with a known one."""

import numpy as np
import pandas as pd

from bench.calibration import calibrated_discrepancy, covered
from droplet_core.inference.uncertainty import discrepancy_sd


def drawn_errors(per_radius: float, power: float, seed: int = 0) -> pd.DataFrame:
    """Two kinds of scene, small droplets (1-3 px) and large ones (20-40 px), whose x errors are
    normal with the discrepancy sd of ``per_radius`` and ``power`` and a small Laplace sd."""
    rng = np.random.default_rng(seed)
    kinds = []
    for kind, (low, high) in {"small": (1.0, 3.0), "large": (20.0, 40.0)}.items():
        radius = rng.uniform(low, high, 4000)
        laplace = np.full_like(radius, 0.01)
        error = rng.normal(0.0, np.hypot(laplace, discrepancy_sd(radius, per_radius, power)))
        kinds.append(pd.DataFrame({"radius": radius, "err_x": error, "laplace_sd_x": laplace, "kind": kind}))
    errors = pd.concat(kinds, ignore_index=True)
    return errors.assign(weight=1.0 / errors.groupby("kind")["radius"].transform("size"))


def test_the_power_and_factor_the_errors_were_drawn_with_are_found():
    errors = drawn_errors(per_radius=0.05, power=0.5)
    factor, power = calibrated_discrepancy(errors, "x")
    assert power == 0.5
    assert abs(factor - 0.05) < 0.004
    for _, kind in errors.groupby("kind"):
        assert 0.88 <= covered(kind, "x", factor, power, 0.9).mean() <= 0.92


def test_a_discrepancy_in_proportion_to_the_radius_keeps_power_one():
    factor, power = calibrated_discrepancy(drawn_errors(per_radius=0.05, power=1.0), "x")
    assert power == 1.0
    assert abs(factor - 0.05) < 0.004
