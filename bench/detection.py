"""Detection quality on synthetic scenes: classical detectors against Droplet's fit.

Run from the repository root::

    python -m bench.detection                  # tune on scene 100, score on scenes 1 2 3
    python -m bench.detection --seeds 1 2 3 4 5 --skip-droplet
    python -m bench.detection --droplets 2500      # denser scenes (the issue asks 1-3 thousand)
    python -m bench.detection --detector-only [--quick] [--weights DIR] [--overlays DIR]

``blob_log`` and trackpy ``locate`` (see ``bench.classical``) are tuned for F1 on one
scene (``--tune-seed``), including which contrast image they look at, and then scored
on other scenes; Droplet runs with its default settings, untuned. Matching: a true
droplet is found by at most one detection within max(1.5 px, r/2) of its centre
(``droplet_core.detection.matching``). Seconds per image are the detector's own time on an
image (contrast image included; tuning excluded; Droplet's after one untimed fit of the
tuning scene that starts JAX and loads the encoder, once per process). The run starts
with an empty compilation cache: a scored scene compiles its fit unless its padded sizes
match a scene fitted before it (as for a user's series of similar images).

``--detector-only`` scores the trained detector alone (the pyramid detector at its own
threshold, no fit) on every family of both renderers of ``bench.generality`` (its scenes
and seeds) and on the real fluorescence image against its checked reference (droplets cut
by the border left out on both sides, as there), with the recall of the droplets cut by the
image border and of the tiny ones (radius under ``TINY_RADIUS_PX``); ``--weights`` scores
other weights than the shipped ones, ``--overlays`` draws the detections on the real images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bench import classical
from droplet_core import use_compilation_cache
from droplet_core.detection.detector_net import overlay_png
from droplet_core.detection.in_image import detect_droplets
from droplet_core.detection.matching import MatchScore, match_droplets, match_pairs
from droplet_core.imaging.display import stretch_contrast
from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes
from droplet_core.inference.engine import run_fit
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

Detector = Callable[[np.ndarray], pd.DataFrame]
# Droplets under this radius (px) are the tiny ones whose recall --detector-only reports.
TINY_RADIUS_PX = 1.7
EXAMPLE_IMAGE = Path("../shared/data/example.jpg")


def droplet_detector(rgb: np.ndarray) -> pd.DataFrame:
    """Droplet's default fit (``FitSettings()``) of a uint8 RGB scene; its droplet table."""
    image = rgb.astype(np.float32) / 255.0
    return run_fit(image, FitSettings(), image_sha256=sha256_bytes(encode_png(rgb))).droplets


def score_detector(detect: Detector, scenes: list[tuple[np.ndarray, pd.DataFrame]]) -> dict:
    """Mean precision, recall, F1, median radius error and seconds per image over ``scenes``."""
    scores: list[MatchScore] = []
    seconds = []
    for rgb, truth in scenes:
        start = time.perf_counter()
        found = detect(rgb)
        seconds.append(time.perf_counter() - start)
        scores.append(match_droplets(truth, found))
    return {
        "precision": np.mean([s.precision for s in scores]),
        "recall": np.mean([s.recall for s in scores]),
        "f1": np.mean([s.f1 for s in scores]),
        "radius_error": np.mean([s.median_radius_error for s in scores]),
        "found": np.mean([s.n_found for s in scores]),
        "truth": np.mean([s.n_true for s in scores]),
        "seconds": np.mean(seconds),
    }


def tune(tune_seed: int, scene: SceneSettings) -> dict[str, dict]:
    """Tune every classical detector on scene ``tune_seed``; print and return the parameters."""
    print(f"Tuning on scene {tune_seed}:")
    tuned = {}
    for method in classical.TUNERS:
        start = time.perf_counter()
        params, f1, evaluations = classical.tuned_parameters(method, tune_seed, scene)
        tuned[method] = params
        print(
            f"  {method:<9} F1 {f1:.3f}  ({evaluations} evaluations, {time.perf_counter() - start:.0f} s)  {params}",
            flush=True,
        )
    return tuned


def print_table(rows: dict[str, dict], seeds: list[int]) -> None:
    print(
        f"\nScored on scenes {seeds} (mean over scenes; {rows[next(iter(rows))]['truth']:.0f} true droplets each on average)"
    )
    print(f"{'method':<22} {'precision':>9} {'recall':>7} {'F1':>6} {'radius err':>10} {'found':>6} {'s/image':>8}")
    for method, r in rows.items():
        print(
            f"{method:<22} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} "
            f"{r['radius_error']:>10.3f} {r['found']:>6.0f} {r['seconds']:>8.2f}"
        )
    print("radius err: median |r_found - r_true| / r_true over matches.")


def detector_scores(truth: pd.DataFrame, found: pd.DataFrame, shape: tuple) -> dict:
    """``bench.generality.score`` of detections ``found`` against ``truth`` in an image of
    ``shape``, with the recall of the true droplets cut by the image border and of the tiny ones."""
    from bench import generality

    row = generality.score(truth, found)
    if "in_focus" in truth.columns:
        truth = truth[truth["in_focus"]].reset_index(drop=True)
    true_index, _ = match_pairs(truth, found)
    found_true = np.zeros(len(truth), dtype=bool)
    found_true[true_index] = True
    cut = ~generality.within_image(truth, shape)
    tiny = truth["radius"].to_numpy(float) < TINY_RADIUS_PX
    row["n_cut"], row["recall_cut"] = int(cut.sum()), float(found_true[cut].mean()) if cut.any() else np.nan
    row["n_tiny"], row["recall_tiny"] = int(tiny.sum()), float(found_true[tiny].mean()) if tiny.any() else np.nan
    return row


def detector_only(quick: bool, seeds: list[int], weights_dir: str | None, overlays: Path | None) -> None:
    """Print the detector's scores per family of both renderers and on the real image (see the module text)."""
    from bench import generality

    columns = ("f1", "precision", "recall", "radius_error", "recall_cut", "recall_tiny")
    print(f"Detector alone (threshold 0.5), weights: {weights_dir or 'shipped'}; mean over scenes {seeds}")
    print(
        f"{'renderer':<8} {'family':<12} {'scenes':<28} {'F1':>6} {'prec':>6} {'recall':>6} {'r err':>6} "
        f"{'cut: n':>6} {'recall':>6} {'tiny: n':>7} {'recall':>6}"
    )

    def print_row(renderer: str, family: str, label: str, rows: list[dict]) -> None:
        mean = pd.DataFrame(rows).mean(skipna=True)
        print(
            f"{renderer:<8} {family:<12} {label[:28]:<28} "
            + " ".join(f"{mean[c]:>6.3f}" for c in columns[:4])
            + f" {mean['n_cut']:>6.1f} {mean['recall_cut']:>6.3f} {mean['n_tiny']:>7.1f} {mean['recall_tiny']:>6.3f}",
            flush=True,
        )

    data = read_image_bytes(generality.REAL_IMAGE)
    real = load_image(data)
    reference = generality.real_reference(real)
    reference = reference[generality.within_image(reference, real.shape)].reset_index(drop=True)
    found = detect_droplets(real, weights_dir=weights_dir)
    print_row(
        "real",
        "fluorescence",
        f"{generality.REAL_IMAGE.name[:14]} vs ref ({len(reference)})",
        [detector_scores(reference, found[generality.within_image(found, real.shape)], real.shape)],
    )
    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
        # The dim 16-bit image stretched to be seen.
        overlay_png(stretch_contrast(real, (0.5, 99.8)), found).save(overlays / "detections_fluorescence.png")
        example = load_image(read_image_bytes(EXAMPLE_IMAGE))
        on_example = detect_droplets(example, weights_dir=weights_dir)
        print(f"{EXAMPLE_IMAGE.name}: {len(on_example)} droplets")
        overlay_png(example, on_example).save(overlays / "detections_example.png")
    for variant in generality.variants(quick):
        rows = []
        for seed in seeds:
            scene = generality.render_scene(variant, seed)
            found = detect_droplets(scene.image, weights_dir=weights_dir)
            rows.append(detector_scores(scene.truth, found, scene.image.shape))
        print_row(variant.renderer, variant.family, variant.label, rows)
    print(
        "cut: true droplets whose disk crosses the image border; tiny: radius under "
        f"{TINY_RADIUS_PX} px; r err: median relative radius error."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="scenes to score on")
    parser.add_argument("--detector-only", action="store_true", help="the detector alone on every family")
    parser.add_argument("--quick", action="store_true", help="detector only: generality's quick scenes")
    parser.add_argument("--weights", help="detector only: a folder of weights (default: the shipped ones)")
    parser.add_argument("--overlays", type=Path, help="detector only: draw the real images' detections here")
    parser.add_argument("--tune-seed", type=int, default=classical.TUNING_SEED, help="scene to tune on")
    parser.add_argument("--skip-droplet", action="store_true", help="score only the classical detectors")
    parser.add_argument(
        "--droplets", type=int, default=SceneSettings().n_droplets, help="droplets per scene (the tuning scene too)"
    )
    args = parser.parse_args()
    if args.detector_only:
        detector_only(args.quick, args.seeds, args.weights, args.overlays)
        return
    use_compilation_cache(tempfile.mkdtemp(prefix="droplet-bench-detection-"))
    if args.tune_seed in args.seeds:
        parser.error("score on scenes other than the tuning scene")

    scene = SceneSettings(n_droplets=args.droplets)
    tuned = tune(args.tune_seed, scene)
    scenes = [make_scene(seed, scene) for seed in args.seeds]
    detectors: dict[str, Detector] = {
        "blob_log (tuned)": classical.make_detector("blob_log", tuned["blob_log"]),
        "trackpy (tuned)": classical.make_detector("trackpy", tuned["trackpy"]),
    }
    if not args.skip_droplet:
        # A process's first fit also starts JAX and loads the encoder (a few seconds, once per
        # process, as when the app starts): an untimed fit of the tuning scene pays for it.
        droplet_detector(make_scene(args.tune_seed, scene)[0])
        detectors["Droplet fit (defaults)"] = droplet_detector
    rows = {}
    for name, detect in detectors.items():
        rows[name] = score_detector(detect, scenes)
        print(f"  scored {name}", flush=True)
    print_table(rows, args.seeds)


if __name__ == "__main__":
    main()
