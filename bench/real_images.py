"""Real images from other labs: Droplet's default fit of each, drawn over it, for a person to judge.

Run from the repository root on any files or folders of images (PNG, JPEG, TIFF, BMP)::

    python -m bench.real_images ../shared/data --out /tmp/real
    python -m bench.real_images /tmp/public-images/*.tif --out /tmp/real

Most images a chemist brings have no truth, so this bench prints what a person checks
first (how many droplets are shown, how large, the downscale the fit chose and why, the
fit's verdict on itself, seconds) and writes, for each image, the fitted droplets over the
contrast-stretched image (``<name>_overlay.png``: shown droplets green, doubtful ones red)
and an enlarged crop of its top-left corner (``<name>_crop.png``), to look at. Public
images without a licence that allows it are used from a temporary folder by path, never
committed (``docs/benchmarks.md``, "Real images from other labs", says which were tried).
Each image is fitted twice, the first run untimed (it compiles the programs for that
size, as for the first of a series of similar images).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from droplet_core import use_compilation_cache
from droplet_core.imaging.images import load_image, read_image_bytes
from droplet_core.measurements.counting import doubtful_mask
from droplet_core.service.cli import main as droplet_cli

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SHOWN_RGB = (60, 230, 60)
DOUBTFUL_RGB = (240, 60, 60)
CROP_PX = 400
ZOOM = 2


def image_paths(sources: list[str]) -> list[Path]:
    """The image files among ``sources`` and inside the folders among them, sorted."""
    paths = []
    for source in map(Path, sources):
        found = sorted(source.iterdir()) if source.is_dir() else [source]
        paths += [path for path in found if path.is_file() and path.suffix.lower() in SUFFIXES]
    return paths


def fit_image(path: Path, out: Path) -> tuple[pd.DataFrame, dict, float]:
    """The droplet table and ``fit.json`` of ``python -m droplet_core fit`` with default
    settings, and the seconds of a second, timed fit of the mirrored image."""
    droplets, fit = _cli_fit(path, out)
    with tempfile.TemporaryDirectory(prefix="droplet-real-") as folder:
        mirrored = Path(folder) / f"mirrored{path.suffix}"
        _mirrored_copy(path, mirrored)
        started = time.perf_counter()
        _cli_fit(mirrored, Path(folder) / "fit")
        seconds = time.perf_counter() - started
    return droplets, fit, seconds


def _cli_fit(path: Path, out: Path) -> tuple[pd.DataFrame, dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        status = droplet_cli(["fit", str(path), "--out", str(out), "--quiet"])
    if status != 0:
        raise RuntimeError(f"droplet_core fit {path} exited with {status}")
    return pd.read_csv(out / "droplets.csv"), json.loads((out / "fit.json").read_text())


def _mirrored_copy(path: Path, target: Path) -> None:
    """``path`` mirrored left-right (other bytes, so the store cannot answer the timed fit;
    the same size, so the same compiled programs)."""
    with Image.open(path) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)


def draw_fit(image: np.ndarray, droplets: pd.DataFrame, overlay: Path, crop: Path) -> None:
    """Shown and doubtful droplets over ``image`` ``(h, w, 3)`` (contrast-stretched between its
    0.5th and 99.8th percentiles), and the top-left ``CROP_PX`` enlarged ``ZOOM`` times."""
    grey = image.mean(axis=2)
    low, high = np.percentile(grey, [0.5, 99.8])
    stretched = np.clip((grey - low) / max(high - low, 1e-12), 0.0, 1.0)
    canvas = Image.fromarray(np.round(stretched * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    doubtful = doubtful_mask(droplets)
    for row, is_doubtful in zip(droplets.itertuples(), doubtful):
        box = [row.x - row.radius, row.y - row.radius, row.x + row.radius, row.y + row.radius]
        draw.ellipse(box, outline=DOUBTFUL_RGB if is_doubtful else SHOWN_RGB, width=2)
    canvas.save(overlay, optimize=True)
    corner = canvas.crop((0, 0, min(CROP_PX, canvas.width), min(CROP_PX, canvas.height)))
    corner.resize((corner.width * ZOOM, corner.height * ZOOM), Image.Resampling.NEAREST).save(crop, optimize=True)


HEADER = f"{'image':<28} {'size':>10} {'down':>4} {'shown':>6} {'doubt':>6} {'radius px: median (10-90 %)':>28} {'verdict':>8} {'s':>6}"


def summary(name: str, droplets: pd.DataFrame, fit: dict, seconds: float) -> str:
    """One row of the printed table (``HEADER``)."""
    shown = droplets[~doubtful_mask(droplets)]
    low, median, high = shown["radius"].quantile([0.1, 0.5, 0.9]) if len(shown) else (np.nan,) * 3
    size = "x".join(str(side) for side in fit["image_shape"][1::-1])
    radius = f"{median:.1f} ({low:.1f}-{high:.1f})"
    return (
        f"{name[:28]:<28} {size:>10} {fit['downscale']:>4} {len(shown):>6} {len(droplets) - len(shown):>6} "
        f"{radius:>28} {fit['verdict']['quality']:>8} {seconds:>6.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="image files or folders of them")
    parser.add_argument("--out", required=True, help="folder for the overlays and each fit's outputs")
    args = parser.parse_args(argv)
    paths = image_paths(args.sources)
    if not paths:
        parser.error("no images (PNG, JPEG, TIFF, BMP) among the sources")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_compilation_cache(tempfile.mkdtemp(prefix="droplet-bench-real-"))
    os.environ["DROPLET_STORE"] = tempfile.mkdtemp(prefix="droplet-bench-real-store-")
    print(HEADER, flush=True)
    for path in paths:
        droplets, fit, seconds = fit_image(path, out / path.stem)
        image = load_image(read_image_bytes(path))
        draw_fit(image, droplets, out / f"{path.stem}_overlay.png", out / f"{path.stem}_crop.png")
        print(summary(path.name, droplets, fit, seconds), flush=True)
        if fit["verdict"]["problems"]:
            print("   ", " ".join(fit["verdict"]["problems"]), flush=True)
    print(f"overlays in {out}")


if __name__ == "__main__":
    main()
