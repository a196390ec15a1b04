"""What XLA's CPU compiler options do to a fit's compile and total time.

Run from the repository root::

    python -m bench.xla_flags                      # templates on a 500x400 scene, 3 rounds
    python -m bench.xla_flags --model gaussian --rounds 5

Compilation is a large part of a short fit. XLA's CPU backend runs LLVM at its highest
optimisation level (3) by default; a lower level compiles faster and may run a little
slower. ``droplet_core`` sets level 1 unless ``XLA_FLAGS`` names a level. Each flag set fits the same scene (``FitSettings`` defaults otherwise) in a fresh
subprocess, round-robin over the flag sets so that load on a shared machine hits them
alike, and the median over rounds is printed with the RMSE (which must not change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

FLAG_SETS = {
    "XLA default (O3)": "--xla_backend_optimization_level=3",
    "O1 (Droplet's setting)": "--xla_backend_optimization_level=1",
    "O0": "--xla_backend_optimization_level=0",
    "O3, no expensive passes": "--xla_backend_optimization_level=3 --xla_llvm_disable_expensive_passes=true",
}
CHILD = """
import json, sys
from dataclasses import asdict
import numpy as np
from droplet_core.inference.engine import run_fit
from droplet_core.imaging.images import sha256_bytes
from droplet_core.synthetic.scenes import encode_png, make_scene
from droplet_core.settings import FitSettings
rgb, _ = make_scene(int(sys.argv[1]))
result = run_fit(rgb.astype(np.float32) / 255, FitSettings(model=sys.argv[2], steps=int(sys.argv[3])),
                 image_sha256=sha256_bytes(encode_png(rgb)))
print(json.dumps({**asdict(result.report.timings), "rmse": float(np.mean(result.report.rmse))}))
"""


def fit_in_subprocess(flags: str, scene: int, model: str, steps: int) -> dict:
    """``run_fit``'s timings and RMSE from a fresh process with ``XLA_FLAGS=flags``."""
    env = {**os.environ, "XLA_FLAGS": flags}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(scene), model, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="templates", choices=["templates", "gaussian", "neural"])
    parser.add_argument("--scene", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in FLAG_SETS}
    for round_index in range(args.rounds):
        for name, flags in FLAG_SETS.items():
            runs[name].append(fit_in_subprocess(flags, args.scene, args.model, args.steps))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    base = statistics.median(r["total_s"] for r in runs["XLA default (O3)"])
    print(f"\n{args.model}, scene {args.scene}, {args.steps} steps; medians over {args.rounds} rounds")
    print(f"{'XLA flags':<26} {'compile s':>9} {'fit s':>7} {'total s':>8} {'vs O3':>10} {'RMSE':>8}")
    for name, results in runs.items():
        compile_s = statistics.median(r["compile_s"] for r in results)
        fit_s = statistics.median(r["fit_s"] for r in results)
        total_s = statistics.median(r["total_s"] for r in results)
        rmse = statistics.median(r["rmse"] for r in results)
        print(f"{name:<26} {compile_s:>9.2f} {fit_s:>7.2f} {total_s:>8.2f} {total_s / base:>9.2f}x {rmse:>8.4f}")


if __name__ == "__main__":
    main()
