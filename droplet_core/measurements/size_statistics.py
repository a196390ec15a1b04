"""Droplet size statistics with 90 % intervals propagated from the fit's posterior.

Arrays in, a small table out (``size_statistics``): the count; number-weighted mean, sd,
D10 / D50 / D90; volume-weighted Dv10 / Dv50 / Dv90; the Sauter mean diameter D[3,2];
D[4,3]; the span ``(Dv90 - Dv10) / Dv50``; the coefficient of variation (sd / mean); and
the area fraction of the field of view.

Droplets cut by the edge of the field of view show only part of themselves, and large
droplets are cut more often than small ones. The size statistics (everything but the
count) therefore use the Miles-Lantuéjoul correction (``BORDER_MILES_LANTUEJOUL``, the
default): droplets whose disc crosses the edge are left out, and every other droplet of
diameter ``D`` counts ``W H / ((W - D)(H - D))`` times, the inverse of the chance that a
disc of that size lands wholly inside a ``W x H`` field. ``BORDER_KEEP_ALL`` uses every
droplet as found, unweighted. The count is of all droplets in the field, cut or not.

Intervals come from draws of the droplet set: each droplet exists with its probability
``p_exists`` and has a diameter drawn from a normal of its posterior sd (the Laplace sd
widened by the calibrated per-droplet model discrepancy, ``droplet_core.inference.uncertainty``).
The draws give each statistic's spread around its value for the droplets as found
(``statistic_draws``). Per-droplet errors mostly average out over hundreds of droplets;
what a model gets wrong for a whole image at once (e.g. every small droplet drawn a
little too large) does not, so each statistic's draws are also multiplied by a
log-normal factor whose sd was calibrated on synthetic scenes with known truth
(``python -m bench.statistics --calibrate``; ``droplet_core/measurements/size_calibration.json``).
The count's interval is ``droplet_core.inference.uncertainty.count_interval`` (Poisson-binomial
plus the calibrated count discrepancy).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from droplet_core.measurements.counting import droplet_count

BORDER_MILES_LANTUEJOUL = "miles-lantuejoul"
BORDER_KEEP_ALL = "keep-all"
BORDER_HANDLING = (BORDER_MILES_LANTUEJOUL, BORDER_KEEP_ALL)

# (name, label, kind): kind "length" is a diameter (px or µm), "number" has no unit.
STATISTICS = (
    ("count", "Count", "number"),
    ("mean_diameter", "Mean diameter", "length"),
    ("sd_diameter", "SD of diameter", "length"),
    ("d10", "D10", "length"),
    ("d50", "D50 (median)", "length"),
    ("d90", "D90", "length"),
    ("dv10", "Dv10", "length"),
    ("dv50", "Dv50", "length"),
    ("dv90", "Dv90", "length"),
    ("d32", "D[3,2] (Sauter)", "length"),
    ("d43", "D[4,3]", "length"),
    ("span", "Span (Dv90 − Dv10) / Dv50", "number"),
    ("cv", "Coefficient of variation", "number"),
    ("area_fraction", "Area fraction", "number"),
)
STATISTIC_NAMES = tuple(name for name, _, _ in STATISTICS)
COLUMNS = ("statistic", "label", "value", "low_90", "high_90", "unit")


@dataclass(frozen=True)
class StatisticsSettings:
    """How size statistics are computed.

    Attributes
    ----------
    border : ``BORDER_MILES_LANTUEJOUL`` (default) or ``BORDER_KEEP_ALL``; see the module.
    draws : posterior draws of the droplet set behind the intervals.
    seed : seeds the draws, so a table is reproducible.
    level : the intervals' probability.
    """

    border: str = BORDER_MILES_LANTUEJOUL
    draws: int = 400
    seed: int = 0
    level: float = 0.90

    def __post_init__(self) -> None:
        if self.border not in BORDER_HANDLING:
            raise ValueError(f"border handling must be one of {BORDER_HANDLING}, not {self.border!r}")
        if self.draws < 2:
            raise ValueError("need at least 2 draws")
        if not 0 < self.level < 1:
            raise ValueError("the interval level must be in (0, 1)")


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q, *, order: np.ndarray | None = None) -> np.ndarray:
    """Quantiles ``q`` of ``values`` ``(n,)`` with non-negative ``weights`` ``(n,)``.

    The weighted empirical distribution function is interpolated linearly between the
    midpoints of each value's weight (so equal weights give the "Hazen" quantiles).
    ``order`` is ``argsort(values)`` when the caller has it. NaN when the weights sum to zero.
    """
    q = np.asarray(q, float)
    order = np.argsort(values) if order is None else order
    sorted_values, sorted_weights = values[order], weights[order]
    keep = sorted_weights > 0
    if not keep.any():
        return np.full(q.shape, np.nan)
    sorted_values, sorted_weights = sorted_values[keep], sorted_weights[keep]
    cumulative = (np.cumsum(sorted_weights) - 0.5 * sorted_weights) / sorted_weights.sum()
    return np.interp(q, cumulative, sorted_values)


def border_weights(x_px, y_px, diameter_px, field: tuple[float, float, float, float], border: str) -> np.ndarray:
    """``(n,)`` each droplet's weight in the size statistics (see the module's docstring).

    ``field = (x0, y0, x1, y1)``: the field of view in pixels, ends exclusive, so its
    edges are at ``x0 - 0.5`` and ``x1 - 0.5`` (pixel centres at integer indices).
    """
    diameter = np.asarray(diameter_px, float)
    if border == BORDER_KEEP_ALL:
        return np.ones_like(diameter)
    x0, y0, x1, y1 = field
    width, height = x1 - x0, y1 - y0
    radius = 0.5 * diameter
    inside = (
        (np.asarray(x_px) - radius >= x0 - 0.5)
        & (np.asarray(x_px) + radius <= x1 - 0.5)
        & (np.asarray(y_px) - radius >= y0 - 0.5)
        & (np.asarray(y_px) + radius <= y1 - 0.5)
    )
    guard = np.clip(width - diameter, 0.0, None) * np.clip(height - diameter, 0.0, None)
    with np.errstate(divide="ignore"):
        return np.where(inside & (guard > 0), width * height / np.where(guard > 0, guard, 1.0), 0.0)


def _statistics_of(diameter: np.ndarray, weight: np.ndarray, field_area_px: float) -> np.ndarray:
    """All statistics but the count (``STATISTIC_NAMES[1:]``) of one droplet set."""
    if weight.sum() <= 0:  # no droplet to size: no sizes, and nothing of the field covered
        return np.r_[np.full(len(STATISTICS) - 2, np.nan), 0.0]
    mean = np.average(diameter, weights=weight)
    sd = np.sqrt(np.average((diameter - mean) ** 2, weights=weight))
    order = np.argsort(diameter)
    d10, d50, d90 = weighted_quantile(diameter, weight, (0.1, 0.5, 0.9), order=order)
    volume = weight * diameter**3
    dv10, dv50, dv90 = weighted_quantile(diameter, volume, (0.1, 0.5, 0.9), order=order)
    d32 = volume.sum() / (weight * diameter**2).sum()
    d43 = (volume * diameter).sum() / volume.sum()
    area_fraction = (weight * np.pi * diameter**2 / 4.0).sum() / field_area_px
    return np.array(
        [mean, sd, d10, d50, d90, dv10, dv50, dv90, d32, d43, (dv90 - dv10) / dv50, sd / mean, area_fraction]
    )


def statistic_draws(
    x_px: np.ndarray,
    y_px: np.ndarray,
    radius_px: np.ndarray,
    field: tuple[float, float, float, float],
    *,
    sd_radius_px: np.ndarray | None = None,
    p_exists: np.ndarray | None = None,
    settings: StatisticsSettings = StatisticsSettings(),
) -> tuple[np.ndarray, np.ndarray]:
    """The size statistics of the droplets as found, and posterior draws of them around it.

    Parameters are those of ``size_statistics``.

    Returns
    -------
    values : (k,) the statistics ``STATISTIC_NAMES[1:]`` (px) of the droplets as found.
    draws : (settings.draws, k) draws of them (px), shifted so that their median is ``values``.

    A draw adds measurement noise to diameters that already hold it, which widens the size
    distribution once more and moves D[3,2], the sd, the CV ...: the draws give each
    statistic's spread, the droplets as found its centre. (Correcting the centre by that
    shift, as a bootstrap would, needs the per-droplet sds to be the noise's sd; the
    calibrated ones are sized for 90 % coverage of heavy-tailed errors, and on synthetic
    scenes the correction doubled the bias of D[3,2]. What bias is left is covered by the
    calibrated discrepancy of each statistic.)
    """
    x_px, y_px, radius_px = (np.asarray(a, float) for a in (x_px, y_px, radius_px))
    n = radius_px.size
    sd = np.zeros(n) if sd_radius_px is None else np.nan_to_num(np.asarray(sd_radius_px, float))
    p = np.ones(n) if p_exists is None else np.clip(np.asarray(p_exists, float), 0.0, 1.0)
    field_area = float((field[2] - field[0]) * (field[3] - field[1]))
    diameter = 2.0 * radius_px
    values = _statistics_of(diameter, border_weights(x_px, y_px, diameter, field, settings.border), field_area)
    rng = np.random.default_rng(settings.seed)
    draws = np.empty((settings.draws, values.size))
    for k in range(settings.draws):
        exists = rng.random(n) < p
        drawn = np.clip(diameter + 2.0 * sd * rng.standard_normal(n), 0.05 * diameter, None)
        draws[k] = _statistics_of(drawn, border_weights(x_px, y_px, drawn, field, settings.border) * exists, field_area)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a statistic with no droplet in any draw stays NaN
        return values, draws - np.nanmedian(draws, axis=0) + values


def with_discrepancy(draws: np.ndarray, relative_sd: np.ndarray, seed: int = 0) -> np.ndarray:
    """``draws`` ``(s, k)`` each multiplied by an independent log-normal factor of log-sd
    ``relative_sd`` ``(k,)`` (the calibrated error of each statistic that the per-droplet
    uncertainty does not explain: sizes a model gets wrong for a whole image at once)."""
    rng = np.random.default_rng(seed + 1)
    return draws * np.exp(np.asarray(relative_sd, float) * rng.standard_normal(draws.shape))


def size_statistics(
    x_px: np.ndarray,
    y_px: np.ndarray,
    radius_px: np.ndarray,
    field: tuple[float, float, float, float],
    *,
    sd_radius_px: np.ndarray | None = None,
    p_exists: np.ndarray | None = None,
    count_discrepancy: float = 0.0,
    discrepancy: dict[str, float] | None = None,
    um_per_px: float | None = None,
    settings: StatisticsSettings = StatisticsSettings(),
) -> pd.DataFrame:
    """Size statistics of one image's droplets, with intervals.

    Parameters
    ----------
    x_px, y_px, radius_px : (n,) droplet centres (column, row) and radii in pixels.
    field : ``(x0, y0, x1, y1)`` the field of view that was fitted, in pixels, ends exclusive.
    sd_radius_px : (n,) posterior sd of each radius (px); None for none.
    p_exists : (n,) probability that each droplet exists; None for certainty.
    count_discrepancy : the count's calibrated relative sd (model discrepancy).
    discrepancy : statistic name -> calibrated relative sd of that statistic beyond the
        per-droplet uncertainty (``with_discrepancy``; for ``count``, added in quadrature
        to ``count_discrepancy``); None or missing names for none.
    um_per_px : length of a pixel in micrometres; None reports diameters in pixels.
    settings : border handling, draws, level.

    Returns
    -------
    DataFrame, one row per statistic (``STATISTICS`` order), columns ``statistic``,
    ``label``, ``value`` (of the droplets as found), ``low_90``, ``high_90`` (the central
    ``settings.level`` interval) and ``unit`` (``"µm"``, ``"px"`` or ``""``).
    """
    discrepancy = discrepancy or {}
    values, draws = statistic_draws(
        x_px, y_px, radius_px, field, sd_radius_px=sd_radius_px, p_exists=p_exists, settings=settings
    )
    draws = with_discrepancy(
        draws, np.array([discrepancy.get(name, 0.0) for name in STATISTIC_NAMES[1:]]), settings.seed
    )
    tail = 0.5 * (1.0 - settings.level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(draws, [tail, 1.0 - tail], axis=0)
    low = np.maximum(low, 0.0)  # every statistic is non-negative; a recentred draw need not be
    # The fit's one count (``droplet_core.measurements.counting``): the expected number, in its interval.
    count = droplet_count(
        p_exists, int(np.size(radius_px)), float(np.hypot(count_discrepancy, discrepancy.get("count", 0.0)))
    )
    rows = [("count", "Count", float(count.count), float(count.low), float(count.high), "")]
    for (name, label, kind), value, lo, hi in zip(STATISTICS[1:], values, low, high):
        rows.append((name, label, value, lo, hi, "px" if kind == "length" else ""))
    return in_micrometres(pd.DataFrame(rows, columns=list(COLUMNS)), um_per_px)


def in_micrometres(table: pd.DataFrame, um_per_px: float | None) -> pd.DataFrame:
    """A statistics table in px with its diameters in µm (``um_per_px`` µm per pixel); as it is when None."""
    if not um_per_px:
        return table
    table = table.copy()
    lengths = table["unit"] == "px"
    table.loc[lengths, ["value", "low_90", "high_90"]] *= um_per_px
    table.loc[lengths, "unit"] = "µm"
    return table


def statistics_wide(table: pd.DataFrame) -> dict[str, float]:
    """One flat row of a statistics table: ``<name>``, ``<name>_low_90``, ``<name>_high_90``
    (for a batch's ``summary.csv``)."""
    row = {}
    for record in table.itertuples(index=False):
        row[record.statistic] = record.value
        row[f"{record.statistic}_low_90"] = record.low_90
        row[f"{record.statistic}_high_90"] = record.high_90
    return row
