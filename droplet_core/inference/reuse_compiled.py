"""A reuse fit's Levenberg-Marquardt iteration as compiled programs, on JAX's device.

``droplet_core.inference.reuse_fit`` takes each iteration's step on the host: forward
differences of the fit's ``evaluate`` (a render per per-droplet parameter, each copied to
the host), per-droplet sums in numpy, the small solves by ``np.linalg.solve``. On a GPU those
copies and the host's algebra cost more than the renders. Here the same step runs in two
programs, with nothing copied to the host between them:

- ``linearised``: the image's derivatives by forward mode (``jax.linearize``, every
  per-droplet parameter at once under ``jax.vmap``) on the pixels each droplet owns, and each
  droplet's ``J^T J`` by ``jax.ops.segment_sum`` over the patch pixels;
- ``damped_step``: the residual and the gradient at the current locations (the Jacobian's
  derivatives kept, the prior's gradient moved by its exact curvature, as the host's reuse of
  a Jacobian does), the ``(d, d)`` blocks solved in a batch, the damped tries rendered.

Shapes are fixed (the fit's slots and patch pixels), so a stack compiles each once. Only the
step and the damping come back.

It is the host step's algebra (``reuse_fit._damped_step`` on ``uncertainty.droplet_jacobian``)
with two differences: the derivatives are exact where the host's are forward differences
(``DIFFERENCE_STEP``), and a try's objective is compared by its change (summed per pixel as
``(before - moved) * (2 data - before - moved)``), which float32 resolves where the host sums
both objectives in float64. Each block is scaled to a unit diagonal before its solve, so
float32 solves it about as well as the host's float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from droplet_core.inference.damping import DAMPING_DOWN, DAMPING_RANGE, DAMPING_UP, TRIES
from droplet_core.models.common import ModelSpec, nearest_droplet_pixels

# Environment variable choosing a reuse fit's step: "compiled" (this module), "host"
# (``reuse_fit``'s numpy step) or unset (``compiled_chosen``).
PATH_VARIABLE = "DROPLET_REUSE_STEP"
PATHS = ("compiled", "host")


class Linearisation(NamedTuple):
    """The image's derivatives by each droplet's own parameters, at the locations ``at``.

    ``L`` is the fit's patch pixels (``Layout.droplet``), ``d`` the per-droplet parameters.
    """

    flat_index: jax.Array  # (L,) int32 image pixel (row-major) of each patch pixel
    owns: jax.Array  # (L,) bool, whether the patch pixel is its droplet's own (``nearest_droplet_pixels``)
    jacobian: jax.Array  # (d, L, c) derivative of the image by the pixel's droplet's parameter (0 where not owned)
    gram: jax.Array  # (n, d, d) each droplet's ``J^T J`` over its own pixels
    prior_gradient: jax.Array  # (n, d) derivative of each droplet's log prior density at ``at``
    at: jax.Array  # (n, d) the per-droplet locations it was computed at


def compiled_chosen() -> bool:
    """Whether a reuse fit takes its steps here: as ``PATH_VARIABLE`` says, else where JAX's
    default device is not the CPU (on 2 CPU cores the host step is the faster,
    ``bench/reuse_compiled.py``)."""
    forced = os.environ.get(PATH_VARIABLE, "")
    if forced and forced not in PATHS:
        raise ValueError(f"{PATH_VARIABLE} must be one of {', '.join(PATHS)}, not {forced!r}")
    return forced == "compiled" if forced else jax.default_backend() != "cpu"


def stepped(
    evaluate: Callable,
    per_droplet: list[str],
    params: dict,
    observed,
    anchors: np.ndarray,
    active: np.ndarray,
    spec: ModelSpec,
    prior_curvature: np.ndarray,
    linearisation: Linearisation,
    damping: np.ndarray,
) -> tuple[dict, np.ndarray]:
    """``params`` moved by one ``damped_step``, and the new damping.

    Parameters are those of ``damped_step``; ``per_droplet`` may be a list.

    Returns
    -------
    params : ``params`` with each ``<site>_auto_loc`` of ``per_droplet`` moved (numpy, float32).
    damping : (n,) the new damping (numpy).
    """
    names = tuple(per_droplet)
    step, damping = damped_step(
        evaluate, names, params, observed, anchors, active, spec, prior_curvature, linearisation, damping
    )
    moved = _with_locs(params, names, _stacked_locs(params, names) + step)
    return {**params, **{key: np.asarray(moved[key]) for key in _loc_keys(names)}}, np.asarray(damping)


@partial(jax.jit, static_argnames=("evaluate", "per_droplet"))
def linearised(evaluate, per_droplet, params, observed, anchors, active, spec, radius_px) -> Linearisation:
    """The image's derivatives by each droplet's own parameters on its own pixels (forward mode).

    Parameters
    ----------
    evaluate : the fit's compiled ``evaluate(params, observed, anchors, active, spec)`` ->
        ``Evaluation`` (its ``(h, w, c)`` reconstruction and ``(n,)`` log prior are used).
    per_droplet : tuple of the per-droplet site names, in the order of the ``d`` columns.
    params : guide parameters; ``<site>_auto_loc`` ``(n,)`` or ``(n, k)`` of each per-droplet site.
    observed : (h, w, c) the fitted channel.
    anchors : (n, 3) detector x, y, radius (fit px); active : (n,) 1 for droplets, 0 for spare slots.
    spec : the fit's model spec (its layout's patch pixels are what the droplets can own).
    radius_px : (n,) droplet radii in fit px (the unit of "nearest" in pixel ownership).
    """
    layout = spec.layout
    start = _stacked_locs(params, per_droplet)
    d = start.shape[1]
    # Each parameter moved in all active droplets at once: on a droplet's own pixels that is
    # the derivative by its own parameter, up to its neighbours' faint tails (as on the host).
    _, linear = jax.linearize(
        lambda stacked: _drawn(evaluate, per_droplet, params, observed, anchors, active, spec, stacked), start
    )
    directions = jnp.eye(d, dtype=start.dtype)[:, None, :] * (active > 0)[None, :, None]
    image_derivatives, prior_derivatives = jax.vmap(linear)(directions)  # (d, h * w, c), (d, n)
    flat, own = nearest_droplet_pixels(layout, params["x_auto_loc"], params["y_auto_loc"], radius_px, active)
    # Written out whole: fused into the products below, the gather took half again as long on CPU.
    jacobian = jax.lax.optimization_barrier(image_derivatives[:, flat, :] * own[None, :, None])
    gram = _per_droplet_gram(jacobian, layout)
    return Linearisation(flat, own, jacobian, gram, prior_derivatives.T, start)


@partial(jax.jit, static_argnames=("evaluate", "per_droplet"))
def damped_step(
    evaluate, per_droplet, params, observed, anchors, active, spec, prior_curvature, linearisation, damping
):
    """One Levenberg-Marquardt step of every droplet of a fit whose appearance is fixed.

    Parameters
    ----------
    evaluate, per_droplet, params, observed, anchors, active, spec : as for ``linearised``
        (``params``' per-droplet locations are where the step starts, the background shading
        already solved).
    prior_curvature : (n, d) minus the log prior's second derivative in each parameter.
    linearisation : ``linearised`` at these locations or, reused, at nearby ones (its
        derivatives and pixel ownership are kept; its prior gradient is moved by
        ``prior_curvature`` over the change).
    damping : (n,) each droplet's damping, relative to its block's diagonal.

    Returns
    -------
    step : (n, d) float32 change of each droplet's unconstrained parameters (0 where no try
        lowered its objective: misfit on its own pixels over ``2 noise_sd**2`` less its log
        prior, ``noise_sd`` the reconstruction's RMSE).
    damping : (n,) float32, shrunk where a try helped, grown by each try that did not, clipped
        to ``DAMPING_RANGE``.
    """
    layout = spec.layout
    flat_observed = observed.reshape(layout.n_pixels, -1)
    start = _stacked_locs(params, per_droplet)
    d, on = start.shape[1], active > 0
    flat, own = linearisation.flat_index, linearisation.owns
    fitted, log_prior = _drawn(evaluate, per_droplet, params, observed, anchors, active, spec, start)
    data, before = flat_observed[flat], fitted[flat]

    noise_sd = jnp.maximum(jnp.sqrt(jnp.mean((flat_observed - fitted) ** 2)), 1e-6)
    projected = jnp.einsum("ilc,lc->li", linearisation.jacobian, data - before)  # 0 where not owned
    prior_gradient = linearisation.prior_gradient - prior_curvature * (start - linearisation.at)
    gradient = _per_droplet_sum(projected, layout) / noise_sd**2 + prior_gradient
    curvature = linearisation.gram / noise_sd**2
    diagonal = jnp.diagonal(curvature, axis1=1, axis2=2)
    curvature = curvature + jnp.eye(d) * (jnp.maximum(prior_curvature, 0.0) + 1e-12)[:, None, :]

    def objective_change(trial):
        image, moved_log_prior = _drawn(evaluate, per_droplet, params, observed, anchors, active, spec, start + trial)
        moved = image[flat]
        misfit_change = _per_droplet_sum(
            jnp.sum((before - moved) * (2.0 * data - before - moved), axis=1) * own, layout
        )
        return misfit_change / (2.0 * noise_sd**2) - (moved_log_prior - log_prior)

    def one_try(state):
        step, damping, pending = state
        damped = curvature + jnp.eye(d) * (damping[:, None] * diagonal)[:, None, :]
        scale = 1.0 / jnp.sqrt(jnp.diagonal(damped, axis1=1, axis2=2))
        scaled = damped * scale[:, :, None] * scale[:, None, :]
        solved = jnp.linalg.solve(scaled, (gradient * scale)[..., None])[..., 0] * scale
        trial = jnp.where(pending[:, None], solved, step)
        trial = jnp.where(jnp.isfinite(trial), trial, 0.0)
        helped = (objective_change(trial) < 0.0) & pending
        step = jnp.where(helped[:, None], trial, step)
        damping = jnp.where(helped, damping * DAMPING_DOWN, jnp.where(pending, damping * DAMPING_UP, damping))
        return step, jnp.clip(damping, *DAMPING_RANGE), pending & ~helped

    # A droplet whose try did not help tries again with more damping (one render for all of
    # them); the render is skipped when every droplet's first try helped.
    state = one_try((jnp.zeros_like(start), damping.astype(start.dtype), on))
    for _ in range(TRIES - 1):
        state = jax.lax.cond(state[2].any(), one_try, lambda state: state, state)
    step, damping, _ = state
    return step, damping


def _per_droplet_gram(jacobian, layout, rows_per_chunk: int = 16):
    """``(n, d, d)`` each droplet's ``J^T J`` from ``jacobian`` ``(d, L, c)`` (rows sorted by droplet).

    The rows are summed in chunks of ``rows_per_chunk``: a chunk of one droplet's rows adds
    its ``(d, d)`` sum to it, the few chunks where one droplet's rows end and another's begin
    add row by row. (Summing every row's ``d (d + 1) / 2`` products by ``segment_sum``
    writes them all out first: 1.6 times the CPU time on the time-lapse bench's frame.)
    """
    d, n_rows, channels = jacobian.shape
    n = layout.n_droplets
    rows = jnp.moveaxis(jacobian, 0, 2).reshape(n_rows * channels, d)
    droplet = jnp.repeat(jnp.asarray(layout.droplet), channels)
    padding = (-rows.shape[0]) % rows_per_chunk
    rows = jnp.pad(rows, ((0, padding), (0, 0))).reshape(-1, rows_per_chunk, d)
    droplet = jnp.pad(droplet, (0, padding), constant_values=n - 1).reshape(-1, rows_per_chunk)
    one_droplet = droplet[:, 0] == droplet[:, -1]
    within = rows * one_droplet[:, None, None]
    gram = jax.ops.segment_sum(
        jnp.sum(within[:, :, :, None] * rows[:, :, None, :], axis=1), droplet[:, 0], n, indices_are_sorted=True
    )
    # At most n - 1 chunks hold the end of one droplet's rows; the rest of the n taken are empty.
    (shared,) = jnp.nonzero(~one_droplet, size=n, fill_value=rows.shape[0])
    shared_rows = jnp.take(rows, shared, axis=0, mode="fill", fill_value=0.0).reshape(-1, d)
    shared_droplet = jnp.take(droplet, shared, axis=0, mode="fill", fill_value=n).reshape(-1)
    return gram + jax.ops.segment_sum(
        shared_rows[:, :, None] * shared_rows[:, None, :], shared_droplet, n, indices_are_sorted=True
    )


def _per_droplet_sum(per_row, layout):
    """Sum ``per_row`` ``(L, ...)`` over each droplet's patch pixels: ``(n, ...)``."""
    return jax.ops.segment_sum(
        per_row, jnp.asarray(layout.droplet), num_segments=layout.n_droplets, indices_are_sorted=True
    )


def _drawn(evaluate, per_droplet, params, observed, anchors, active, spec, stacked):
    """``(h * w, c)`` reconstruction and ``(n,)`` log prior with the per-droplet locations ``stacked`` ``(n, d)``."""
    evaluation = evaluate(_with_locs(params, per_droplet, stacked), observed, anchors, active, spec)
    return evaluation.reconstruction.reshape(spec.layout.n_pixels, -1), evaluation.log_prior


def _loc_keys(per_droplet: tuple[str, ...]) -> list[str]:
    return [f"{name}_auto_loc" for name in per_droplet]


def _stacked_locs(params: dict, per_droplet: tuple[str, ...]):
    """``(n, d)`` the per-droplet guide locations side by side, in the order of ``per_droplet``."""
    locs = [jnp.asarray(params[key]) for key in _loc_keys(per_droplet)]
    return jnp.concatenate([loc.reshape(loc.shape[0], -1) for loc in locs], axis=1)


def _with_locs(params: dict, per_droplet: tuple[str, ...], stacked) -> dict:
    """``params`` with the per-droplet locations set from ``stacked`` ``(n, d)`` (``_stacked_locs`` undone)."""
    moved, column = dict(params), 0
    for key in _loc_keys(per_droplet):
        shape = jnp.shape(params[key])
        width = int(np.prod(shape[1:]))
        moved[key] = stacked[:, column : column + width].reshape(shape).astype(jnp.asarray(params[key]).dtype)
        column += width
    return moved
