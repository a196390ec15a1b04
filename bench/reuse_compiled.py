"""A reuse fit's compiled step (``droplet_core.inference.reuse_compiled``) against the host's, on CPU.

Run from the repository root::

    python -m bench.reuse_compiled                      # frame 2 of bench.timelapse's movie 1
    python -m bench.reuse_compiled --store /tmp/rc      # keep the full fit of frame 1 for the next run

The movie is ``bench.timelapse``'s (500x400, about 1500 droplets). Frame 1 gets a full fit
(from ``--store`` when it holds it); frame 2 a reuse fit started as ``fit_stack`` starts it
(the previous fit's droplets moved by the field's shift). Printed, with the load average:

- one iteration's step, from the same inputs (the first iteration of the reuse fit, its
  background solved): the host's with a new Jacobian (forward differences, a render per
  parameter) and reusing one (what every other iteration does), and the compiled programs'
  alike; the compile time; the largest difference of the compiled step from the host's,
  and from the host's algebra on the compiled (exact) Jacobian;
- whole reuse fits on each path, back to back (``--repeats`` each, the fastest kept): seconds,
  their ratio, F1 and median radius error against the truth, and how far each droplet of
  the host's fit lies from the nearest of the compiled fit's, and their radii's difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from bench.timelapse import movie_settings
from droplet_core.detection.matching import match_droplets
from droplet_core.inference import engine, reuse_compiled, reuse_fit
from droplet_core.inference.engine import run_fit
from droplet_core.inference.moved_start import moved_warm_start
from droplet_core.inference.uncertainty import DropletJacobian, at_locs, droplet_jacobian, stacked_by_site
from droplet_core.service.requests import load_or_fit
from droplet_core.service.store import FitStore
from droplet_core.service.timelapse import TimelapseSettings, field_shift_px
from droplet_core.settings import FitSettings
from droplet_core.synthetic.stack_scenes import make_stack


def first_iteration(fit_args: tuple) -> dict:
    """The inputs of a reuse fit's first step, as ``fit_with_fixed_appearance`` prepares them
    from its own arguments ``fit_args`` (background solved, locations, prior curvature, radii)."""
    evaluate, params, per_droplet, observed, anchors, active, spec, _, variant = fit_args
    layout = spec.layout
    observed_j, anchors_j = jnp.asarray(observed), jnp.asarray(anchors)
    flat_observed = observed.reshape(layout.n_pixels, -1).astype(np.float64)
    evaluation = evaluate(params, observed_j, anchors_j, jnp.asarray(active), spec)
    values = {name: np.asarray(value) for name, value in evaluation.values.items()}
    residual = flat_observed - np.asarray(evaluation.reconstruction, np.float64).reshape(layout.n_pixels, -1)
    params = {**params, "bg_shading_auto_loc": reuse_fit._solved_shading(residual, values, *observed.shape[:2])}
    locs = {name: np.asarray(params[f"{name}_auto_loc"]) for name in per_droplet}
    return {
        "evaluate": evaluate,
        "per_droplet": tuple(per_droplet),
        "params": params,
        "observed": observed_j,
        "anchors": anchors_j,
        "active": active,
        "spec": spec,
        "prior_curvature": stacked_by_site(evaluation.prior_curvature, locs),
        "radius_px": variant.radius_px(values),
        "damping": np.full(layout.n_droplets, reuse_fit.INITIAL_DAMPING),
        "locs": locs,
        "flat_observed": flat_observed,
    }


def host_step(inputs: dict, blocks: DropletJacobian | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``reuse_fit``'s step from ``inputs`` (``first_iteration``): ``blocks`` or, when None, the
    forward-difference Jacobian."""
    evaluate_at = at_locs(inputs["evaluate"], inputs["params"], inputs["observed"], inputs["anchors"], inputs["spec"])
    layout = inputs["spec"].layout
    if blocks is None:
        blocks = droplet_jacobian(evaluate_at, inputs["locs"], inputs["active"], layout, inputs["radius_px"])
    noise_sd = max(float(np.sqrt(np.mean((inputs["flat_observed"] - blocks.fitted) ** 2))), 1e-6)
    return reuse_fit._damped_step(
        blocks,
        blocks.gram(),
        evaluate_at,
        inputs["locs"],
        inputs["prior_curvature"],
        inputs["flat_observed"],
        inputs["active"],
        noise_sd,
        inputs["damping"],
    )


LINEARISED_ARGS = ("evaluate", "per_droplet", "params", "observed", "anchors", "active", "spec")


def compiled_step(inputs: dict, linearisation=None) -> tuple[np.ndarray, np.ndarray]:
    """``reuse_compiled.damped_step`` from ``inputs`` (``first_iteration``), on the host:
    ``linearisation`` or, when None, a new one."""
    args = tuple(inputs[name] for name in LINEARISED_ARGS)
    if linearisation is None:
        linearisation = reuse_compiled.linearised(*args, inputs["radius_px"])
    step, damping = reuse_compiled.damped_step(*args, inputs["prior_curvature"], linearisation, inputs["damping"])
    return np.asarray(step), np.asarray(damping)


def exact_blocks(inputs: dict) -> DropletJacobian:
    """The compiled (forward-mode) Jacobian of ``inputs`` as the host's ``DropletJacobian``."""
    args = tuple(inputs[name] for name in LINEARISED_ARGS)
    linearisation = reuse_compiled.linearised(*args, inputs["radius_px"])
    flat, own, jacobian, prior_gradient = (
        np.asarray(value)
        for value in (
            linearisation.flat_index,
            linearisation.owns,
            linearisation.jacobian,
            linearisation.prior_gradient,
        )
    )
    evaluation = inputs["evaluate"](*args[2:])
    rows = np.flatnonzero(own)
    droplet = np.asarray(inputs["spec"].layout.droplet)
    return DropletJacobian(
        flat[own],
        np.searchsorted(droplet[rows], np.arange(len(inputs["active"]))),
        np.asarray(evaluation.reconstruction).reshape(len(inputs["flat_observed"]), -1),
        np.asarray(evaluation.log_prior, np.float64),
        jacobian[:, own],
        prior_gradient.astype(np.float64),
    )


def captured_reuse_fit(**fit_kwargs) -> tuple:
    """Run ``run_fit(**fit_kwargs)`` (a reuse fit) and return the arguments its
    ``fit_with_fixed_appearance`` was called with, and its result."""
    captured, original = [], engine.fit_with_fixed_appearance

    def capturing(*args, **kwargs):
        captured.append(args)
        return original(*args, **kwargs)

    engine.fit_with_fixed_appearance = capturing
    try:
        result = run_fit(**fit_kwargs)
    finally:
        engine.fit_with_fixed_appearance = original
    return captured[0], result


def on_path(path: str, **fit_kwargs) -> tuple[float, object]:
    """Seconds and result of ``run_fit(**fit_kwargs)`` with the reuse step forced to ``path``."""
    os.environ[reuse_compiled.PATH_VARIABLE] = path
    try:
        started = time.perf_counter()
        result = run_fit(**fit_kwargs)
        return time.perf_counter() - started, result
    finally:
        del os.environ[reuse_compiled.PATH_VARIABLE]


def timed(function, *args, repeats: int) -> tuple[float, object]:
    """Fastest seconds of ``repeats`` calls of ``function(*args)``, and its last result."""
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="bench.timelapse movie")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path")
    parser.add_argument("--store", help="folder of a fit store for the full fit (default: a temporary one)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    frames, truth, _ = make_stack(args.seed, movie_settings(2, 0))
    frames = frames.astype(np.float32) / 255.0
    digests = [hashlib.sha256(frame.tobytes()).hexdigest() for frame in frames]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        full = load_or_fit(frames[0], digests[0], FitSettings(), FitStore(args.store or folder)).result
        print(f"full fit of frame 1: {time.perf_counter() - started:.1f} s, {len(full.droplets)} droplets")
    reuse = dataclasses.replace(
        FitSettings(),
        appearance_from=full.fit_id,
        downscale=full.report.downscale,
        steps=TimelapseSettings().reuse_iterations,
    )
    empty = pd.DataFrame({"x": [], "y": [], "radius": []})
    warm = moved_warm_start(full, field_shift_px(frames[0], frames[1]), empty)
    fit_kwargs = {
        "image": frames[1],
        "settings": reuse,
        "image_sha256": digests[1],
        "appearance_source": full,
        "warm_start": warm,
    }
    os.environ[reuse_compiled.PATH_VARIABLE] = "host"
    fit_args, _ = captured_reuse_fit(**fit_kwargs)
    del os.environ[reuse_compiled.PATH_VARIABLE]
    inputs = first_iteration(fit_args)
    on = inputs["active"] > 0
    print(
        f"frame 2: {frames.shape[2]}x{frames.shape[1]}, fit {inputs['spec'].layout.width}x"
        f"{inputs['spec'].layout.height}, {int(on.sum())} droplets in {on.size} slots, "
        f"{inputs['prior_curvature'].shape[1]} parameters each, {inputs['spec'].layout.droplet.size} patch pixels"
    )

    started = time.perf_counter()
    compiled_step(inputs)
    first_call_s = time.perf_counter() - started
    compiled_s, (step, damping) = timed(compiled_step, inputs, repeats=args.repeats)
    linearisation = reuse_compiled.linearised(*(inputs[name] for name in LINEARISED_ARGS), inputs["radius_px"])
    compiled_reused_s, _ = timed(compiled_step, inputs, linearisation, repeats=args.repeats)
    host_s, (host, host_damping) = timed(host_step, inputs, repeats=args.repeats)
    evaluate_at = at_locs(inputs["evaluate"], inputs["params"], inputs["observed"], inputs["anchors"], inputs["spec"])
    blocks = droplet_jacobian(evaluate_at, inputs["locs"], inputs["active"], inputs["spec"].layout, inputs["radius_px"])
    host_reused_s, _ = timed(host_step, inputs, blocks, repeats=args.repeats)
    algebra, algebra_damping = host_step(inputs, exact_blocks(inputs))
    print(
        f"one iteration's step, new Jacobian: host {host_s:.3f} s, compiled {compiled_s:.3f} s "
        f"(ratio {compiled_s / host_s:.2f}); Jacobian reused: host {host_reused_s:.3f} s, compiled "
        f"{compiled_reused_s:.3f} s (ratio {compiled_reused_s / host_reused_s:.2f}); "
        f"compile {first_call_s - compiled_s:.1f} s; load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  step difference, largest: from the host's {np.abs(step - host)[on].max():.3g} "
        f"(host's largest step {np.abs(host[on]).max():.3g}; damping same for "
        f"{np.mean(np.isclose(damping, host_damping, rtol=1e-5)[on]):.1%} of droplets), from the host's "
        f"algebra on the compiled Jacobian {np.abs(step - algebra)[on].max():.3g} (damping same for "
        f"{np.mean(np.isclose(damping, algebra_damping, rtol=1e-5)[on]):.1%})"
    )

    seconds = {"host": [], "compiled": []}
    results = {}
    on_path("compiled", **fit_kwargs)  # compiles this fit's program once, as a stack's first reuse frame does
    for _ in range(args.repeats):
        for path in seconds:
            spent, results[path] = on_path(path, **fit_kwargs)
            seconds[path].append(spent)
    frame_truth = truth[truth["frame"] == 1]
    for path, result in results.items():
        score = match_droplets(frame_truth, result.droplets)
        print(
            f"reuse fit, {path}: {min(seconds[path]):.2f} s (runs {', '.join(f'{s:.2f}' for s in seconds[path])}), "
            f"{len(result.droplets)} droplets, F1 {score.f1:.4f}, median radius error "
            f"{score.median_radius_error:.4f}, RMSE {max(result.report.rmse):.5f}"
        )
    print(f"  ratio compiled / host {min(seconds['compiled']) / min(seconds['host']):.2f}; load {os.getloadavg()}")
    host_droplets, compiled_droplets = results["host"].droplets, results["compiled"].droplets
    distance_px, nearest = cKDTree(compiled_droplets[["x", "y"]].to_numpy()).query(host_droplets[["x", "y"]].to_numpy())
    radius_change = np.abs(host_droplets["radius"].to_numpy() - compiled_droplets["radius"].to_numpy()[nearest])
    print(
        f"  each host droplet's nearest compiled one: {host_droplets.shape[0]} and {compiled_droplets.shape[0]} "
        f"droplets; within 0.1 px and 2 % radius: {np.mean((distance_px < 0.1) & (radius_change < 0.02 * host_droplets['radius'])):.1%}; "
        f"distance median {np.median(distance_px):.3g} px, 99th percentile {np.quantile(distance_px, 0.99):.3g} px; "
        f"radius difference median {np.median(radius_change):.3g} px, 99th percentile {np.quantile(radius_change, 0.99):.3g} px"
    )


if __name__ == "__main__":
    main()
