"""Generality: Droplet and classical detectors on every family of two renderers and on a real image.

Run from the repository root::

    python -m bench.generality                     # every family of both renderers, the real image
    python -m bench.generality --quick             # one small scene per family (a smoke run)
    python -m bench.generality --families fluorescence packed --skip-droplet
    python -m bench.generality --write-reference   # also draw docs/fluorescence_reference.png

Scenes come from two renderers: ``droplet_core.synthetic.scenes`` (the generator Droplet and its
encoder are tuned on; ``SCENES_VARIANTS``, one small adapter per family) and the
independent second renderer of the tests (``tests/second_renderer.py``), whose physics
of the droplet's look Droplet never saw. Each family is run at several sizes and
densities (a *variant*). Every scene goes through file bytes (PNG, or 16-bit TIFF) and
``droplet_core.imaging.images.load_image``, as a user's file would.

Per variant, each classical detector (``bench.circle_detectors``: ``blob_log``, Hough
circles, Otsu + watershed) is tuned for F1 on one scene (``TUNE_SEED``) and scored on
others; Droplet runs the command line's own ``fit`` with its default settings, untuned,
after an untimed fit of the variant's tuning scene (which starts JAX, loads the encoder
and compiles the programs for that size, as the first of a series of similar images).

Scores (``droplet_core.detection.matching``: a true droplet is found by at most one detection within
max(1.5 px, r/2) of its centre), averaged over the scored scenes: F1, precision, recall,
median relative radius error, mean position bias dx, dy (found - true, px) and as a
fraction of the true radius, coverage of the 90 % intervals of x, y and radius (Droplet's
``sd_x``, ``sd_y``, ``sd_radius``), seconds per image. Droplet's table is scored as the app
shows it, without its doubtful candidates (``p_exists`` < 0.5). Out-of-focus droplets (truth
``in_focus`` False) count neither way: a detection of one is dropped, missing one costs
nothing. Bubbles count as droplets.

The real image ``../shared/data/dna_droplets_fluorescence.tif`` has no truth: it is scored
against an Otsu + watershed reference with parameters set and checked by eye
(``REAL_REFERENCE``; ``--write-reference`` draws it over the image); the classical
detectors there use the parameters tuned on the second renderer's fluorescence scene.
Droplets cut by the image border are scored on neither side there (``within_image``): the
reference sizes and centres only their visible part.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image, ImageDraw
from skimage import filters

from bench import circle_detectors
from droplet_core import use_compilation_cache
from droplet_core.detection.matching import match_droplets, match_pairs
from droplet_core.imaging.images import load_image, read_image_bytes
from droplet_core.intervals import interval_half_width
from droplet_core.measurements.counting import doubtful_mask
from droplet_core.service.cli import main as droplet_cli
from droplet_core.synthetic import scenes
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene
from tests import second_renderer

TUNE_SEED = 100
SCORED_SEEDS = (1, 2)
REAL_IMAGE = Path("../shared/data/dna_droplets_fluorescence.tif")
REFERENCE_PNG = Path("docs/fluorescence_reference.png")
# Otsu + watershed parameters for the real image, set by looking at the overlay
# (docs/fluorescence_reference.png): it circles the in-focus droplets a person sees.
REAL_RADIUS_RANGE = (12.0, 50.0)
REAL_REFERENCE = {"contrast": "bright", "smooth": 1.0, "threshold_factor": 1.3, "min_distance": 1.2, "fill_holes": True}
REAL_SHARPNESS = 0.45


@dataclass(frozen=True)
class Variant:
    """One family at one size and density.

    Attributes
    ----------
    renderer : ``"scenes"`` (``droplet_core.synthetic.scenes``) or ``"second"`` (the test renderer).
    family : the renderer's family name.
    label : size and density, for the table.
    options : keywords of the renderer (``SceneSettings`` fields, or ``second_renderer.render``'s).
    radius_min_px, radius_max_px : the radius range (given to the classical detectors).
    """

    renderer: str
    family: str
    label: str
    options: dict = field(hash=False)
    radius_min_px: float
    radius_max_px: float


@dataclass(frozen=True)
class Scene:
    """A rendered scene as a user's file: its bytes, the image Droplet loads, the truth."""

    data: bytes
    image: np.ndarray
    truth: pd.DataFrame


def second_variant(family: str, label: str, **options) -> Variant:
    size = second_renderer.FAMILY_SIZES[family]
    return Variant(
        "second",
        family,
        label,
        options,
        options.get("radius_min_px", size.radius_min_px),
        options.get("radius_max_px", size.radius_max_px),
    )


def scenes_settings(family: str, **options) -> SceneSettings:
    """``droplet_core.synthetic.scenes`` settings of ``family`` with ``options`` (``SceneSettings`` fields).

    The adapter to the generator's families: its preset (``family_settings``) where it has
    families, else its one (seed) kind of scene.
    """
    if hasattr(scenes, "family_settings"):
        return scenes.family_settings(family, **options)
    if family != "seed":
        raise ValueError(f"droplet_core.synthetic.scenes has no {family!r} family")
    return SceneSettings(**options)


def scenes_variant(family: str, label: str, **options) -> Variant:
    settings = scenes_settings(family, **options)
    return Variant("scenes", family, label, options, settings.radius_min_px, settings.radius_max_px)


def scenes_families() -> tuple[str, ...]:
    """The families ``droplet_core.synthetic.scenes`` draws."""
    return tuple(getattr(scenes, "FAMILIES", ("seed",)))


def variants(quick: bool) -> list[Variant]:
    """Every family of both renderers at its sizes and densities (one small scene each when ``quick``)."""
    ours = scenes_families()
    if quick:
        small = {"width_px": 256, "height_px": 256}
        quarter = {"width_px": 250, "height_px": 200}
        return [
            *(
                scenes_variant(
                    family, "250x200, preset / 4", **quarter, n_droplets=max(1, scenes_settings(family).n_droplets // 4)
                )
                for family in ours
            ),
            second_variant("seedlike", "250x200, r 1-9, 500", width_px=250, height_px=200, n_droplets=500),
            second_variant("fluorescence", "256^2, r 5-30, crowded", **small, radius_max_px=30.0),
            second_variant("brightfield", "320x256, r 3-40, sparse", width_px=320, height_px=256, radius_max_px=40.0),
            second_variant("phase", "256^2, r 4-30, crowded", **small, radius_max_px=30.0),
            second_variant("packed", "256^2, r 8-35, packed", **small),
        ]
    return [
        scenes_variant("seed", "500x400, 1500 droplets"),
        scenes_variant("seed", "500x400, 2500 droplets", n_droplets=2500),
        *(scenes_variant(family, "500x400, preset") for family in ours if family != "seed"),
        *(
            scenes_variant(family, "500x400, preset, sparse", n_droplets=scenes_settings(family).n_droplets // 3)
            for family in ours
            if family not in ("seed", "packed")
        ),
        second_variant("seedlike", "500x400, r 1-9, 2000"),
        second_variant("seedlike", "500x400, r 1-9, sparse", n_droplets=None, density="sparse"),
        second_variant("fluorescence", "512^2, r 5-45, crowded"),
        second_variant("fluorescence", "512^2, r 5-45, sparse", density="sparse"),
        second_variant("fluorescence", "512^2, r 5-45, packed", density="packed"),
        second_variant(
            "fluorescence",
            "1024^2, r 3-150, sparse",
            width_px=1024,
            height_px=1024,
            radius_min_px=3.0,
            radius_max_px=150.0,
            density="sparse",
        ),
        second_variant("brightfield", "640x512, r 3-70, sparse"),
        second_variant("brightfield", "640x512, r 3-70, crowded", density="crowded"),
        second_variant("phase", "512^2, r 4-40, crowded"),
        second_variant("phase", "512^2, r 4-40, crowded, DIC", contrast="dic"),
        second_variant("phase", "512^2, r 2-20, sparse", radius_min_px=2.0, radius_max_px=20.0, density="sparse"),
        second_variant("packed", "512^2, r 8-35"),
        second_variant("packed", "768^2, r 15-70", width_px=768, height_px=768, radius_min_px=15.0, radius_max_px=70.0),
    ]


def render_scene(variant: Variant, seed: int) -> Scene:
    """Scene ``seed`` of ``variant``, through file bytes and Droplet's loader."""
    if variant.renderer == "scenes":
        settings = scenes_settings(variant.family, **variant.options)
        if variant.family == "fluorescence":  # 16-bit, as real fluorescence is
            image, truth = scenes.make_scene_uint16(seed, settings)
            data = second_renderer.encode(image)
        else:
            rgb, truth = make_scene(seed, settings)
            data = encode_png(rgb)
    else:
        image, truth = second_renderer.render(variant.family, seed, **variant.options)
        data = second_renderer.encode(image)
    return Scene(data, load_image(data), truth)


# --- scoring -----------------------------------------------------------------------------


def score(truth: pd.DataFrame, found: pd.DataFrame) -> dict[str, float]:
    """Detection scores of ``found`` against ``truth`` (columns ``x``, ``y``, ``radius``, px).

    Droplet's table is scored as the app shows it: its doubtful candidates (``p_exists``
    below one half, unticked as "probably not droplets") are left out. Truth rows with
    ``in_focus`` False count neither way: detections matched to them are dropped before
    scoring. Bias and coverage are over matched pairs; coverage needs the ``sd_x``,
    ``sd_y``, ``sd_radius`` columns (NaN without them).
    """
    found = found[~doubtful_mask(found)].reset_index(drop=True)
    if "in_focus" in truth.columns and not truth["in_focus"].all():
        true_index, found_index = match_pairs(truth, found)
        ignored = found_index[~truth["in_focus"].to_numpy()[true_index]]
        found = found.drop(index=ignored).reset_index(drop=True)
        truth = truth[truth["in_focus"]].reset_index(drop=True)
    match = match_droplets(truth, found)
    true_index, found_index = match_pairs(truth, found)
    true, fit = truth.iloc[true_index], found.iloc[found_index]
    row = {
        "f1": match.f1,
        "precision": match.precision,
        "recall": match.recall,
        "radius_error": match.median_radius_error,
        "n_true": match.n_true,
        "n_found": match.n_found,
    }
    r = true["radius"].to_numpy(float)
    for c in ("x", "y"):
        error = fit[c].to_numpy(float) - true[c].to_numpy(float)
        row[f"d{c}"] = float(error.mean()) if len(error) else math.nan
        row[f"d{c}_r"] = float((error / r).mean()) if len(error) else math.nan
    for c in ("x", "y", "radius"):
        if f"sd_{c}" in fit.columns and len(fit):
            error = np.abs(fit[c].to_numpy(float) - true[c].to_numpy(float))
            row[f"cover_{c}"] = float(np.mean(error <= interval_half_width(fit[f"sd_{c}"].to_numpy(float), 0.9)))
        else:
            row[f"cover_{c}"] = math.nan
    return row


def score_detector(detect: Callable[[Scene], pd.DataFrame], scenes: list[Scene]) -> dict[str, float]:
    """Mean of ``score`` over ``scenes`` (NaNs skipped), with seconds per image."""
    rows = []
    for scene in scenes:
        start = time.perf_counter()
        found = detect(scene)
        seconds = time.perf_counter() - start
        rows.append({**score(scene.truth, found), "seconds": seconds})
    return pd.DataFrame(rows).mean(skipna=True).to_dict()


def tuned_classical(variant: Variant, tuning: Scene) -> dict[str, dict]:
    """Each classical detector's parameters tuned for F1 on ``tuning``."""
    tuned = {}
    for method in circle_detectors.METHODS:
        params, _, _ = circle_detectors.tune(
            method,
            tuning.image,
            variant.radius_min_px,
            variant.radius_max_px,
            lambda found: score(tuning.truth, found)["f1"],
        )
        tuned[method] = params
    return tuned


def classical_detector(method: str, params: dict, radius_min_px: float, radius_max_px: float):
    detect = circle_detectors.make_detector(method, params, radius_min_px, radius_max_px)
    return lambda scene: detect(scene.image)


# --- Droplet --------------------------------------------------------------------------


def droplet_fit(scene: Scene) -> pd.DataFrame:
    """The droplet table of ``python -m droplet_core fit IMAGE`` with default settings."""
    with tempfile.TemporaryDirectory(prefix="droplet-generality-") as folder:
        suffix = ".tif" if scene.data[:2] in (b"II", b"MM") else ".png"
        path = Path(folder) / f"scene{suffix}"
        path.write_bytes(scene.data)
        out = Path(folder) / "fit"
        with contextlib.redirect_stdout(io.StringIO()):
            status = droplet_cli(["fit", str(path), "--out", str(out), "--quiet"])
        if status != 0:
            raise RuntimeError(f"droplet_core fit exited with {status}")
        return pd.read_csv(out / "droplets.csv")


# --- the real image -----------------------------------------------------------------------


def real_reference(image: np.ndarray) -> pd.DataFrame:
    """The by-eye-checked Otsu + watershed droplets of the real fluorescence image.

    Blurred blobs (droplets out of the focal plane) also pass the threshold; like a
    person, the reference leaves out those whose outline is not sharp: the 75th
    percentile of the gradient magnitude within 3 px of the circle (a percentile, as
    parts of an outline may touch a neighbour or the border) below ``REAL_SHARPNESS``
    times the median droplet's.
    """
    found = circle_detectors.make_detector("otsu_watershed", REAL_REFERENCE, *REAL_RADIUS_RANGE)(image)
    gradient = filters.sobel(filters.gaussian(circle_detectors.contrast_image(image, "bright"), 2.0))
    sharpness = []
    for x, y, r in found[["x", "y", "radius"]].to_numpy():
        reach = int(np.ceil(r + 3))
        r0, r1 = max(int(y) - reach, 0), min(int(y) + reach + 1, gradient.shape[0])
        c0, c1 = max(int(x) - reach, 0), min(int(x) + reach + 1, gradient.shape[1])
        rows, cols = np.mgrid[r0:r1, c0:c1]
        sharpness.append(np.percentile(gradient[r0:r1, c0:c1][np.abs(np.hypot(cols - x, rows - y) - r) < 3], 75))
    return found[np.asarray(sharpness) >= REAL_SHARPNESS * np.median(sharpness)].reset_index(drop=True)


def draw_overlay(image: np.ndarray, circles: pd.DataFrame, path: Path) -> None:
    """``image`` contrast-stretched (0.5-99.8 percentiles) with ``circles`` drawn, as a PNG."""
    grey = image.mean(axis=2)
    low, high = np.percentile(grey, [0.5, 99.8])
    stretched = np.clip((grey - low) / (high - low), 0.0, 1.0)
    canvas = Image.fromarray(np.round(stretched * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for row in circles.itertuples():
        draw.ellipse(
            [row.x - row.radius, row.y - row.radius, row.x + row.radius, row.y + row.radius],
            outline=(255, 60, 60),
            width=2,
        )
        draw.point((row.x, row.y), fill=(255, 200, 0))
    draw.text((6, 6), f"Otsu + watershed reference: {len(circles)} droplets", fill=(255, 255, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 32-colour palette: the noisy image then takes a third of the space of full colour.
    canvas.quantize(32).save(path, optimize=True)


# --- table -------------------------------------------------------------------------------

COLUMNS = (
    ("F1", "f1", 5, ".3f"),
    ("P", "precision", 5, ".2f"),
    ("R", "recall", 5, ".2f"),
    ("r err", "radius_error", 6, ".3f"),
    ("dx px", "dx", 6, "+.2f"),
    ("dy px", "dy", 6, "+.2f"),
    ("dx/r", "dx_r", 6, "+.3f"),
    ("dy/r", "dy_r", 6, "+.3f"),
    ("cov x", "cover_x", 5, ".2f"),
    ("cov y", "cover_y", 5, ".2f"),
    ("cov r", "cover_radius", 5, ".2f"),
    ("s/img", "seconds", 6, ".2f"),
    ("true", "n_true", 5, ".0f"),
    ("found", "n_found", 5, ".0f"),
)


def print_header() -> None:
    cells = " ".join(f"{title:>{width}}" for title, _, width, _ in COLUMNS)
    print(f"{'renderer':<8} {'family':<12} {'scene':<32} {'method':<15} {cells}")


def print_row(renderer: str, family: str, label: str, method: str, row: dict) -> None:
    cells = []
    for _, key, width, spec in COLUMNS:
        value = row.get(key, math.nan)
        cells.append(
            f"{'-':>{width}}"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else format(value, spec).rjust(width)
        )
    print(f"{renderer:<8} {family:<12} {label:<32} {method:<15} {' '.join(cells)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small scene per family, one scored seed")
    parser.add_argument("--families", nargs="+", help="only these families (and 'real' for the real image)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help=f"scenes to score on (default {list(SCORED_SEEDS)}; quick: the first)"
    )
    parser.add_argument("--skip-droplet", action="store_true", help="score only the classical detectors")
    parser.add_argument(
        "--write-reference", action="store_true", help=f"draw the real image's reference to {REFERENCE_PNG}"
    )
    args = parser.parse_args(argv)
    use_compilation_cache(tempfile.mkdtemp(prefix="droplet-bench-generality-"))
    # A fresh fit store: a scene fitted in an earlier run would be answered from the store.
    os.environ["DROPLET_STORE"] = tempfile.mkdtemp(prefix="droplet-bench-generality-store-")
    chosen = [v for v in variants(args.quick) if not args.families or v.family in args.families]
    seeds = args.seeds or (SCORED_SEEDS[:1] if args.quick else SCORED_SEEDS)
    if TUNE_SEED in seeds:
        parser.error("score on scenes other than the tuning scene")
    print(
        f"Tuned on scene {TUNE_SEED} of each row's kind, scored on scenes {list(seeds)}; "
        "dx, dy: mean of found - true over matched droplets; cov: 90 % interval coverage."
    )
    print_header()
    if not args.families or "real" in args.families:
        score_real_image(args.skip_droplet, args.write_reference)
    for variant in chosen:
        tuning = render_scene(variant, TUNE_SEED)
        scenes = [render_scene(variant, seed) for seed in seeds]
        for method, params in tuned_classical(variant, tuning).items():
            row = score_detector(
                classical_detector(method, params, variant.radius_min_px, variant.radius_max_px), scenes
            )
            print_row(variant.renderer, variant.family, variant.label, method, row)
        if not args.skip_droplet:
            droplet_fit(tuning)  # untimed: compiles this size's programs, as for a series of similar images
            print_row(variant.renderer, variant.family, variant.label, "Droplet", score_detector(droplet_fit, scenes))


def score_real_image(skip_droplet: bool, write_reference: bool) -> None:
    """Print the rows of the real image: each method against the by-eye-checked reference.

    The classical detectors use the parameters tuned on the second renderer's default
    fluorescence scene. Droplet's timed fit follows an untimed fit of the mirrored image
    (other bytes, so not answered from the store; the same size and droplets, so the same
    compiled programs).
    """
    data = read_image_bytes(REAL_IMAGE)
    image = load_image(data)
    reference = real_reference(image)
    real = Scene(data, image, reference.assign(in_focus=within_image(reference, image.shape)))
    if write_reference:
        draw_overlay(image, reference, REFERENCE_PNG)
    label = f"{REAL_IMAGE.name[:18]} vs ref ({int(real.truth['in_focus'].sum())})"
    variant = second_variant("fluorescence", "tuning")
    for method, params in tuned_classical(variant, render_scene(variant, TUNE_SEED)).items():
        print_row(
            "real",
            "fluorescence",
            label,
            method,
            score_detector(uncut(classical_detector(method, params, *REAL_RADIUS_RANGE)), [real]),
        )
    if not skip_droplet:
        mirrored = second_renderer.encode(np.ascontiguousarray(tifffile.imread(io.BytesIO(data))[:, ::-1]))
        droplet_fit(Scene(mirrored, image[:, ::-1], reference))
        print_row("real", "fluorescence", label, "Droplet", score_detector(uncut(droplet_fit), [real]))


def within_image(circles: pd.DataFrame, shape: tuple) -> np.ndarray:
    """``(n,)`` whether each circle (``x``, ``y``, ``radius``, px) lies wholly inside an image of ``shape``.

    A droplet cut by the border is scored on neither side on the real image: the reference
    (watershed regions) sizes and centres only its visible part, the fits its whole outline.
    """
    x, y, r = (circles[c].to_numpy(float) for c in ("x", "y", "radius"))
    return (x - r >= 0) & (y - r >= 0) & (x + r <= shape[1] - 1) & (y + r <= shape[0] - 1)


def uncut(detect: Callable[[Scene], pd.DataFrame]) -> Callable[[Scene], pd.DataFrame]:
    """``detect`` without the droplets it finds cut by the image border (``within_image``)."""

    def detect_uncut(scene: Scene) -> pd.DataFrame:
        found = detect(scene)
        return found[within_image(found, scene.image.shape)].reset_index(drop=True)

    return detect_uncut


if __name__ == "__main__":
    main()
