"""Per-droplet posterior uncertainty by a Laplace approximation at the fitted optimum.

Mean-field SVI is over-confident: its guide ignores how a droplet's position, radius and
look trade off against each other. At the optimum, the Gauss-Newton approximation of the
log posterior's curvature in the unconstrained space is ``J^T J / noise^2`` plus the
prior's, where ``J`` is the derivative of the rendered image with respect to one
droplet's own parameters. Every pixel is given to the droplet nearest to it (distance in
that droplet's radii, among the droplets whose patch covers it): moving one parameter of
all droplets at once then gives, on each droplet's own pixels, the derivative with
respect to that droplet's parameter, up to the faint tails of its neighbours. The
derivatives are forward differences of the fit's own compiled renderer, so a droplet's
block of the curvature costs one render per parameter for the whole image and no new
compilation; the prior's curvature is exact (every parameter has a prior of its own).
Couplings between neighbouring droplets are left out (a block-diagonal
Laplace).

Each droplet's evidence comes from the same pixels: the log-likelihood lost when its
contribution (reconstruction minus background) is taken away, plus the Laplace estimate
of its parameters' log prior volume (the Occam factor), turned into a probability that
the droplet exists at even prior odds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import expit

from droplet_core.models.common import Layout, nearest_droplet_pixels

# Written by ``python -m bench.calibration --calibrate``: per model, the model-discrepancy
# sd per px of radius (at ``DISCREPANCY_REFERENCE_RADIUS_PX``) for x, y and radius, the power
# of the radius it grows with, and the count's relative sd.
CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
# The radius at which the discrepancy's factor is its sd per px of radius. In proportion to the
# radius (power 1) no y factor served every size: the one that covered the seed kind's droplets of
# 1-3 px made a 30 px fluorescence droplet's y sd 3.6 px (99-100 % of large droplets covered),
# and the pooled one left the seed kind at 0.81.
DISCREPANCY_REFERENCE_RADIUS_PX = 4.0
# Forward-difference step in each unconstrained parameter (px for positions, log units
# for radii): small against a droplet (the derivative's error is about step / radius),
# large against float32 rounding of the image.
DIFFERENCE_STEP = 1e-2
# Relative ridge on each block's diagonal: keeps blocks with parameters that change
# neither the image nor the prior invertible.
RIDGE = 1e-6
# Largest Jacobian kept in float32 (bytes); a larger one is kept in float16.
JACOBIAN_FLOAT32_BYTES = 128 * 2**20


class DropletJacobian(NamedTuple):
    """The image's derivatives with respect to each droplet's own parameters, on its own pixels.

    ``R`` rows are the own pixels of all active droplets, grouped by droplet; ``d`` is the
    number of per-droplet parameters (every element of every per-droplet site, in the order
    of ``locs``).
    """

    pixels: np.ndarray  # (R,) flat image index of each row
    starts: np.ndarray  # (n,) each droplet's first row
    fitted: np.ndarray  # (h * w, c) the reconstruction at ``locs``
    log_prior: np.ndarray  # (n,) each droplet's log prior density at ``locs``
    jacobian: np.ndarray  # (d, R, c) derivative of the image at each row (float32, or float16 when large)
    prior_gradient: np.ndarray  # (n, d) derivative of each droplet's log prior density

    def per_droplet(self, per_row: np.ndarray) -> np.ndarray:
        """Sum ``per_row`` ``(R, ...)`` into ``(n, ...)``, droplet by droplet."""
        return _sum_by_droplet(per_row, self.starts, self.pixels.size)

    def gram(self) -> np.ndarray:
        """``(n, d, d)`` each droplet's ``J^T J``."""
        d = len(self.jacobian)
        # One parameter pair at a time: the (R, d, d) products would not fit in memory at full resolution.
        gram = np.zeros((len(self.starts), d, d))
        for i in range(d):
            left = self.jacobian[i].astype(np.float32)
            for j in range(i, d):
                gram[:, i, j] = gram[:, j, i] = self.per_droplet((left * self.jacobian[j]).sum(axis=1))
        return gram

    def project(self, residual: np.ndarray) -> np.ndarray:
        """``(n, d)`` each droplet's ``J^T r`` for a residual ``(R, c)`` on the rows."""
        residual = residual.astype(np.float32)
        return np.stack([self.per_droplet((column * residual).sum(axis=1)) for column in self.jacobian], axis=1)


def droplet_jacobian(
    evaluate: Callable[[dict, np.ndarray], tuple[np.ndarray, np.ndarray]],
    locs: dict,
    active: np.ndarray,
    layout: Layout,
    radius_px: np.ndarray,
) -> DropletJacobian:
    """Forward differences of ``evaluate`` in every per-droplet parameter, all droplets at once.

    Parameters
    ----------
    evaluate : ``evaluate(locs, active)`` -> the ``(h, w, c)`` reconstruction and the ``(n,)``
        log prior density of each droplet's parameters (unconstrained space), with the
        per-droplet parameters set to ``locs`` and everything else held.
    locs : site name -> ``(n,)`` or ``(n, k)`` unconstrained per-droplet values.
    active : (n,) 1 for droplets in the fit, 0 for unused slots.
    layout : the fit's patch layout.
    radius_px : (n,) droplet radii in fit px (the unit of "nearest").
    """
    n = layout.n_droplets
    names = [(name, k) for name, value in locs.items() for k in range(int(np.prod(value.shape[1:])))]
    active = np.asarray(active, np.float32)
    fitted, log_prior = evaluate(locs, active)
    fitted, log_prior = np.asarray(fitted).reshape(layout.n_pixels, -1), np.asarray(log_prior, np.float64)
    flat, own = (np.asarray(a) for a in _own_pixels(layout, locs["x"], locs["y"], radius_px, active))
    rows, pixels = np.flatnonzero(own), flat[own]
    starts = np.searchsorted(layout.droplet[rows], np.arange(n))

    # Three significant digits are plenty for a curvature: above a budget (a full-resolution
    # RGB image, where this array alone would be a third of a GB) it is kept in float16,
    # below it in float32, whose products are faster.
    shape = (len(names), rows.size, fitted.shape[1])
    jacobian = np.zeros(shape, np.float32 if 4 * np.prod(shape) <= JACOBIAN_FLOAT32_BYTES else np.float16)
    prior_gradient = np.zeros((n, len(names)))
    at_optimum = fitted[pixels]

    def launch(name, k):
        moved = dict(locs)
        shift = np.zeros(locs[name].shape, np.float32).reshape(n, -1)
        shift[:, k] = DIFFERENCE_STEP * active
        moved[name] = locs[name] + shift.reshape(locs[name].shape)
        return evaluate(moved, active)

    # JAX runs each render asynchronously: the next one is launched before this one is
    # read, so the device renders while the host differences (one ahead: each holds an image).
    pending = launch(*names[0])
    for j in range(len(names)):
        image, moved_log_prior = pending
        if j + 1 < len(names):
            pending = launch(*names[j + 1])
        jacobian[j] = (np.asarray(image).reshape(layout.n_pixels, -1)[pixels] - at_optimum) / DIFFERENCE_STEP
        prior_gradient[:, j] = (np.asarray(moved_log_prior, np.float64) - log_prior) / DIFFERENCE_STEP
    return DropletJacobian(pixels, starts, fitted, log_prior, jacobian, prior_gradient)


def at_locs(evaluate: Callable, params: dict, observed, anchors, spec) -> Callable:
    """``evaluate_at(locs, active)`` as ``droplet_jacobian`` wants it, from a fit's compiled
    ``evaluate(params, observed, anchors, active, spec)``: the reconstruction and each
    droplet's log prior density with the per-droplet guide locations set to ``locs``."""

    def evaluate_at(locs: dict, active: np.ndarray):
        moved = {**params, **{f"{name}_auto_loc": loc for name, loc in locs.items()}}
        evaluation = evaluate(moved, observed, anchors, jnp.asarray(active), spec)
        return evaluation.reconstruction, evaluation.log_prior

    return evaluate_at


def by_site(columns: np.ndarray, locs: dict) -> dict:
    """Split ``(n, d)`` per-parameter columns into ``{site: array shaped like locs[site]}``."""
    split, column = {}, 0
    for name, value in locs.items():
        width = int(np.prod(value.shape[1:]))
        split[name] = columns[:, column : column + width].reshape(value.shape)
        column += width
    return split


def stacked_by_site(per_site: dict, locs: dict) -> np.ndarray:
    """``(n, d)`` per-droplet values of every site (``(n,)`` or ``(n, k)`` each, as ``locs``) side
    by side, in the order of ``locs``: ``by_site`` undone."""
    return np.concatenate([np.reshape(per_site[name], (len(locs["x"]), -1)) for name in locs], axis=1)


def droplet_uncertainty(
    evaluate: Callable[[dict, np.ndarray], tuple[np.ndarray, np.ndarray]],
    locs: dict,
    prior_curvature: dict,
    observed: np.ndarray,
    active: np.ndarray,
    layout: Layout,
    noise_sd: float,
    radius_px: np.ndarray,
) -> tuple[dict, np.ndarray]:
    """Laplace standard deviations and existence probabilities of every droplet.

    Parameters
    ----------
    evaluate : ``evaluate(locs, active)`` -> the ``(h, w, c)`` reconstruction and the ``(n,)``
        log prior density of each droplet's parameters (unconstrained space), with the
        per-droplet parameters set to ``locs`` and everything else at the optimum.
    locs : site name -> ``(n,)`` or ``(n, k)`` unconstrained per-droplet values at the optimum.
    prior_curvature : site name -> minus the second derivative of the log prior density at
        ``locs``, elementwise (same shapes).
    observed : (h, w, c) the fitted channel.
    active : (n,) 1 for droplets in the fit, 0 for unused slots.
    layout : the fit's patch layout.
    noise_sd : the likelihood's noise standard deviation (channel units).
    radius_px : (n,) droplet radii in fit px (the unit of "nearest").

    Returns
    -------
    sds : site name -> ``(n,)`` or ``(n, k)`` posterior sd in unconstrained units.
    p_exists : (n,) probability that each droplet exists (0 for unused slots).
    """
    active = np.asarray(active, np.float32)
    blocks = droplet_jacobian(evaluate, locs, active, layout, radius_px)
    background, _ = evaluate(locs, np.zeros_like(active))
    background = np.asarray(background).reshape(layout.n_pixels, -1)
    return laplace_of_blocks(blocks, blocks.gram(), background, prior_curvature, locs, observed, active, noise_sd)


def laplace_of_blocks(
    blocks: DropletJacobian,
    gram: np.ndarray,
    background: np.ndarray,
    prior_curvature: dict,
    locs: dict,
    observed: np.ndarray,
    active: np.ndarray,
    noise_sd: float,
) -> tuple[dict, np.ndarray]:
    """``droplet_uncertainty`` from derivatives already taken: ``blocks`` (its ``fitted`` and
    ``log_prior`` at the optimum), ``gram`` ``(n, d, d)`` its ``blocks.gram()``, ``background``
    ``(h * w, c)`` the reconstruction without droplets; the other arguments and the returns as
    ``droplet_uncertainty``'s."""
    active = np.asarray(active, np.float32)
    d = len(blocks.jacobian)

    curvature = gram / noise_sd**2
    diagonal = np.einsum("nii->ni", curvature)
    prior = np.maximum(stacked_by_site(prior_curvature, locs), 0.0)
    curvature[:, np.arange(d), np.arange(d)] += prior + RIDGE * (diagonal.mean(axis=1, keepdims=True) + 1e-12)
    covariance = np.linalg.inv(curvature)

    pixels = blocks.pixels
    data = observed.reshape(len(background), -1)[pixels]
    gain = ((data - background[pixels]) ** 2 - (data - blocks.fitted[pixels]) ** 2).sum(axis=1) / (2.0 * noise_sd**2)
    log_likelihood_gain = blocks.per_droplet(gain)
    _, log_det = np.linalg.slogdet(covariance)
    occam = 0.5 * d * np.log(2.0 * np.pi) + 0.5 * log_det + blocks.log_prior
    p_exists = np.where(active > 0, expit(log_likelihood_gain + occam), 0.0)
    return by_site(np.sqrt(np.einsum("nii->ni", covariance)), locs), p_exists


@jax.jit
def _own_pixels(layout: Layout, x_px, y_px, radius_px, active):
    """Each patch pixel's flat image index ``(L,)`` and whether it is its droplet's own
    ``(L,)``: in the image, of an active droplet, and nearer to it (in its radii) than to any
    other droplet whose patch covers it. Jitted, so the ``(L,)`` intermediates are fused away."""
    return nearest_droplet_pixels(layout, x_px, y_px, radius_px, active)


def _sum_by_droplet(per_row: np.ndarray, starts: np.ndarray, total: int) -> np.ndarray:
    """Sum ``per_row`` ``(R, ...)`` (rows sorted by droplet) into ``(n, ...)`` given each droplet's first row."""
    sums = np.add.reduceat(
        np.concatenate([per_row, np.zeros((1, *per_row.shape[1:]))]), np.minimum(starts, total), axis=0
    )
    empty = np.diff(np.append(starts, total)) == 0
    sums[empty] = 0.0
    return sums


class ModelDiscrepancy(NamedTuple):
    """A model's calibrated discrepancy (``calibration.json``): for ``x``, ``y`` and ``radius``,
    the sd per px of radius at ``DISCREPANCY_REFERENCE_RADIUS_PX`` and the power of the radius
    it grows with (1 where missing); the count's relative sd."""

    per_radius: dict[str, float]
    radius_power: dict[str, float]
    count: float


def model_discrepancy(model: str) -> ModelDiscrepancy:
    """Calibrated model discrepancy of ``model`` (empty and 0 when it was not calibrated)."""
    if not CALIBRATION_FILE.exists():
        return ModelDiscrepancy({}, {}, 0.0)
    record = json.loads(CALIBRATION_FILE.read_text())
    return ModelDiscrepancy(
        record["discrepancy_per_radius"].get(model, {}),
        record.get("discrepancy_radius_power", {}).get(model, {}),
        record["count_discrepancy"].get(model, 0.0),
    )


def discrepancy_sd(radius_px: np.ndarray, per_radius: float, radius_power: float = 1.0) -> np.ndarray:
    """``(n,)`` the discrepancy's sd (px) for droplets of ``radius_px`` ``(n,)``: ``per_radius``
    times the radius at ``DISCREPANCY_REFERENCE_RADIUS_PX``, growing as the radius to ``radius_power``."""
    reference = DISCREPANCY_REFERENCE_RADIUS_PX
    return per_radius * reference * (np.asarray(radius_px, float) / reference) ** radius_power


def with_model_discrepancy(
    droplets: pd.DataFrame, per_radius: dict[str, float], radius_power: dict[str, float] | None = None
) -> pd.DataFrame:
    """``droplets`` with ``sd_x``, ``sd_y``, ``sd_radius`` widened by the model's discrepancy.

    The Laplace sd says how well the data pin a droplet down *within* the model; where the
    model cannot draw the droplet exactly (blur, highlights the masks only approximate),
    its estimate is off by more than that. That error grows with the droplet, so it is
    modelled as an independent normal of sd ``discrepancy_sd`` (``per_radius[c]`` and
    ``radius_power[c]``, 1 where missing), added in quadrature.
    """
    radius_power = radius_power or {}
    widened = droplets.copy()
    for coordinate, factor in per_radius.items():
        column = f"sd_{coordinate}"
        if column in widened:
            discrepancy = discrepancy_sd(widened["radius"], factor, radius_power.get(coordinate, 1.0))
            widened[column] = np.hypot(widened[column], discrepancy)
    return widened


def laplace_sd(
    droplets: pd.DataFrame, coordinate: str, per_radius: dict[str, float], radius_power: dict[str, float] | None = None
) -> np.ndarray:
    """``(n,)`` the Laplace part of ``sd_<coordinate>`` (``with_model_discrepancy`` undone)."""
    sd = droplets[f"sd_{coordinate}"].to_numpy(float)
    power = (radius_power or {}).get(coordinate, 1.0)
    discrepancy = discrepancy_sd(droplets["radius"], per_radius.get(coordinate, 0.0), power)
    return np.sqrt(np.maximum(sd**2 - discrepancy**2, 0.0))
