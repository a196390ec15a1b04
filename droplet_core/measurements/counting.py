"""The droplet count every page, file and command reports, with its 90 % interval.

A fit proposes candidate droplets and gives each a probability of existing
(``p_exists``, from ``droplet_core.inference.uncertainty``). The count is the posterior's expected
number of droplets, the sum of ``p_exists``, rounded; its interval is the central 90 %
of the count's distribution (``count_interval``), so the interval always contains the
count. Candidates with ``p_exists`` below one half are "doubtful": probably not droplets.
They stay in the table (flagged) and are drawn differently, but the count weighs them by
their probability like every other droplet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from droplet_core.intervals import INTERVAL

DOUBTFUL_BELOW = 0.5


@dataclass(frozen=True)
class DropletCount:
    """The count of a fit.

    Attributes
    ----------
    count : expected number of droplets (sum of ``p_exists``), rounded.
    low, high : central 90 % interval of the count (``low <= count <= high``).
    candidates : droplets in the table (every candidate the fit kept).
    doubtful : candidates with ``p_exists`` below ``DOUBTFUL_BELOW``.
    """

    count: int
    low: int
    high: int
    candidates: int
    doubtful: int

    def to_dict(self) -> dict:
        return asdict(self)


def droplet_count(p_exists: np.ndarray | None, candidates: int, relative_discrepancy: float = 0.0) -> DropletCount:
    """The count of a fit from each candidate's ``p_exists`` ``(n,)``.

    A fit without ``p_exists`` (an older fit) counts every candidate, with no spread.
    """
    if p_exists is None:
        return DropletCount(candidates, candidates, candidates, candidates, 0)
    p = np.clip(np.asarray(p_exists, np.float64), 0.0, 1.0)
    count = int(np.round(p.sum()))
    low, high = count_interval(p, relative_discrepancy)
    return DropletCount(count, min(low, count), max(high, count), int(p.size), int(np.sum(p < DOUBTFUL_BELOW)))


def count_of_table(droplets: pd.DataFrame, relative_discrepancy: float = 0.0) -> DropletCount:
    """``droplet_count`` of a droplet table (its ``p_exists`` column, when it has one)."""
    p = droplets["p_exists"].to_numpy(float) if "p_exists" in droplets.columns else None
    return droplet_count(p, len(droplets), relative_discrepancy)


def doubtful_mask(droplets: pd.DataFrame, threshold: float = DOUBTFUL_BELOW) -> np.ndarray:
    """``(n,)`` True for droplets whose ``p_exists`` is below ``threshold`` (none without the column)."""
    if "p_exists" not in droplets.columns:
        return np.zeros(len(droplets), bool)
    return droplets["p_exists"].to_numpy(float) < threshold


def count_interval(p_exists: np.ndarray, relative_discrepancy: float = 0.0, level: float = INTERVAL) -> tuple[int, int]:
    """Central ``level`` interval of the droplet count.

    The count of independent droplets that exist with probabilities ``p_exists`` is
    Poisson-binomial; droplets the fit never proposed (or proposed twice) add an error of
    sd ``relative_discrepancy`` times the expected count, independent of it.
    """
    pmf = np.zeros(len(p_exists) + 1)
    pmf[0] = 1.0
    for k, q in enumerate(p_exists):
        pmf[1 : k + 2] = pmf[1 : k + 2] * (1.0 - q) + pmf[: k + 1] * q
        pmf[0] *= 1.0 - q
    spread = relative_discrepancy * float(np.sum(p_exists))
    if spread > 0:
        reach = int(np.ceil(5.0 * spread))
        kernel = norm.pdf(np.arange(-reach, reach + 1), scale=spread)
        pmf = np.convolve(pmf, kernel / kernel.sum())
    else:
        reach = 0
    cdf = np.cumsum(pmf)
    tail = (1.0 - level) / 2.0
    low, high = np.searchsorted(cdf, tail) - reach, np.searchsorted(cdf, 1.0 - tail) - reach
    return max(int(low), 0), int(high)
