"""The level of the intervals Droplet reports, and normal intervals of that level.

Kept apart from ``droplet_core.uncertainty`` (which needs JAX to compute the sds) so that
the app's figures and tables can draw intervals without starting JAX.
"""

from __future__ import annotations

from scipy.stats import norm

INTERVAL = 0.90


def interval_half_width(sd, level: float = INTERVAL):
    """Half width of the central ``level`` interval of a normal with standard deviation ``sd``
    (same shape and unit as ``sd``)."""
    return norm.ppf(0.5 + level / 2.0) * sd
