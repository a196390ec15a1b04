"""How Droplet's fit cost grows with image size and droplet count.

Run from the repository root::

    python -m bench.scaling                          # every model, default steps
    python -m bench.scaling --models templates --steps 100

Each configuration runs ``run_fit`` in a fresh subprocess with the compilation cache off,
so that compiled programs and memory high-water marks do not carry over (every row is a
first, cold fit); peak memory is the child's maximum resident
set size (``os.wait4``), which includes the Python/JAX runtime. Two sweeps over the
example image: downscale 1 (full resolution), 2, 3 and 4 with automatic droplet count,
then droplet caps (``FitSettings(droplets=N)``) at downscale 4. "Step us/px" is the time
per step and pixel of the fitting loop without its first (compiling) chunk; "total us/px"
is the whole ``total_s`` per pixel. Target: every model fits full resolution with peak
memory below 2 GB and time per pixel no worse than at downscale 4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np

from droplet_core.settings import FitSettings

CHANNELS = {"templates": "h", "gaussian": "h", "neural": "rgb"}
MEMORY_TARGET_MB = 2000.0
RESULT_PREFIX = "RESULT "


def fit_once(image_path: Path, model: str, downscale: int, droplets: int, steps: int) -> dict:
    """Run one fit in this process; the measurements of ``run_fit``'s result."""
    from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes
    from droplet_core.inference.engine import CHUNK_STEPS, run_fit

    data = read_image_bytes(image_path)
    settings = FitSettings(model=model, channel=CHANNELS[model], downscale=downscale, droplets=droplets, steps=steps)
    result = run_fit(load_image(data), settings, image_sha256=sha256_bytes(data))
    timings = asdict(result.report.timings)
    height, width = result.report.fit_shape[:2]
    # The first chunk's time is its compilation plus one chunk of steps; count that chunk as compile only.
    looped_steps = max(steps - CHUNK_STEPS, 1)
    step_s = (timings["fit_s"] - timings["compile_s"]) / looped_steps
    return {
        "pixels": height * width,
        "shape": f"{width}x{height}",
        "total_s": timings["total_s"],
        "compile_s": timings["compile_s"],
        "step_s": step_s,
        "candidates": result.report.candidate_count,
        "droplets": result.report.count.count,
        "rmse": float(np.mean(result.report.rmse)),
    }


def measure(image_path: Path, model: str, downscale: int, droplets: int, steps: int, timeout_s: float) -> dict:
    """``fit_once`` in a fresh subprocess, with its peak RSS in MB; ``{"error": ...}`` when it fails."""
    command = [
        sys.executable,
        "-m",
        "bench.scaling",
        "--child",
        json.dumps([str(image_path), model, downscale, droplets, steps]),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "DROPLET_COMPILATION_CACHE": ""},
    )
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    output = process.stdout.read()
    # wait4 rather than RUSAGE_CHILDREN: the latter is the maximum over all children so far.
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    peak_mb = usage.ru_maxrss / 1024.0
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        reason = f"killed after {timeout_s:.0f} s" if process.returncode == -9 else f"exit {process.returncode}"
        return {"error": reason, "peak_mb": peak_mb}
    return {**json.loads(lines[-1][len(RESULT_PREFIX) :]), "peak_mb": peak_mb}


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """Slope of log(seconds) against log(size): cost grows as size to this power."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def print_table(title: str, rows: list[tuple[str, int, int, dict]]) -> None:
    print(f"\n{title}")
    print(
        f"{'model':<10} {'ds':>2} {'cap':>5} {'size':>10} {'pixels':>9} {'total s':>8} {'compile':>8} "
        f"{'step ms':>8} {'total us/px':>11} {'step us/px':>10} {'peak MB':>8} {'cand':>6} {'drops':>6} {'RMSE':>7}"
    )
    for model, downscale, cap, r in rows:
        if "error" in r:
            print(f"{model:<10} {downscale:>2} {cap or 'auto':>5} {r['error']} (peak {r['peak_mb']:.0f} MB)")
            continue
        print(
            f"{model:<10} {downscale:>2} {cap or 'auto':>5} {r['shape']:>10} {r['pixels']:>9} {r['total_s']:>8.1f} "
            f"{r['compile_s']:>8.1f} {1e3 * r['step_s']:>8.1f} {1e6 * r['total_s'] / r['pixels']:>11.1f} "
            f"{1e6 * r['step_s'] / r['pixels']:>10.4f} {r['peak_mb']:>8.0f} {r['candidates']:>6} {r['droplets']:>6} "
            f"{r['rmse']:>7.4f}"
        )


def print_growth(models: list[str], by_size: list, by_count: list) -> None:
    print("\nHow cost grows (log-log slope: 1 = linear)")
    print(
        f"{'model':<10} {'total~px^k':>10} {'step~px^k':>10} {'total~N^k':>10} {'step~N^k':>9}  full resolution vs downscale 4"
    )
    for model in models:
        sized = [(r["pixels"], r) for m, _, _, r in by_size if m == model and "error" not in r]
        counted = [(r["candidates"], r) for m, _, _, r in by_count if m == model and "error" not in r]
        slopes = [
            growth_exponent([p for p, _ in group], [r[key] for _, r in group])
            for group in (sized, counted)
            for key in ("total_s", "step_s")
        ]
        verdict = target_verdict(model, by_size)
        print(f"{model:<10} {slopes[0]:>10.2f} {slopes[1]:>10.2f} {slopes[2]:>10.2f} {slopes[3]:>9.2f}  {verdict}")


def target_verdict(model: str, by_size: list) -> str:
    """Whether full resolution meets the memory and time-per-pixel targets, in words."""
    runs = {downscale: r for m, downscale, _, r in by_size if m == model}
    full, quarter = runs.get(1), runs.get(4)
    if full is None or quarter is None:
        return "not measured"
    if "error" in full:
        return f"full resolution failed ({full['error']}, peak {full['peak_mb']:.0f} MB): misses"
    if "error" in quarter:
        return "downscale 4 failed: no comparison"
    memory_ok = full["peak_mb"] < MEMORY_TARGET_MB
    per_px = {
        name: (full[key] / full["pixels"]) / (quarter[key] / quarter["pixels"])
        for name, key in (("total", "total_s"), ("step", "step_s"))
    }
    time_ok = per_px["total"] <= 1.0
    return (
        f"peak {full['peak_mb']:.0f} MB ({'<' if memory_ok else '>='} 2 GB), time/px x{per_px['total']:.2f} total, "
        f"x{per_px['step']:.2f} per step: {'meets' if memory_ok and time_ok else 'misses'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=Path("../shared/data/example.jpg"))
    parser.add_argument("--models", nargs="+", choices=list(CHANNELS), default=list(CHANNELS))
    parser.add_argument("--steps", type=int, default=FitSettings().steps)
    parser.add_argument("--downscales", type=int, nargs="+", default=[4, 3, 2, 1])
    parser.add_argument(
        "--droplets", type=int, nargs="+", default=[250, 500, 1000, 2000], help="droplet caps tried at downscale 4"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before one configuration is killed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        image_path, model, downscale, droplets, steps = json.loads(args.child)
        print(RESULT_PREFIX + json.dumps(fit_once(Path(image_path), model, downscale, droplets, steps)), flush=True)
        return

    by_size, by_count = [], []
    for model in args.models:
        for downscale in args.downscales:
            print(f"{model}: downscale {downscale} ...", flush=True)
            by_size.append((model, downscale, 0, measure(args.image, model, downscale, 0, args.steps, args.timeout)))
        for cap in args.droplets:
            print(f"{model}: downscale 4, at most {cap} droplets ...", flush=True)
            by_count.append((model, 4, cap, measure(args.image, model, 4, cap, args.steps, args.timeout)))
    print(f"\nExample image, {args.steps} steps per fit, one fresh process per row")
    print_table("By image size (automatic droplet count)", by_size)
    print_table("By droplet cap at downscale 4", by_count)
    print_growth(args.models, by_size, by_count)


if __name__ == "__main__":
    main()
