"""One synthetic scene of every family side by side, with the time each took to draw.

``python -m bench.scenes_gallery [--out docs/scene_families.png] [--seed 1] [--size 1024]``
renders each family's preset scene (phase contrast twice: Zernike phase and DIC), prints per
scene its droplet count, radius range and seconds, draws a polydisperse scene (radius 3-150
px, 1:50) and a crowded one (3000 droplets requested, radius 2-20 px) of every non-seed
family at ``--size`` squared to print how long large scenes take, and writes the presets as a
labelled grid (at 3/4 size) so people can see what the families look like.

With ``--real`` (default ``../shared/data/dna_droplets_fluorescence.tif``, skipped when
missing) it also measures the real 16-bit fluorescence image and a 16-bit fluorescence scene
of the same size and droplet sizes alike: droplet over field level, the noise (residual from
a 5x5 median, over the level) in droplets and in the field, and the edge over centre level
of isolated droplets, segmented by Otsu's threshold.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import filters, measure, morphology

from droplet_core.synthetic.scenes import family_settings, make_scene, make_scene_uint16

TILE_PX = (500, 400)
PANELS = (
    ("seed", {}),
    ("fluorescence", {}),
    ("brightfield", {}),
    ("phase", {}),
    ("phase", {"mode": "dic"}),
    ("packed", {}),
)
LARGE = (
    ("1:50", dict(radius_min_px=3.0, radius_max_px=150.0, radius_median_px=8.0, radius_log_sd=1.0, n_droplets=2000)),
    (
        "crowded",
        dict(
            radius_min_px=2.0,
            radius_max_px=20.0,
            radius_median_px=5.0,
            radius_log_sd=0.5,
            n_droplets=3000,
            min_distance_fraction=0.95,
        ),
    ),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/scene_families.png"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024, help="side of the large polydisperse scenes (px)")
    parser.add_argument("--real", type=Path, default=Path("../shared/data/dna_droplets_fluorescence.tif"))
    args = parser.parse_args(argv)

    tiles = []
    print(f"{'scene':<22} {'size':>9} {'droplets':>8} {'radius px':>12} {'seconds':>8}")
    for family, overrides in PANELS:
        settings = family_settings(family, width_px=TILE_PX[0], height_px=TILE_PX[1], **overrides)
        started = time.perf_counter()
        image, truth = make_scene(args.seed, settings)
        seconds = time.perf_counter() - started
        name = f"{family} ({overrides['mode']})" if overrides else family
        _report(name, settings, truth, seconds)
        tiles.append((name, image))
    for label, overrides in LARGE:
        for family in ("fluorescence", "brightfield", "phase", "packed"):
            if family == "packed":  # the packing fraction, not a count, sets how many
                overrides = {k: v for k, v in overrides.items() if k not in ("n_droplets", "min_distance_fraction")}
            settings = family_settings(family, width_px=args.size, height_px=args.size, **overrides)
            started = time.perf_counter()
            _, truth = make_scene(args.seed, settings)
            _report(f"{family} {label}", settings, truth, time.perf_counter() - started)

    columns = 3
    rows = int(np.ceil(len(tiles) / columns))
    grid = Image.new("RGB", (columns * TILE_PX[0], rows * TILE_PX[1]), "white")
    for index, (name, image) in enumerate(tiles):
        tile = Image.fromarray(image)
        label = ImageDraw.Draw(tile)
        label.rectangle((0, 0, 8 + 7 * len(name), 18), fill="black")
        label.text((4, 3), name, fill="white")
        grid.paste(tile, ((index % columns) * TILE_PX[0], (index // columns) * TILE_PX[1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * 3 // 4, grid.height * 3 // 4), Image.Resampling.LANCZOS).save(args.out)
    print(f"-> {args.out}")
    if args.real.exists():
        _compare_fluorescence(tifffile.imread(args.real), args.seed)


# Droplets in the real image have radii of about 10-45 px (median about 27 px).
REAL_LIKE = dict(n_droplets=130, radius_min_px=8.0, radius_max_px=50.0, radius_median_px=24.0, radius_log_sd=0.4)


def _compare_fluorescence(real: np.ndarray, seed: int) -> None:
    """Print the statistics of ``fluorescence_statistics`` for the real image and a scene like it."""
    height, width = real.shape
    synthetic, _ = make_scene_uint16(
        seed, family_settings("fluorescence", width_px=width, height_px=height, **REAL_LIKE)
    )
    rows = {"real": fluorescence_statistics(real), "synthetic": fluorescence_statistics(synthetic)}
    names = list(rows["real"])
    print(f"\nfluorescence, {width}x{height}: " + ", ".join(names))
    for name, values in rows.items():
        print(f"{name:<10} " + " ".join(f"{values[key]:>10.3f}" for key in names))


def fluorescence_statistics(counts: np.ndarray) -> dict:
    """Levels, noise and edge brightening of a ``(h, w)`` fluorescence image, droplets found by Otsu's threshold.

    Returns droplet over field level (medians more than 5 px inside droplets and 10 px
    outside), noise in droplets and in the field (sd of the residual from a 5x5 median, over
    the level) and the median over isolated droplets (round regions of at least 300 px) of
    the level at 0.75-0.95 of the radius over that within 0.5 of it.
    """
    image = counts.astype(np.float64)
    smooth = filters.gaussian(image, 2.0, preserve_range=True)
    droplets = morphology.opening(smooth > filters.threshold_otsu(smooth), morphology.disk(2))
    depth = ndimage.distance_transform_edt(droplets)
    clearance = ndimage.distance_transform_edt(~droplets)
    inside, field = np.median(image[depth > 5]), np.median(image[clearance > 10])
    residual = image - ndimage.median_filter(image, 5)
    edge_over_centre = []
    for region in measure.regionprops(measure.label(droplets)):
        if region.solidity < 0.97 or region.area < 300:
            continue
        (cy, cx), radius = region.centroid, np.sqrt(region.area / np.pi)
        r0, c0, r1, c1 = region.bbox
        rows, cols = np.mgrid[r0:r1, c0:c1]
        d = np.hypot(rows - cy, cols - cx) / radius
        patch = image[r0:r1, c0:c1]
        edge_over_centre.append(patch[(d > 0.75) & (d < 0.95)].mean() / patch[d < 0.5].mean())
    return {
        "droplet_over_field": inside / field,
        "noise_in_droplets": residual[depth > 5].std() / inside,
        "noise_in_field": residual[clearance > 10].std() / field,
        "edge_over_centre": float(np.median(edge_over_centre)),
        "isolated_droplets": float(len(edge_over_centre)),
    }


def _report(name, settings, truth, seconds) -> None:
    radius = truth.radius
    size = f"{settings.width_px}x{settings.height_px}"
    print(f"{name:<22} {size:>9} {len(truth):>8} {radius.min():>5.1f}-{radius.max():<6.1f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
