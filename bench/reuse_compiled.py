"""A reuse fit's compiled step (``droplet_core.inference.reuse_compiled``) against the host's, on CPU.

Run from the repository root::

    python -m bench.reuse_compiled                      # frame 2 of bench.timelapse's movie 1
    python -m bench.reuse_compiled --store /tmp/rc      # keep the full fit of frame 1 for the next run
    DROPLET_COMPILATION_CACHE= python -m bench.reuse_compiled  # the compile time without JAX's persistent cache

The movie is ``bench.timelapse``'s (500x400, about 1500 droplets). Frame 1 gets a full fit
(from ``--store`` when it holds it); frame 2 a reuse fit started as ``fit_stack`` starts it
(the previous fit's droplets moved by the field's shift). Printed, with the load average:

- one iteration's step, from the same inputs (the first iteration of the reuse fit, its
  background solved): the host's with a new Jacobian (forward differences, a render per
  parameter) and reusing one (what every other iteration does), and the compiled programs'
  alike, taking turns, each the fastest of ``--repeats`` in wall and in process CPU seconds
  (the CPU seconds are less swayed by other work on the machine); the compile time; the largest difference of the compiled step from the host's,
  and from the host's algebra on the compiled (exact) Jacobian;
- whole reuse fits on each path, taking turns (``--repeats`` each, the fastest kept): seconds,
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
from functools import partial

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from bench.timelapse import movie_settings
from droplet_core.detection.matching import match_droplets
from droplet_core.inference import engine, reuse_compiled, reuse_fit
from droplet_core.inference.damping import INITIAL_DAMPING
from droplet_core.inference.engine import run_fit
from droplet_core.inference.moved_start import moved_warm_start
from droplet_core.inference.uncertainty import DropletJacobian, at_locs, by_site, droplet_jacobian, stacked_by_site
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
        "damping": np.full(layout.n_droplets, INITIAL_DAMPING),
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


def on_path(path: str, **fit_kwargs):
    """``run_fit(**fit_kwargs)`` with the reuse step forced to ``path``."""
    os.environ[reuse_compiled.PATH_VARIABLE] = path
    try:
        return run_fit(**fit_kwargs)
    finally:
        del os.environ[reuse_compiled.PATH_VARIABLE]


def fastest(functions: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Each of ``functions`` (name -> no-argument callable) called ``repeats`` times, taking
    turns (the machine's load then weighs on all alike): the fastest wall seconds and
    process CPU seconds (all threads) of each, and each one's last result."""
    wall, cpu, results = dict.fromkeys(functions, np.inf), dict.fromkeys(functions, np.inf), {}
    for _ in range(repeats):
        for name, function in functions.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = function()
            wall[name] = min(wall[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - started_cpu)
    return wall, cpu, results


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
    linearisation = reuse_compiled.linearised(*(inputs[name] for name in LINEARISED_ARGS), inputs["radius_px"])
    evaluate_at = at_locs(inputs["evaluate"], inputs["params"], inputs["observed"], inputs["anchors"], inputs["spec"])
    blocks = droplet_jacobian(evaluate_at, inputs["locs"], inputs["active"], inputs["spec"].layout, inputs["radius_px"])
    wall, cpu, steps = fastest(
        {
            "host": lambda: host_step(inputs),
            "compiled": lambda: compiled_step(inputs),
            "host reused": lambda: host_step(inputs, blocks),
            "compiled reused": lambda: compiled_step(inputs, linearisation),
        },
        args.repeats,
    )
    (step, damping), (host, host_damping) = steps["compiled"], steps["host"]
    algebra, algebra_damping = host_step(inputs, exact_blocks(inputs))
    for kind, suffix in (("new Jacobian", ""), ("Jacobian reused", " reused")):
        host_key, compiled_key = "host" + suffix, "compiled" + suffix
        print(
            f"one iteration's step, {kind}: host {wall[host_key]:.3f} s (CPU {cpu[host_key]:.3f} s), compiled "
            f"{wall[compiled_key]:.3f} s (CPU {cpu[compiled_key]:.3f} s); ratio compiled / host "
            f"{wall[compiled_key] / wall[host_key]:.2f} (CPU {cpu[compiled_key] / cpu[host_key]:.2f})"
        )
    print(
        f"  first call less a later one (compiling, or reading JAX's persistent cache): "
        f"{first_call_s - wall['compiled']:.1f} s; load {os.getloadavg()[0]:.2f}"
    )
    print(
        "  step difference from the host's, largest, by site (unconstrained units): "
        + ", ".join(
            f"{name} {np.abs(change[on]).max():.3g} (median {np.median(np.abs(change[on])):.2g}; host's largest "
            f"step {np.abs(by_site(host, inputs['locs'])[name][on]).max():.3g})"
            for name, change in by_site(step - host, inputs["locs"]).items()
        )
        + f"; damping same for {np.mean(np.isclose(damping, host_damping, rtol=1e-5)[on]):.1%} of droplets"
    )
    print(
        f"  from the host's algebra on the compiled (exact) Jacobian: {np.abs(step - algebra)[on].max():.3g}; "
        f"damping same for {np.mean(np.isclose(damping, algebra_damping, rtol=1e-5)[on]):.1%}"
    )

    on_path("compiled", **fit_kwargs)  # compiles this fit's programs once, as a stack's first reuse frame does
    wall, cpu, results = fastest(
        {path: partial(on_path, path, **fit_kwargs) for path in ("host", "compiled")}, args.repeats
    )
    frame_truth = truth[truth["frame"] == 1]
    for path, result in results.items():
        score = match_droplets(frame_truth, result.droplets)
        print(
            f"reuse fit, {path}: {wall[path]:.2f} s (CPU {cpu[path]:.2f} s), {len(result.droplets)} droplets, "
            f"F1 {score.f1:.4f}, median radius error {score.median_radius_error:.4f}, RMSE {max(result.report.rmse):.5f}"
        )
    print(
        f"  ratio compiled / host {wall['compiled'] / wall['host']:.2f} (CPU {cpu['compiled'] / cpu['host']:.2f}); "
        f"load {os.getloadavg()[0]:.2f}"
    )
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
