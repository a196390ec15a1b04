"""Fits with a reused appearance: Levenberg-Marquardt, droplet by droplet.

With the appearance held fixed, what is left to fit splits into small problems. Each
droplet's x, y, radius and composition change only the pixels near it, so they are a
nonlinear least-squares problem of a few parameters on the pixels the droplet owns; the
background shading is linear in its grid values, a least-squares problem of its own. Each
iteration solves the background for the current droplets, then takes one damped
Gauss-Newton (Levenberg-Marquardt) step for every droplet at once, with the block-diagonal
curvature the Laplace uncertainty uses (``droplet_core.inference.uncertainty.droplet_jacobian``), and
keeps each droplet's step only where it lowers that droplet's own objective (its damping
grows where it does not). From the detector's candidates this converges in about ten
iterations, where SVI needs hundreds of steps, and to a lower RMSE: on the example image it
reaches the RMSE of the 150-step SVI fit whose masks it reuses (0.0185) after 4 iterations
and ends at 0.0165 after 11 (``bench/amortised.py``).

An iteration costs a render per droplet parameter (forward differences) and two for the
trial steps (one that switched no droplets, after one that computed the derivatives, reuses
them and renders once to bring the residual up to date), all run by the fit's compiled
``evaluate``, which the fit that learned the appearance compiled: a reuse fit compiles no
large program. On CPU the algebra runs on the host in
numpy; where JAX's default device is not the CPU each step runs as compiled programs on it
instead (``droplet_core.inference.reuse_compiled``, forward-mode derivatives), since there
the host's algebra and copies cost more than the renders.
The droplet count is decided as in SVI (``droplet_core.inference.droplet_switching``): missed droplets are
switched on after the first iteration and every other iteration after, and negligible ones
and duplicates switched off. The result is the posterior mode; the guide's scales are set
afterwards from the Laplace approximation at it, from the last iteration's Jacobian
(``reuse_uncertainty``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax.numpy as jnp
import numpy as np

from droplet_core.imaging.images import noise_sd_estimate
from droplet_core.inference import reuse_compiled
from droplet_core.inference.damping import DAMPING_DOWN, DAMPING_RANGE, DAMPING_UP, INITIAL_DAMPING, TRIES
from droplet_core.inference.droplet_switching import tidy
from droplet_core.inference.uncertainty import (
    DropletJacobian,
    at_locs,
    by_site,
    droplet_jacobian,
    droplet_uncertainty,
    laplace_of_blocks,
    stacked_by_site,
)
from droplet_core.models.common import ModelSpec, shading_basis
from droplet_core.results import OptimiserRun
from droplet_core.settings import FitProgress

if TYPE_CHECKING:
    from droplet_core.inference.guide import Evaluation, MeanFieldGuide
    from droplet_core.models import Variant

# Droplets are switched on and off before iteration TIDY_FIRST (the first that looks at a residual drawn by
# roughly placed droplets) and every TIDY_EVERY iterations after.
TIDY_FIRST = 1
TIDY_EVERY = 2
# Converged: an iteration without switching droplets lowered the RMSE by less than this fraction.
CONVERGED_RMSE_FRACTION = 0.01


class ReuseRun(NamedTuple):
    """What ``fit_with_fixed_appearance`` reached: the optimiser's ``run``, the fit evaluated at
    ``run.params`` (``evaluation``, its ``values["noise"]`` the run's), and the last iteration's
    ``jacobian`` with its ``gram`` ``(n, d, d)`` for the Laplace uncertainty (None when no
    iteration took a step)."""

    run: OptimiserRun
    evaluation: Evaluation
    jacobian: DropletJacobian | None
    gram: np.ndarray | None


def fit_with_fixed_appearance(
    evaluate: Callable,
    params: dict,
    per_droplet: list[str],
    observed: np.ndarray,
    anchors: np.ndarray,
    active: np.ndarray,
    spec: ModelSpec,
    guide: MeanFieldGuide,
    variant: Variant,
    *,
    max_iterations: int,
    add: bool,
    drawn_ratio: np.ndarray | None = None,
    progress: Callable[[FitProgress], None] | None = None,
    stop: threading.Event | None = None,
    started: float | None = None,
) -> ReuseRun:
    """Fit droplets and background with the appearance in ``params`` held fixed.

    Parameters
    ----------
    evaluate : the fit's compiled ``evaluate(params, observed, anchors, active, spec)`` ->
        values of every site, ``(h, w, c)`` reconstruction, ``(n,)`` strength, ``(n,)`` log
        prior and the prior's curvature of each per-droplet site.
    params : starting guide parameters (``<site>_auto_loc`` / ``_auto_scale``, numpy).
    per_droplet : names of the per-droplet sites (their locations are refined).
    observed : (h, w, c) the fitted channel.
    anchors : (n, 3) detector x, y, radius (fit px); active : (n,) which slots are droplets.
    spec : the fit's model spec; guide : its ``MeanFieldGuide``; variant : its model variant.
    max_iterations : most iterations; the fit stops earlier once converged.
    add : whether droplets may be switched on (the automatic droplet count).
    drawn_ratio : (n,) each slot's drawn radius over its model radius where it is known (a
        warm start's ``WarmStartState.drawn_ratio``; NaN, or None for all, where the outline
        is read).
    progress, stop : as for ``run_fit``, per iteration.
    started : ``time.perf_counter()`` at the start of the fit, for progress reports.

    Returns
    -------
    ReuseRun: its ``run``'s ``losses`` are the negative log posterior density where each iteration started.
    """
    compiled = reuse_compiled.compiled_chosen()
    started = time.perf_counter() if started is None else started
    layout = spec.layout
    height, width, channels = observed.shape
    observed_j = jnp.asarray(observed)
    flat_observed = observed.reshape(layout.n_pixels, channels).astype(np.float64)
    pixel_noise_sd = noise_sd_estimate(observed)
    params = dict(params)
    damping = np.full(layout.n_droplets, INITIAL_DAMPING)
    # The Jacobian, its Gram matrices and the locations it was computed at, while reusable.
    reusable: tuple | None = None
    # The last iteration's Jacobian and Gram matrices, for the Laplace uncertainty at the end.
    last_jacobian: tuple = (None, None)
    losses, status, first_iteration_s, previous_rmse = [], "done", 0.0, np.inf
    # The evaluation of the parameters the fit converged at, where it did (no need to render them again).
    converged = None
    outlines = _DrawnOutlines(variant, layout.n_droplets, drawn_ratio)

    def evaluated(params, anchors, active):
        return evaluate(params, observed_j, jnp.asarray(anchors), jnp.asarray(active), spec)

    for iteration in range(max_iterations):
        if stop is not None and stop.is_set():
            status = "stopped"
            break
        iteration_started = time.perf_counter()
        tidied = iteration >= TIDY_FIRST and (iteration - TIDY_FIRST) % TIDY_EVERY == 0
        evaluation = evaluated(params, anchors, active)
        if tidied:
            params, anchors, active, evaluation = _tidied(
                evaluated,
                evaluation,
                params,
                observed,
                anchors,
                active,
                spec,
                guide,
                outlines,
                pixel_noise_sd,
                add,
                prune=iteration > TIDY_FIRST,
            )
        values, fitted = evaluation.values, evaluation.reconstruction
        values = {k: np.asarray(v) for k, v in values.items()}
        residual = flat_observed - np.asarray(fitted, np.float64).reshape(layout.n_pixels, channels)
        rmse = float(np.sqrt(np.mean(residual**2)))
        losses.append(_negative_log_posterior(rmse, residual.size, np.asarray(evaluation.log_prior), active))
        if progress is not None:
            elapsed_s = time.perf_counter() - started
            progress(FitProgress(iteration + 1, max_iterations, losses[-1], elapsed_s, int(active.sum())))
        if not tidied and rmse > (1.0 - CONVERGED_RMSE_FRACTION) * previous_rmse:
            converged = evaluation
            break
        previous_rmse = rmse
        params["bg_shading_auto_loc"] = _solved_shading(residual, values, height, width)
        locs = {name: np.asarray(params[f"{name}_auto_loc"]) for name in per_droplet}
        evaluate_at = at_locs(evaluate, params, observed_j, jnp.asarray(anchors), spec)
        prior_curvature = stacked_by_site(evaluation.prior_curvature, locs)
        if compiled:  # what follows, reusing the Jacobian alike, compiled for JAX's device
            args = (evaluate, tuple(per_droplet), params, observed_j, anchors, active, spec)
            if reusable is None or tidied:
                reusable = linearisation = reuse_compiled.linearised(*args, variant.radius_px(values))
            else:
                linearisation, reusable = reusable, None
            params, damping = reuse_compiled.stepped(*args, prior_curvature, linearisation, damping)
            first_iteration_s = first_iteration_s or time.perf_counter() - iteration_started
            continue
        # An iteration that switched no droplets, after one that computed the Jacobian, reuses it
        # with the residual and the prior's gradient brought up to date: the forward differences
        # (a render per parameter) are most of an iteration's time, and droplets move by a small
        # fraction of their size from one iteration to the next. (On unscored movies this cost
        # tracks followed 0.003-0.008 and RMSE about 1.5 %; see docs/benchmarks.md.)
        if reusable is not None and not tidied:
            blocks, gram = _brought_up_to_date(*reusable, evaluate_at, locs, prior_curvature, active)
            reusable = None
        else:
            blocks = droplet_jacobian(evaluate_at, locs, active, layout, variant.radius_px(values))
            gram = blocks.gram()
            reusable = (blocks, gram, locs)
        last_jacobian = (blocks, gram)
        noise_sd = max(float(np.sqrt(np.mean((flat_observed - blocks.fitted) ** 2))), 1e-6)
        step, damping = _damped_step(
            blocks,
            gram,
            evaluate_at,
            locs,
            prior_curvature,
            flat_observed,
            active,
            noise_sd,
            damping,
        )
        for name, change in by_site(step, locs).items():
            params[f"{name}_auto_loc"] = (locs[name] + change).astype(np.float32)
        if iteration == 0:
            first_iteration_s = time.perf_counter() - iteration_started
    params, anchors, active, evaluation = _tidied(
        evaluated,
        evaluated(params, anchors, active) if converged is None else converged,
        params,
        observed,
        anchors,
        active,
        spec,
        guide,
        outlines,
        pixel_noise_sd,
        False,
        prune=True,
    )
    rmse = float(
        np.sqrt(
            np.mean((flat_observed - np.asarray(evaluation.reconstruction).reshape(layout.n_pixels, channels)) ** 2)
        )
    )
    params["noise_auto_loc"] = guide.unconstrained({"noise": np.float32(max(rmse, 1e-6))})["noise"]
    params = {name: np.asarray(value) for name, value in params.items()}
    # The noise changes no rendering, log prior or curvature: the last evaluation stands for one at ``params``.
    noise = guide.constrained({"noise": params["noise_auto_loc"]})["noise"]
    evaluation = evaluation._replace(values={**evaluation.values, "noise": noise})
    run = OptimiserRun(
        params,
        anchors,
        active,
        np.asarray(losses, np.float32),
        len(losses),
        status,
        first_iteration_s,
        losses[-1] if losses else None,
    )
    return ReuseRun(run, evaluation, *last_jacobian)


def reuse_uncertainty(
    reuse: ReuseRun,
    evaluate_at: Callable,
    locs: dict,
    prior_curvature: dict,
    observed: np.ndarray,
    noise_sd: float,
    radius_px: np.ndarray,
    layout,
) -> tuple[dict, np.ndarray]:
    """``droplet_uncertainty`` of a reuse fit (same arguments, ``active`` the run's) from its last
    iteration's Jacobian: the derivatives and each droplet's own pixels kept, the reconstruction
    and log prior those of the end (one render, of the background, where a new Jacobian takes
    one per parameter and two). Droplets move by a small fraction of their size in the last
    iterations; droplets switched off at the end keep their pixels, and get ``p_exists`` 0.
    Without a Jacobian (no iteration ran) the uncertainty is taken anew."""
    active = reuse.run.active
    evaluation = reuse.evaluation
    if reuse.jacobian is None:
        return droplet_uncertainty(evaluate_at, locs, prior_curvature, observed, active, layout, noise_sd, radius_px)
    fitted = np.asarray(evaluation.reconstruction).reshape(layout.n_pixels, -1)
    blocks = reuse.jacobian._replace(fitted=fitted, log_prior=np.asarray(evaluation.log_prior, np.float64))
    background, _ = evaluate_at(locs, np.zeros_like(active))
    background = np.asarray(background).reshape(layout.n_pixels, -1)
    return laplace_of_blocks(blocks, reuse.gram, background, prior_curvature, locs, observed, active, noise_sd)


def _tidied(
    evaluated, evaluation, params, observed, anchors, active, spec, guide, outlines, pixel_noise_sd, add, prune
):
    """``droplet_switching.tidy`` at ``evaluation`` (``evaluated(params, anchors, active)``):
    ``(params, anchors, active, evaluation)``, evaluated again where droplets changed.
    ``outlines`` is the fit's ``_DrawnOutlines``."""
    params, tidied_anchors, tidied_active = tidy(
        evaluation, params, observed, anchors, active, spec, guide, outlines.of(active), pixel_noise_sd, add, prune
    )
    # A slot switched on or off, or given a new droplet (a pruned one's slot can be refilled at once).
    outlines.forget((tidied_active != active) | np.any(tidied_anchors != anchors, axis=1))
    anchors = tidied_anchors
    if np.any(tidied_active != active):
        return params, anchors, tidied_active, evaluated(params, anchors, tidied_active)
    return params, anchors, active, evaluation


class _DrawnOutlines:
    """``variant`` whose ``drawn_radius_px`` reads the outlines of the active droplets only (the
    model's radius stands for the rest), and each droplet's once in a fit: later its drawn
    radius is the ratio read then (drawn over model radius) times its radius now.

    Droplet switching looks at active droplets alone, and reading outlines was most of its
    time. A droplet's look changes from one tidy to the next, but the ratio hardly does
    (movie 4 of ``bench.timelapse``: median 0.4 %, at most 4.6 %, jitter of the outline's ray
    steps more than the look's change); the droplet table reads every outline anew. A
    continued fit (a time-lapse frame) takes the ratios its start's table read
    (``known_ratio``, NaN where unknown) instead of reading them first.
    """

    def __init__(self, variant: Variant, n_droplets: int, known_ratio: np.ndarray | None = None):
        self._variant = variant
        self._ratio = (
            np.full(n_droplets, np.nan, np.float32) if known_ratio is None else np.array(known_ratio, np.float32)
        )
        self._on = np.zeros(n_droplets, bool)

    def __getattr__(self, name: str):
        return getattr(self._variant, name)

    def of(self, active: np.ndarray) -> _DrawnOutlines:
        """This, for the droplets ``active`` ``(n,)`` now."""
        self._on = np.asarray(active) > 0
        return self

    def forget(self, changed: np.ndarray) -> None:
        """Read the outlines of the ``changed`` ``(n,)`` slots anew."""
        self._ratio[changed] = np.nan

    def drawn_radius_px(self, values: dict) -> np.ndarray:
        n = len(self._on)
        drawn = np.array(self._variant.radius_px(values), dtype=np.float32)
        unread = self._on & np.isnan(self._ratio)
        known = self._on & ~unread
        radius = drawn.copy()
        if unread.any():
            of_unread = {
                name: np.asarray(value)[unread] if np.ndim(value) >= 1 and np.shape(value)[0] == n else value
                for name, value in values.items()
            }
            drawn[unread] = self._variant.drawn_radius_px(of_unread)
            self._ratio[unread] = drawn[unread] / radius[unread]
        drawn[known] = self._ratio[known] * radius[known]
        return drawn


def _brought_up_to_date(blocks, gram, computed_at, evaluate_at, locs, prior_curvature, active):
    """``(blocks, gram)`` of a Jacobian computed at the locations ``computed_at`` for use at
    ``locs``: the reconstruction and log prior drawn anew (one render), the image's derivatives
    kept, and the prior's gradient moved by its exact curvature ``(n, d)`` over the change."""
    fitted, log_prior = evaluate_at(locs, active)
    moved = stacked_by_site(locs, locs).astype(np.float64) - stacked_by_site(computed_at, locs).astype(np.float64)
    return blocks._replace(
        fitted=np.asarray(fitted).reshape(len(blocks.fitted), -1),
        log_prior=np.asarray(log_prior, np.float64),
        prior_gradient=blocks.prior_gradient - prior_curvature * moved,
    ), gram


def _damped_step(blocks, gram, evaluate_at, locs, prior_curvature, flat_observed, active, noise_sd, damping):
    """One Levenberg-Marquardt step of every droplet: ``(n, d)`` the change of its
    unconstrained parameters (0 where the step did not lower its objective), and the new
    ``(n,)`` damping. ``gram`` ``(n, d, d)`` is ``blocks.gram()``."""
    d = len(blocks.jacobian)
    on = active > 0
    data = flat_observed[blocks.pixels]
    curvature = gram / noise_sd**2
    diagonal = np.einsum("nii->ni", curvature).copy()
    curvature[:, np.arange(d), np.arange(d)] += np.maximum(prior_curvature, 0.0) + 1e-12
    gradient = blocks.project(data - blocks.fitted[blocks.pixels]) / noise_sd**2 + blocks.prior_gradient

    def objective(image, log_prior):
        drawn = np.asarray(image).reshape(len(flat_observed), -1)[blocks.pixels]
        misfit = blocks.per_droplet(((data - drawn) ** 2).sum(axis=1)) / (2.0 * noise_sd**2)
        return misfit - np.asarray(log_prior, np.float64)

    before = objective(blocks.fitted, blocks.log_prior)
    step = np.zeros((len(on), d))
    pending = on.copy()
    # A droplet whose step did not help tries again at once with more damping (one render
    # for all of them); droplets that already improved keep their step meanwhile.
    for _ in range(TRIES):
        damped = curvature + (damping[:, None] * diagonal)[:, :, None] * np.eye(d)
        trial = np.where(pending[:, None], np.linalg.solve(damped, gradient[..., None])[..., 0], step)
        trial = np.where(np.isfinite(trial), trial, 0.0)
        moved = {name: locs[name] + change for name, change in by_site(trial.astype(np.float32), locs).items()}
        helped = (objective(*evaluate_at(moved, active)) < before) & pending
        step[helped] = trial[helped]
        damping = np.where(helped, damping * DAMPING_DOWN, np.where(pending, damping * DAMPING_UP, damping))
        damping = np.clip(damping, *DAMPING_RANGE)
        pending &= ~helped
        if not pending.any():
            break
    return step.astype(np.float32), damping


def _solved_shading(residual: np.ndarray, values: dict, height: int, width: int) -> np.ndarray:
    """``(rows, columns, c)`` shading grid that best explains the image less its droplets.

    ``residual`` ``(h * w, c)`` is observed minus reconstruction; adding back the current
    shading ``S`` gives the background's share to fit (the clip to [0, 1] is ignored). Its
    projection on the basis is the residual's plus ``(R^T R) S (C^T C)``, so the shading image
    is never drawn (that and projecting it took most of the time).
    """
    rows_weights, columns_weights = shading_basis(height, width)
    rows_gram, columns_gram = rows_weights.T @ rows_weights, columns_weights.T @ columns_weights
    shading = np.moveaxis(np.asarray(values["bg_shading"], np.float64), 2, 0)  # (c, rows, columns)
    residual_image = np.moveaxis(residual.reshape(height, width, -1), 2, 0)
    projected = rows_weights.T @ residual_image @ columns_weights + rows_gram @ shading @ columns_gram
    solved = np.linalg.solve(rows_gram, projected)
    solved = np.linalg.solve(columns_gram, np.swapaxes(solved, 1, 2))  # (c, columns, rows)
    return np.transpose(solved, (2, 1, 0)).astype(np.float32)


def _negative_log_posterior(rmse: float, n_values: int, log_prior: np.ndarray, active: np.ndarray) -> float:
    """The negative log density of the data (Gaussian noise of sd ``rmse``) and of the active
    droplets' parameters under their priors, up to the background's prior."""
    return float(0.5 * n_values * (np.log(2.0 * np.pi * rmse**2) + 1.0) - np.sum(log_prior[active > 0]))
