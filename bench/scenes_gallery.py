"""One synthetic scene of every family side by side, with the time each took to draw.

``python -m bench.scenes_gallery [--out docs/scene_families.png] [--seed 1] [--size 1024]``
renders each family's preset scene (phase contrast twice: Zernike phase and DIC), prints per
scene its droplet count, radius range and seconds, draws a polydisperse scene (radius 3-150
px, 1:50) and a crowded one (3000 droplets requested, radius 2-20 px) of every non-seed
family at ``--size`` squared to print how long large scenes take, and writes the presets as a labelled grid (at 3/4 size) so people can see what the families look like.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from droplet_core.scenes import family_settings, make_scene

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
    ("crowded", dict(radius_min_px=2.0, radius_max_px=20.0, radius_median_px=5.0, radius_log_sd=0.5,
                     n_droplets=3000, min_distance_fraction=0.95)),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/scene_families.png"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024, help="side of the large polydisperse scenes (px)")
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


def _report(name, settings, truth, seconds) -> None:
    radius = truth.radius
    size = f"{settings.width_px}x{settings.height_px}"
    print(f"{name:<22} {size:>9} {len(truth):>8} {radius.min():>5.1f}-{radius.max():<6.1f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
