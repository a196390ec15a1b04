"""Do the 90 % intervals of the size statistics hold the truth 90 % of the time?

Run from the repository root::

    python -m bench.statistics                  # 60 scored scenes (seeds 200-259), templates (about 4 min)
    python -m bench.statistics --calibrate      # fit droplet_core/measurements/size_calibration.json on seeds 300-399

Each scene is a small crowded synthetic scene (``droplet_core.synthetic.scenes``, 300x240 px, as
dense as the default scene) that neither ``bench.calibration`` (seeds 1-5, 100-103) nor
the encoder's training (10 000+) uses. Droplet fits it with its default settings; the
statistics of the fit (``droplet_core.measurements.readout.fit_statistics``) are compared with the same
statistics of the true droplets (same estimator, same border handling). Printed: per
scene the truth and interval of count, D50 and D[3,2]; then, for every statistic, the
share of scenes whose interval holds the truth and the mean relative error (bias).

``--calibrate`` fits each statistic's discrepancy (the relative sd of a log-normal factor
beyond the per-droplet uncertainty, ``droplet_core.measurements.size_statistics.with_discrepancy``) on
its own scenes (seeds 300-399, never the scored ones): the smallest factor whose 90 %
intervals hold the truth in 90 % of those scenes. The calibration describes the fit it was
run with: re-run it whenever the fit changes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from droplet_core.imaging.images import sha256_bytes
from droplet_core.inference.engine import run_fit
from droplet_core.measurements.counting import count_interval
from droplet_core.measurements.readout import (
    SIZE_CALIBRATION_FILE,
    field_of_view,
    fit_statistics,
)
from droplet_core.measurements.size_statistics import (
    STATISTIC_NAMES,
    StatisticsSettings,
    size_statistics,
    statistic_draws,
    with_discrepancy,
)
from droplet_core.results import FitReport
from droplet_core.settings import FitSettings, default_channel
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

SCORED_SEEDS = tuple(range(200, 260))
CALIBRATION_SEEDS = tuple(range(300, 400))
SCENE = SceneSettings(width_px=300, height_px=240, n_droplets=540)
HEADLINE = ("count", "d50", "d32")


def fit_scene(seed: int, model: str):
    """Droplet's default fit of scene ``seed`` and the scene's true droplets."""
    rgb, truth = make_scene(seed, SCENE)
    settings = FitSettings(model=model, channel=default_channel(model))
    result = run_fit(rgb.astype(np.float32) / 255.0, settings, image_sha256=sha256_bytes(encode_png(rgb)))
    return result, truth


def true_statistics(truth: pd.DataFrame, report: FitReport) -> pd.DataFrame:
    """The statistics of the true droplets (same estimator and border handling), by name."""
    table = size_statistics(
        truth["x"], truth["y"], truth["radius"], field_of_view(report), settings=StatisticsSettings(draws=2)
    )
    return table.set_index("statistic")


def smallest_covering_factor(truth: np.ndarray, intervals, level: float = 0.9) -> float:
    """The smallest discrepancy factor whose intervals (``intervals(factor)`` -> ``(low, high)``
    arrays over the scenes) hold ``truth`` in at least ``level`` of the scenes, rounded up to
    4 decimals (rounded down, it could fall short: the count's intervals are whole numbers)."""
    low_f, high_f = 0.0, 1.0
    for _ in range(30):
        factor = 0.5 * (low_f + high_f)
        low, high = intervals(factor)
        covered = np.mean((low <= truth) & (truth <= high))
        low_f, high_f = (factor, high_f) if covered < level else (low_f, factor)
    return float(np.ceil(high_f * 1e4) / 1e4)


def calibrate(model: str, seeds: tuple[int, ...]) -> None:
    """Fit each statistic's discrepancy on ``seeds`` and write ``SIZE_CALIBRATION_FILE``."""
    settings = StatisticsSettings()
    tail = 0.5 * (1.0 - settings.level)
    scenes = []
    for seed in seeds:
        result, truth = fit_scene(seed, model)
        droplets = result.droplets
        values, draws = statistic_draws(
            droplets["x"],
            droplets["y"],
            droplets["radius"],
            field_of_view(result.report),
            sd_radius_px=droplets["sd_radius"],
            p_exists=droplets["p_exists"],
            settings=settings,
        )
        scenes.append(
            (
                true_statistics(truth, result.report),
                draws,
                droplets["p_exists"].to_numpy(),
                result.report.uncertainty.count_discrepancy,
            )
        )
        true = scenes[-1][0]
        errors = "  ".join(
            f"{name} {values[STATISTIC_NAMES.index(name) - 1] / true.loc[name, 'value'] - 1:+.3f}"
            for name in HEADLINE[1:]
        )
        print(f"calibration scene {seed}: relative error {errors}", flush=True)
    factors = {}
    for column, name in enumerate(STATISTIC_NAMES[1:]):
        truth = np.array([true.loc[name, "value"] for true, *_ in scenes])

        def intervals(factor, column=column):
            # Through ``with_discrepancy`` of every statistic at once, as ``size_statistics``
            # applies it, so that each statistic meets the same random factors as it will there.
            factors = np.where(np.arange(len(STATISTIC_NAMES) - 1) == column, factor, 0.0)
            bounds = [
                np.nanquantile(with_discrepancy(draws, factors, settings.seed)[:, column], [tail, 1.0 - tail])
                for _, draws, _, _ in scenes
            ]
            return np.maximum(np.array(bounds).T, [[0.0], [-np.inf]])

        factors[name] = smallest_covering_factor(truth, intervals)
    true_counts = np.array([true.loc["count", "value"] for true, *_ in scenes])

    def count_intervals(factor):
        return np.array(
            [count_interval(p, float(np.hypot(count_sd, factor)), settings.level) for _, _, p, count_sd in scenes]
        ).T

    factors["count"] = smallest_covering_factor(true_counts, count_intervals)
    record = json.loads(SIZE_CALIBRATION_FILE.read_text()) if SIZE_CALIBRATION_FILE.exists() else {"discrepancy": {}}
    record["discrepancy"][model] = factors
    record["command"] = f"python -m bench.statistics --calibrate --model {model}"
    record["calibration_scene_seeds"] = list(seeds)
    record["scene"] = {"width_px": SCENE.width_px, "height_px": SCENE.height_px, "n_droplets": SCENE.n_droplets}
    record["level"] = settings.level
    SIZE_CALIBRATION_FILE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{model}: {factors} -> {SIZE_CALIBRATION_FILE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="templates", choices=["templates", "gaussian", "neural"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.model, tuple(args.seeds or CALIBRATION_SEEDS))
        return
    seeds = tuple(args.seeds or SCORED_SEEDS)
    if set(seeds) & set(CALIBRATION_SEEDS):
        parser.error(f"scenes {CALIBRATION_SEEDS} calibrate the intervals; score on others")

    started = time.perf_counter()
    rows, covered, relative = [], {n: [] for n in STATISTIC_NAMES}, {n: [] for n in STATISTIC_NAMES}
    for seed in seeds:
        result, truth = fit_scene(seed, args.model)
        fitted = fit_statistics(result.droplets, result.report).set_index("statistic")
        true = true_statistics(truth, result.report)
        row = {"scene": seed}
        for name in STATISTIC_NAMES:
            truth, low, high = true.loc[name, "value"], fitted.loc[name, "low_90"], fitted.loc[name, "high_90"]
            covered[name].append(low <= truth <= high)
            relative[name].append(fitted.loc[name, "value"] / truth - 1.0)
            if name in HEADLINE:
                row[f"{name} true"] = truth
                row[f"{name} fit"] = fitted.loc[name, "value"]
                row[f"{name} 90%"] = f"{low:.4g}-{high:.4g}"
                row[f"{name} in"] = bool(low <= truth <= high)
        rows.append(row)
        print(f"scene {seed}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).to_string(index=False))
        summary = pd.DataFrame(
            {
                "coverage of 90 % interval": {n: np.mean(covered[n]) for n in STATISTIC_NAMES},
                "mean relative error (bias)": {n: np.mean(relative[n]) for n in STATISTIC_NAMES},
                "rms relative error": {n: np.sqrt(np.mean(np.square(relative[n]))) for n in STATISTIC_NAMES},
            }
        )
        print(f"\n{len(seeds)} scenes, model {args.model}, {time.perf_counter() - started:.0f} s")
        print(summary.to_string())
    print("\nheadline (target 0.85-0.95): " + ", ".join(f"{n} {np.mean(covered[n]):.2f}" for n in HEADLINE))


if __name__ == "__main__":
    main()
