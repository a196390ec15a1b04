"""Which JAX device fits run on, and how fast: the same fits on CPU and on a GPU.

Run from the repository root::

    python -m bench.device                            # on the default JAX device
    JAX_PLATFORMS=cpu python -m bench.device          # the CPU reference on the same machine

For each size, a synthetic scene as crowded as the default one (``droplet_core.synthetic.scenes``;
the droplet count grows with the area): a templates fit with default settings (150 SVI
steps) in a process whose compilation cache is empty (cold: it compiles), the same fit
with another seed (warm: compiled programs reused), then a fit of the scene holding the
first fit's masks fixed (Levenberg-Marquardt, ``droplet_core.inference.reuse_fit``), twice: the first
pays the reuse path's one-off compilations (on a GPU, its compiled step: several
seconds). Prints the device
each fit records in its ``fit.json``, its time, RMSE and F1 against the scene's truth.
On a GPU the fit's steps and the reuse fit's Levenberg-Marquardt step
(``droplet_core.inference.reuse_compiled``) run there; detection, switching droplets on and off
and the uncertainty's per-droplet sums run on the host in numpy either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import asdict

import numpy as np

from droplet_core import use_compilation_cache
from droplet_core.detection.matching import match_droplets
from droplet_core.imaging.images import sha256_bytes
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

DEFAULT_SCENE = SceneSettings()


def scene_of_size(width_px: int, height_px: int, seed: int = 1):
    """A scene of this size with the default scene's droplets per pixel."""
    density = DEFAULT_SCENE.n_droplets / (DEFAULT_SCENE.width_px * DEFAULT_SCENE.height_px)
    settings = dataclasses.replace(
        DEFAULT_SCENE, width_px=width_px, height_px=height_px, n_droplets=int(density * width_px * height_px)
    )
    return make_scene(seed, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["500x400", "1500x1200"], help="WIDTHxHEIGHT in px")
    args = parser.parse_args()
    use_compilation_cache(tempfile.mkdtemp(prefix="droplet-bench-device-"))
    import jax

    from droplet_core.inference.engine import run_fit

    print(f"JAX {jax.__version__}, default backend {jax.default_backend()}, devices {jax.devices()}")
    print(
        f"{'size':<10} {'droplets':>8} {'fit':<28} {'device':<30} {'s':>6} {'detect/fit/unc s':>16} "
        f"{'RMSE':>7} {'F1':>6}"
    )
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        rgb, truth = scene_of_size(width, height)
        image, sha = rgb.astype(np.float32) / 255.0, sha256_bytes(encode_png(rgb))
        first = run_fit(image, FitSettings(downscale=1), image_sha256=sha)
        reuse = FitSettings(downscale=1, appearance_from=first.fit_id)
        runs = {
            "templates, 150 steps, cold": first,
            "templates, 150 steps, warm": run_fit(image, FitSettings(downscale=1, seed=1), image_sha256=sha),
            "masks reused, first": run_fit(image, reuse, image_sha256=sha, appearance_source=first),
            "masks reused, again": run_fit(image, reuse, image_sha256=sha, appearance_source=first),
        }
        for name, result in runs.items():
            timings = asdict(result.report.timings)
            parts = f"{timings['detect_s']:.2f}/{timings['fit_s']:.2f}/{timings['uncertainty_s']:.2f}"
            print(
                f"{size:<10} {len(truth):>8} {name:<28} {result.report.device:<30} {timings['total_s']:>6.2f} "
                f"{parts:>16} {np.mean(result.report.rmse):>7.4f} {match_droplets(truth, result.droplets).f1:>6.3f}"
            )


if __name__ == "__main__":
    main()
