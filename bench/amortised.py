"""Instant results: the amortised encoder, appearance reuse and encoder-initialised fits.

Run from the repository root::

    python -m bench.amortised                   # everything (10-15 minutes on 2 CPU cores)
    python -m bench.amortised --skip-fits       # encoder and blob_log on synthetic scenes only

Prints:

1. On synthetic scenes never used in training (default seeds 1-3, the scenes of
   ``bench.detection``; training used seeds from 10 000, validation from 20 000): the
   encoder's F1 and median radius error on the RGB and the grey channel, its compute
   time per 500x400 image (channel, network, decoding; the one-off jit compilation is
   printed apart), and ``blob_log`` tuned on scene 100 (``bench.classical``).
2. On ``../shared/data/example.jpg`` at downscale 4: a templates fit with default
   settings, the run's first (its ``total_s`` and RMSE; this run starts with an empty
   compilation cache, so it compiles, as a user's first fit does), the same fit again
   with another seed (compiled programs reused), then fits of the same image holding the
   first fit's appearance fixed (``appearance_from``; Levenberg-Marquardt, see
   ``droplet_core.inference.reuse_fit``) at a ladder of iteration counts; the first that reaches the
   first fit's RMSE gives the time ratios against both. The ladder's first rung pays the
   reuse path's few small one-off compilations.
   2b. The appearance learned on synthetic scene 1 (templates and neural, default
   settings) reused on scene 2, against a new fit of scene 2: F1 against truth, RMSE, time.
3. SVI fits initialised by the encoder and by LoG candidates, at a ladder of step
   counts, on the example and on synthetic scene 1: the first step count (and its
   time) at which each reaches the RMSE that both reach at the default step count, and
   on the scene the F1 against truth.
4. On the example: the encoder's detections against two templates fits as truth, a long
   one (1000 steps, LoG-initialised so it owes nothing to the encoder) and section 2's
   default fit (encoder-initialised, lower RMSE): counts and ``match_droplets`` F1.
   Writes ``docs/encoder_example.png``, a crop with the encoder's detections drawn.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from bench import classical
from droplet_core import use_compilation_cache
from droplet_core.detection import detector_net, detector_training
from droplet_core.detection.matching import match_droplets
from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes
from droplet_core.inference.engine import run_fit
from droplet_core.settings import FitSettings, default_channel
from droplet_core.synthetic.scenes import encode_png, make_scene

EXAMPLE = Path("../shared/data/example.jpg")
LADDER = (50, 75, 100, 150, 200, 300)
# Levenberg-Marquardt iterations of a fit with a reused appearance (it stops once converged).
REUSE_LADDER = (2, 3, 4, 5, 6, 8, 10, 150)
DEFAULT_STEPS = FitSettings().steps
SCREENSHOT = Path("docs/encoder_example.png")
# Region of the example drawn in the screenshot (x0, y0, x1, y1, px of the full image).
SCREENSHOT_BOX = (600, 500, 1240, 980)


def encoder_on_scenes(seeds: list[int]) -> None:
    """Encoder (RGB and grey) and tuned blob_log on synthetic scenes ``seeds``."""
    scenes = [make_scene(seed) for seed in seeds]
    print(f"\n1. Synthetic scenes {seeds} (500x400 px, default scene settings; not used in training)")
    print(f"{'method':<22} {'precision':>9} {'recall':>7} {'F1':>6} {'radius err':>10} {'found':>6} {'s/image':>8}")
    for channel in ("rgb", "grey"):
        start = time.perf_counter()
        detector_net.detect(detector_net.prepare_image(scenes[0][0].astype(np.float32) / 255.0, channel)[0])
        first_call = time.perf_counter() - start
        scores, seconds = [], []
        for rgb, truth in scenes:
            image = rgb.astype(np.float32) / 255.0
            start = time.perf_counter()
            found = detector_net.detect(detector_net.prepare_image(image, channel)[0])
            seconds.append(time.perf_counter() - start)
            scores.append(match_droplets(truth, found))
        _row(f"encoder ({channel})", scores, seconds)
        print(f"{'':<22} (first call, weights loading and jit compile included: {first_call:.2f} s)")
    params = classical.tuned_parameters("blob_log")[0]
    detect = classical.make_detector("blob_log", params)
    scores, seconds = [], []
    for rgb, truth in scenes:
        start = time.perf_counter()
        found = detect(rgb)
        seconds.append(time.perf_counter() - start)
        scores.append(match_droplets(truth, found))
    _row("blob_log (tuned)", scores, seconds)
    print("radius err: median |r_found - r_true| / r_true over matches; s/image: compute after the first call.")


def _row(name: str, scores: list, seconds: list[float]) -> None:
    mean = lambda attr: float(np.mean([getattr(s, attr) for s in scores]))  # noqa: E731
    print(
        f"{name:<22} {mean('precision'):>9.3f} {mean('recall'):>7.3f} {mean('f1'):>6.3f} "
        f"{mean('median_radius_error'):>10.3f} {mean('n_found'):>6.0f} {np.mean(seconds):>8.3f}"
    )


def fit(image: np.ndarray, sha: str, settings: FitSettings, source=None) -> dict:
    """One fit: its result, ``seconds`` (its own ``total_s``), mean ``rmse``, ``steps``."""
    result = run_fit(image, settings, image_sha256=sha, appearance_source=source)
    return {
        "result": result,
        "steps": settings.steps,
        "seconds": float(result.report.timings.total_s),
        "rmse": float(np.mean(result.report.rmse)),
        "droplets": int(result.report.count.count),
    }


def first_reaching(image, sha, make_settings, target: float, source=None, ladder=LADDER) -> list[dict]:
    """Fits at ``ladder`` step counts (``make_settings(steps)``) up to the first with RMSE <= target."""
    runs = []
    for steps in ladder:
        runs.append(fit(image, sha, make_settings(steps), source))
        if runs[-1]["rmse"] <= target:
            break
    return runs


def _parts(run: dict) -> str:
    """Where a fit's time went (its ``fit.json`` timings)."""
    timings = asdict(run["result"].report.timings)
    return ", ".join(f"{name[:-2]} {timings[name]:.1f}" for name in timings if name not in ("total_s",))


def _ladder_text(runs: list[dict]) -> str:
    return ", ".join(f"{r['steps']}: {r['rmse']:.4f} ({r['seconds']:.2f} s)" for r in runs)


def appearance_reuse(image: np.ndarray, sha: str) -> dict:
    """Section 2; returns the first (default) fit."""
    print("\n2. Appearance reuse on the example (templates, grey, downscale 4)")
    # Loads the encoder and starts JAX, which every process does once, outside the timing.
    detector_net.detect(detector_net.prepare_image(image, "rgb", 4)[0])
    first = fit(image, sha, FitSettings(downscale=4))
    print(
        f"first fit (default settings, {first['steps']} steps, compiles): {first['seconds']:.1f} s ({_parts(first)}), "
        f"RMSE {first['rmse']:.4f}, {first['droplets']} droplets"
    )
    again = fit(image, sha, FitSettings(downscale=4, seed=1))
    print(
        f"the same fit with seed 1 (compiled programs reused): {again['seconds']:.1f} s ({_parts(again)}), "
        f"RMSE {again['rmse']:.4f}"
    )
    source = first["result"]
    runs = first_reaching(
        image,
        sha,
        lambda steps: FitSettings(downscale=4, steps=steps, appearance_from=source.fit_id),
        first["rmse"],
        source,
        REUSE_LADDER,
    )
    print(f"appearance_from the first fit, iterations: RMSE (time): {_ladder_text(runs)}")
    last = runs[-1]
    if last["rmse"] <= first["rmse"]:
        print(
            f"reaches RMSE {first['rmse']:.4f} at {last['steps']} iterations in {last['seconds']:.2f} s ({_parts(last)}): "
            f"{last['seconds'] / first['seconds']:.2f} of the first fit's time, "
            f"{last['seconds'] / again['seconds']:.2f} of the repeated fit's (target <= 0.33)"
        )
        score = match_droplets(source.droplets, last["result"].droplets)
        print(f"its droplets against the first fit's: {last['droplets']} vs {first['droplets']}, F1 {score.f1:.3f}")
    else:
        print(f"does not reach RMSE {first['rmse']:.4f} within {REUSE_LADDER[-1]} iterations")
    converged = fit(image, sha, FitSettings(downscale=4, appearance_from=source.fit_id), source)
    print(
        f"run to convergence (default settings): {converged['result'].report.steps_done} iterations, "
        f"{converged['seconds']:.2f} s, RMSE {converged['rmse']:.4f}, {converged['droplets']} droplets"
    )
    return first


def reuse_on_a_new_scene(learn_seed: int, fit_seed: int) -> None:
    """Section 2b: the appearance learned on one synthetic scene, reused on another."""
    print(f"\n2b. Appearance learned on synthetic scene {learn_seed}, reused on scene {fit_seed} (downscale 1)")
    (learn_rgb, _), (rgb, truth) = make_scene(learn_seed), make_scene(fit_seed)
    learn_image, image = learn_rgb.astype(np.float32) / 255.0, rgb.astype(np.float32) / 255.0
    learn_sha, sha = sha256_bytes(encode_png(learn_rgb)), sha256_bytes(encode_png(rgb))
    for model in ("templates", "neural"):
        settings = FitSettings(model=model, channel=default_channel(model), downscale=1)
        source = fit(learn_image, learn_sha, settings)["result"]
        new = fit(image, sha, settings)
        reused = fit(image, sha, dataclasses.replace(settings, appearance_from=source.fit_id), source)
        for name, run in (("new appearance (SVI, 150 steps)", new), ("reused appearance (converged)", reused)):
            score = match_droplets(truth, run["result"].droplets)
            print(
                f"   {model:<9} {name:<32} F1 {score.f1:.3f}, radius err {score.median_radius_error:.3f}, "
                f"RMSE {run['rmse']:.4f}, {run['seconds']:.1f} s, {run['droplets']} droplets "
                f"(truth {len(truth)}), {run['result'].report.steps_done} steps or iterations"
            )


def initialisers(image: np.ndarray, sha: str, name: str, downscale: int, truth: pd.DataFrame | None) -> None:
    """Section 3 on one image."""
    finals = {init: fit(image, sha, FitSettings(downscale=downscale, initializer=init)) for init in ("encoder", "log")}
    target = max(r["rmse"] for r in finals.values())
    print(f"\n3. SVI initialised by the encoder vs by LoG: {name} (templates, grey, downscale {downscale})")
    print(f"   target: RMSE {target:.4f}, the worse of the two {DEFAULT_STEPS}-step fits")
    for init, final in finals.items():
        runs = first_reaching(
            image, sha, lambda steps, init=init: FitSettings(downscale=downscale, steps=steps, initializer=init), target
        )
        reached = runs[-1]["rmse"] <= target
        reach_text = (
            f"reaches it at {runs[-1]['steps']} steps, {runs[-1]['seconds']:.1f} s"
            if reached
            else f"does not reach it below {DEFAULT_STEPS} steps"
        )
        quality = ""
        if truth is not None:
            score = match_droplets(truth, final["result"].droplets)
            quality = f"; {DEFAULT_STEPS} steps F1 {score.f1:.3f}, radius err {score.median_radius_error:.3f}"
        print(
            f"   {init:<8} {DEFAULT_STEPS} steps: RMSE {final['rmse']:.4f}, {final['seconds']:.1f} s, {final['droplets']} "
            f"droplets{quality}; {reach_text}"
        )
        print(f"            ladder: {_ladder_text(runs)}")


def encoder_vs_fit(image: np.ndarray, sha: str, default_fit: dict) -> None:
    """Section 4 and the screenshot; ``default_fit`` is section 2's encoder-initialised fit."""
    long_fit = fit(image, sha, FitSettings(downscale=4, steps=1000, initializer="log"))
    channel, factor = detector_net.prepare_image(image, "rgb", 4)
    start = time.perf_counter()
    found = detector_net.to_image_px(detector_net.detect(channel), factor)
    seconds = time.perf_counter() - start
    print(
        f"\n4. Encoder (RGB, downscale 4): {len(found)} droplets in {seconds:.2f} s, against templates fits of the "
        "example as truth"
    )
    references = {
        "1000 steps, LoG start (owes nothing to the encoder)": long_fit,
        f"{DEFAULT_STEPS} steps, encoder start (section 2's first fit)": default_fit,
    }
    for name, reference in references.items():
        score = match_droplets(reference["result"].droplets, found)
        print(
            f"   {name}: {reference['droplets']} droplets, RMSE {reference['rmse']:.4f}, {reference['seconds']:.1f} s"
        )
        print(
            f"      agreement: precision {score.precision:.3f}, recall {score.recall:.3f}, F1 {score.f1:.3f}, "
            f"median radius difference {score.median_radius_error:.3f}"
        )
    x0, y0, x1, y1 = SCREENSHOT_BOX
    inside = found[(found.x >= x0) & (found.x < x1) & (found.y >= y0) & (found.y < y1)].copy()
    inside["x"] -= x0
    inside["y"] -= y0
    SCREENSHOT.parent.mkdir(exist_ok=True)
    detector_net.overlay_png(image[y0:y1, x0:x1], inside).save(SCREENSHOT)
    print(f"   wrote {SCREENSHOT} (crop {SCREENSHOT_BOX} of the example, full resolution, {len(inside)} detections)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="synthetic scenes to score on")
    parser.add_argument("--skip-fits", action="store_true", help="only section 1")
    args = parser.parse_args()
    use_compilation_cache(tempfile.mkdtemp(prefix="droplet-bench-amortised-"))
    if max(args.seeds) >= detector_training.TRAIN_SEED_BASE:
        parser.error(f"seeds from {detector_training.TRAIN_SEED_BASE} are training or validation scenes")
    encoder_on_scenes(args.seeds)
    if args.skip_fits:
        return
    data = read_image_bytes(EXAMPLE)
    image, sha = load_image(data), sha256_bytes(data)
    first = appearance_reuse(image, sha)
    reuse_on_a_new_scene(args.seeds[0], args.seeds[1 % len(args.seeds)])
    initialisers(image, sha, "example.jpg", 4, None)
    rgb, truth = make_scene(args.seeds[0])
    initialisers(
        rgb.astype(np.float32) / 255.0, sha256_bytes(encode_png(rgb)), f"synthetic scene {args.seeds[0]}", 1, truth
    )
    encoder_vs_fit(image, sha, first)


if __name__ == "__main__":
    main()
