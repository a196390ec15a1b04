"""Command line: ``fit IMAGE ...``, ``batch IMAGES ...``, ``track STACK ...``, ``stats FIT ...``, ``scene ...``, ``detect IMAGE ...``
and ``train-encoder ...``.

Bad input ends with exit status 2 and one line on stderr saying what is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from droplet_core.imaging.channels import CHANNELS
from droplet_core.imaging.images import ImageError
from droplet_core.settings import INITIALIZERS, FitSettings, default_channel
from droplet_core.variants import variant_names

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _whole_or_auto(what: str):
    """argparse type: a whole number >= 1, or 'auto' (stored as 0)."""

    def parse(text: str) -> int:
        if text == "auto":
            return 0
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1 (or 'auto')")
        return value

    return parse


def _pixel_size(text: str) -> float:
    """argparse type: a pixel size with a length unit -> micrometres."""
    from droplet_core.imaging.units import parse_pixel_size

    try:
        return parse_pixel_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    """The fit settings options shared by ``fit`` and ``batch``."""
    defaults = FitSettings()
    parser.add_argument("--model", choices=variant_names(), default=defaults.model)
    parser.add_argument("--channel", choices=CHANNELS, help="default: grey (rgb for neural)")
    parser.add_argument(
        "--downscale", type=_whole_or_auto("downscale"), default=defaults.downscale, help="integer factor or 'auto'"
    )
    parser.add_argument(
        "--droplets",
        type=_whole_or_auto("the droplet count"),
        default=defaults.droplets,
        help="maximum count or 'auto'",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help="SVI steps; with --appearance-from, the most Levenberg-Marquardt iterations",
    )
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--mask-types", type=int, default=defaults.mask_types)
    parser.add_argument("--mask-size", type=int, default=defaults.mask_size)
    parser.add_argument("--crop", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    parser.add_argument(
        "--initializer",
        choices=INITIALIZERS,
        default=defaults.initializer,
        help="where droplets start: 'encoder', the trained detector network (default), or 'log', "
        "Laplacian-of-Gaussian candidates",
    )
    parser.add_argument(
        "--pixel-size",
        type=_pixel_size,
        metavar="SIZE",
        help="pixel size for the µm columns and statistics, e.g. 0.65um or 650nm (default: from the file, else pixels)",
    )
    parser.add_argument(
        "--appearance-from",
        metavar="FIT_ID_OR_DIR",
        help="hold the learned appearance of an earlier fit fixed (its id, or a folder with its fit.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m droplet_core", description="Probabilistic droplet fitting.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser(
        "fit", help="fit a model to an image and write droplets.csv, reconstruction.png, fit.json"
    )
    fit.add_argument("image", type=Path)
    fit.add_argument("--out", type=Path, required=True, help="output folder")
    _add_fit_options(fit)
    fit.add_argument("--quiet", action="store_true", help="no progress on stderr")

    batch = commands.add_parser(
        "batch", help="fit many images with the same settings on Dask; write combined tables and each image's outputs"
    )
    batch.add_argument("images", nargs="+", metavar="IMAGES", help="files or glob patterns (quote them: 'dir/*.tif')")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    _add_fit_options(batch)
    batch.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler; default: a local cluster")
    batch.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    batch.add_argument("--quiet", action="store_true", help="no progress on stderr")

    track = commands.add_parser(
        "track", help="fit every frame of a time-lapse stack, follow the droplets: tracks.csv, events.csv, frames.csv"
    )
    track.add_argument(
        "stacks",
        type=Path,
        nargs="+",
        metavar="STACK",
        help="multi-page TIFF / OME-TIFF, video, zip of images, or a folder of images; several run on Dask",
    )
    track.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per stack for several)")
    _add_fit_options(track)
    track.add_argument(
        "--frame-interval",
        metavar="INTERVAL",
        help="time between frames, e.g. 2s or 500ms (default: from the file, else times are frame numbers)",
    )
    track.add_argument("--first-frame", type=int, default=1, help="frame fitted in full first (1-based, default 1)")
    track.add_argument(
        "--search-range",
        type=float,
        default=0.0,
        help="farthest move of a droplet between frames, px, drift removed (default: from the radii)",
    )
    track.add_argument(
        "--chunk-frames",
        type=int,
        help="fit parts of this many frames side by side on Dask, each starting with a full fit",
    )
    track.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler; default: a local cluster")
    track.add_argument("--workers", type=int, help="run on a local Dask cluster of this many worker processes")
    track.add_argument("--quiet", action="store_true", help="no progress on stderr")

    scene = commands.add_parser("scene", help="write a synthetic scene.png and its truth.csv")
    scene.add_argument("--seed", type=int, default=0)
    scene.add_argument("--out", type=Path, required=True)
    scene.add_argument("--family", default="seed", help="seed, fluorescence, brightfield, phase or packed")
    scene.add_argument("--width", type=int, help="pixels (default: the family's preset)")
    scene.add_argument("--height", type=int, help="pixels (default: the family's preset)")
    scene.add_argument("--droplets", type=int, help="droplets requested (default: the family's preset)")
    scene.add_argument("--bit-depth", type=int, default=8, choices=(8, 16), help="16 writes scene.tif")

    detect = commands.add_parser(
        "detect", help="instant detection by the trained detector network: droplets.csv, overlay.png, fit.json"
    )
    detect.add_argument("image", type=Path)
    detect.add_argument("--out", type=Path, required=True, help="output folder")
    detect.add_argument("--channel", choices=CHANNELS, default="rgb", help="default: rgb")
    detect.add_argument(
        "--downscale",
        type=_whole_or_auto("downscale"),
        default=0,
        help="finest pyramid level (integer factor; default 'auto': full resolution)",
    )
    detect.add_argument("--threshold", type=float, default=0.5, help="presence probability a droplet needs")
    detect.add_argument("--min-radius", type=float, default=0.0, help="smallest radius kept, px of the image")

    stats = commands.add_parser("stats", help="size statistics with 90 %% intervals of a stored fit (no refitting)")
    stats.add_argument("fit", metavar="FIT_ID_OR_DIR", help="a fit id in the store, or a fit's output folder")
    stats.add_argument("--pixel-size", type=_pixel_size, metavar="SIZE", help="e.g. 0.65um (default: as recorded)")
    # droplet_core.measurements.size_statistics.BORDER_HANDLING, spelled out: that module loads pandas,
    # which the other commands do not need.
    stats.add_argument(
        "--border",
        choices=("miles-lantuejoul", "keep-all"),
        default="miles-lantuejoul",
        help="droplets cut by the image edge: Miles-Lantuéjoul correction (default) or keep all",
    )
    stats.add_argument("--csv", type=Path, help="also write the table to this CSV file")

    train = commands.add_parser("train-encoder", help="train the detector network on synthetic scenes")
    train.add_argument("--out", type=Path, required=True, help="folder for the weights, training.json, curve")
    train.add_argument("--minutes", type=float, default=25.0, help="training time budget (default 25)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, default=0, help="stop after this many steps (default: time only)")
    train.add_argument("--learning-rate", type=float, default=3e-3, help="peak Adam learning rate (default 0.003)")
    train.add_argument("--init-weights", default="", metavar="DIR", help="fine-tune these saved weights")
    train.add_argument(
        "--coarse-share", type=float, default=0.0, help="share of scenes drawn as a coarse pyramid level sees them"
    )
    train.add_argument("--overlap-share", type=float, default=0.0, help="share of fluorescence scenes that overlap")
    return parser


def _stored_fit(reference: str, store):
    """The stored fit named by an id, or by a folder holding its ``fit.json``."""
    import json

    from droplet_core.fit_ids import is_valid_fit_id

    folder = Path(reference)
    if not is_valid_fit_id(reference) and (folder / "fit.json").is_file():
        reference = str(json.loads((folder / "fit.json").read_text()).get("fit_id", ""))
    return store.load(reference)


def _settings_from_args(args, appearance_source) -> FitSettings:
    """The ``FitSettings`` of the fit options, reusing ``appearance_source``'s look if given."""
    return FitSettings(
        model=args.model,
        channel=args.channel or default_channel(args.model),
        downscale=args.downscale,
        droplets=args.droplets,
        steps=args.steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        mask_types=args.mask_types,
        mask_size=args.mask_size,
        crop=tuple(args.crop) if args.crop else None,
        appearance_from=appearance_source.fit_id if appearance_source is not None else None,
        initializer=args.initializer,
    )


def _fit(args) -> int:
    from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes
    from droplet_core.imaging.units import resolve_pixel_size
    from droplet_core.measurements.readout import stored_pixel_size, write_fit_outputs
    from droplet_core.service.requests import load_or_fit
    from droplet_core.service.store import FitStore

    store = FitStore()
    source = _stored_fit(args.appearance_from, store) if args.appearance_from else None
    settings = _settings_from_args(args, source)
    data = read_image_bytes(args.image)
    image = load_image(data)

    # A fit with a reused appearance runs Levenberg-Marquardt iterations and stops once converged.
    unit = "iteration" if settings.appearance_from else "step"

    def report(progress):
        print(
            f"{unit} {progress.step}/{progress.total_steps}  loss {progress.loss:.1f}  "
            f"droplets {progress.droplets}  {progress.elapsed_s:.1f} s",
            file=sys.stderr,
        )

    result, from_store = load_or_fit(
        image,
        sha256_bytes(data),
        settings,
        store,
        image_bytes=data,
        appearance_source=source,
        progress=None if args.quiet else report,
    )
    if from_store:
        print(f"identical fit found in the store ({store.root}); not refitting", file=sys.stderr)
    pixel_size = resolve_pixel_size(stored_pixel_size({}, data), args.pixel_size)
    write_fit_outputs(result, args.out, pixel_size)
    fit = result.report
    low, high = (fit.count.low, fit.count.high) if fit.count else ("?", "?")
    print(
        f"fit {result.fit_id}: {fit.count.count if fit.count else '?'} droplets (90 % interval {low}-{high}), "
        f"RMSE {', '.join(f'{v:.4f}' for v in fit.rmse)}, "
        f"{fit.timings.total_s:.1f} s on {fit.device}; pixel size {pixel_size.describe()} -> {args.out}"
    )
    if fit.downscale_choice:
        print(f"downscale {fit.downscale}x, chosen from the droplets' size: {fit.downscale_choice['reason']}")
    if fit.verdict is not None:
        advice = f" {' '.join(fit.verdict.advice)}" if fit.verdict.advice else ""
        print(f"fit quality: {fit.verdict.quality}: {fit.verdict.headline}{advice}")
    return 0


def _batch(args) -> int:
    from droplet_core.service.batch import (
        FAILED,
        dask_executor,
        find_images,
        run_batch,
        write_batch_outputs,
    )
    from droplet_core.service.store import FitStore

    images = find_images(args.images)
    if not images:
        raise ImageError(f"no files match {' '.join(args.images)}")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    store = FitStore()
    source = _stored_fit(args.appearance_from, store) if args.appearance_from else None
    settings = _settings_from_args(args, source)

    def report(outcome, finished, total):
        if outcome.status == FAILED:
            what = f"failed: {outcome.error}"
        else:
            what = f"{outcome.status}, {outcome.droplet_count} droplets, {outcome.seconds:.1f} s"
        print(f"[{finished}/{total}] {outcome.image}: {what}", file=sys.stderr)

    with dask_executor(args.scheduler, args.workers) as executor:
        outcomes = run_batch(
            images,
            settings,
            executor,
            store.root,
            on_outcome=None if args.quiet else report,
            pixel_size_um=args.pixel_size,
        )
    write_batch_outputs(outcomes, store, args.out)
    fitted = sum(outcome.succeeded for outcome in outcomes)
    if not fitted:
        raise ImageError(f"none of the {len(outcomes)} images could be fitted; reasons in {args.out / 'summary.csv'}")
    print(f"batch: {fitted} of {len(outcomes)} images fitted -> {args.out}")
    return 0


def _track(args) -> int:
    from droplet_core.imaging.stacks import parse_frame_interval, read_stack_path
    from droplet_core.service.store import FitStore
    from droplet_core.service.timelapse import (
        TimelapseSettings,
        analyse_stack,
        fit_stack,
        write_tables,
    )

    if args.appearance_from:
        raise ValueError("track learns the appearance on its first frame; --appearance-from is not used here")
    interval = parse_frame_interval(args.frame_interval) if args.frame_interval else None
    if args.search_range < 0:
        raise ValueError("--search-range must not be negative")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    settings = TimelapseSettings(
        fit=_settings_from_args(args, None),
        first_frame=args.first_frame - 1,
        search_range_px=args.search_range,
        frame_interval_s=interval,
    )
    store = FitStore()
    if len(args.stacks) > 1 or args.chunk_frames or args.workers or args.scheduler:
        return _track_on_dask(args, settings, store)
    stack = read_stack_path(args.stacks[0])
    for problem in stack.problems:
        print(f"warning: {problem}", file=sys.stderr)

    def report(done, total, frame):
        where = "from the store" if frame.from_store else f"{frame.seconds:.1f} s"
        print(f"[{done}/{total}] frame {frame.frame + 1}: {frame.kind} fit, {where}", file=sys.stderr)

    fits = fit_stack(stack, settings, store, progress=None if args.quiet else report)
    tables = analyse_stack(stack, settings, fits, store)
    write_tables(tables, args.out)
    print(_track_summary(stack.n_frames, tables, args.out))
    return 0


def _track_on_dask(args, settings, store) -> int:
    from droplet_core.service.batch import dask_executor
    from droplet_core.service.stack_batch import output_folders, track_stacks
    from droplet_core.service.timelapse import write_tables

    def report(done, total, path):
        print(f"[{done}/{total}] part of {path} fitted", file=sys.stderr)

    with dask_executor(args.scheduler, args.workers or 2) as executor:
        outcomes = track_stacks(
            args.stacks,
            settings,
            executor,
            store,
            chunk_frames=args.chunk_frames,
            progress=None if args.quiet else report,
        )
    folders = [args.out] if len(args.stacks) == 1 else output_folders(args.stacks, args.out)
    for outcome, folder in zip(outcomes, folders):
        if outcome.error is not None:
            print(f"warning: {outcome.path}: {outcome.error}", file=sys.stderr)
            continue
        write_tables(outcome.tables, folder)
        print(_track_summary(outcome.n_frames, outcome.tables, folder, outcome.parts))
    if all(outcome.error is not None for outcome in outcomes):
        raise ImageError(f"none of the {len(outcomes)} stacks could be fitted: {outcomes[0].error}")
    return 0


def _track_summary(n_frames: int, tables, out: Path, parts: int = 1) -> str:
    kinds = tables.events["kind"].value_counts()
    in_parts = f" in {parts} parts" if parts > 1 else ""
    return (
        f"track: {n_frames} frames{in_parts}, {tables.tracks['track'].nunique()} tracks, "
        f"{int(kinds.get('coalescence', 0))} coalescences, {len(tables.events)} events -> {out}"
    )


def _stats(args) -> int:
    import json

    import pandas as pd

    from droplet_core.fit_ids import is_valid_fit_id
    from droplet_core.imaging.units import resolve_pixel_size
    from droplet_core.measurements.readout import fit_statistics, stored_pixel_size
    from droplet_core.measurements.size_statistics import StatisticsSettings
    from droplet_core.results import FitReport
    from droplet_core.service.store import FitStore, StoreError

    store = FitStore()
    folder = Path(args.fit)
    if not is_valid_fit_id(args.fit) and (folder / "fit.json").is_file():
        # An output folder: its own table and record (with the pixel size it was read out with).
        record = json.loads((folder / "fit.json").read_text())
        droplets = pd.read_csv(folder / "droplets.csv")
    elif is_valid_fit_id(args.fit):
        result = store.load(args.fit)
        record, droplets = result.report.to_dict(), result.droplets
    else:
        raise StoreError(f"{args.fit!r} is neither a fit id nor a folder with a fit.json")
    try:
        image_bytes = store.image_bytes(record["image_sha256"])
    except StoreError:
        image_bytes = None
    pixel_size = resolve_pixel_size(stored_pixel_size(record, image_bytes), args.pixel_size)
    report = FitReport.from_dict(record)
    table = fit_statistics(droplets, report, pixel_size, StatisticsSettings(border=args.border))
    print(f"fit {report.fit_id}: pixel size {pixel_size.describe()}; border: {args.border}")
    shown = table.assign(
        interval_90=[f"{low:.4g} - {high:.4g}" for low, high in zip(table["low_90"], table["high_90"])]
    )
    print(shown[["label", "value", "interval_90", "unit"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        table.to_csv(args.csv, index=False, float_format="%.6g")
    return 0


def _scene(args) -> int:
    from droplet_core.synthetic.scenes import family_settings, write_scene

    given = {"width_px": args.width, "height_px": args.height, "n_droplets": args.droplets}
    settings = family_settings(args.family, **{name: value for name, value in given.items() if value is not None})
    name = write_scene(args.seed, args.out, settings, args.bit_depth)
    print(f"scene {args.seed} ({args.family}) -> {args.out / name}")
    return 0


def _detect(args) -> int:
    # Lean imports: no numpyro or fit engine on this path (the whole command takes seconds).
    import json
    import time

    from droplet_core.detection import detector_net
    from droplet_core.detection.in_image import detect_droplets
    from droplet_core.imaging.display import stretch_contrast
    from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes
    from droplet_core.provenance import jax_device_description, library_versions

    started = time.perf_counter()
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError("--threshold must be a probability in [0, 1]")
    data = read_image_bytes(args.image)
    image = load_image(data)
    loaded = time.perf_counter()
    factor = args.downscale or 1
    found = detect_droplets(image, args.channel, args.threshold, factor)
    droplets = found[found["radius"] >= args.min_radius].sort_values(["y", "x"], kind="stable")
    computed = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    droplets.to_csv(args.out / "droplets.csv", index=False, float_format="%.6g")
    detector_net.overlay_png(stretch_contrast(image), droplets).save(args.out / "overlay.png")
    architecture, _ = detector_net.load_weights()
    info = {
        "method": "encoder",
        "image_sha256": sha256_bytes(data),
        "image_shape": list(image.shape),
        "settings": {
            "channel": args.channel,
            "downscale": factor,
            "threshold": args.threshold,
            "min_radius_px": args.min_radius,
        },
        "architecture": dataclasses.asdict(architecture),
        "weights": str(detector_net.WEIGHTS_DIR / detector_net.WEIGHTS_FILE),
        "droplet_count": len(droplets),
        "reconstruction": None,
        "note": "the detector network finds droplets but renders no reconstruction; overlay.png shows them",
        "device": jax_device_description(),
        "versions": library_versions(),
        "timings": {
            "load_s": round(loaded - started, 4),
            "detect_s": round(computed - loaded, 4),
            "total_s": round(time.perf_counter() - started, 4),
        },
        "timings_note": "detect_s includes loading the weights and compiling the network for each pyramid "
        "level's size, once per process",
    }
    (args.out / "fit.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    print(f"detect: {len(droplets)} droplets, {info['timings']['detect_s']:.2f} s -> {args.out}")
    return 0


def _train_encoder(args) -> int:
    from droplet_core.detection import detector_training

    if args.minutes <= 0 or args.steps < 0 or args.learning_rate <= 0:
        raise ValueError("--minutes and --learning-rate must be positive and --steps not negative")
    if not (0.0 <= args.coarse_share <= 1.0 and 0.0 <= args.overlap_share <= 1.0):
        raise ValueError("--coarse-share and --overlap-share are shares between 0 and 1")
    if args.init_weights and not (Path(args.init_weights) / detector_training.WEIGHTS_FILE).is_file():
        raise ValueError(f"--init-weights: no {detector_training.WEIGHTS_FILE} in {args.init_weights}")
    settings = detector_training.TrainSettings(
        minutes=args.minutes,
        seed=args.seed,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        init_weights=args.init_weights,
        coarse_share=args.coarse_share,
        overlap_share=args.overlap_share,
    )
    params, record = detector_training.train(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    detector_training.save_weights(params, record, args.out)
    last = record["curve"][-1] if record["curve"] else {}
    print(
        f"train-encoder: {record['steps']} steps, validation F1 {last.get('validation_f1_default', float('nan')):.3f} -> {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A malformed TIFF becomes one ImageError line (or loads); tifffile logs its complaints about it
    # (as warnings and errors), which would add lines.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    commands = {
        "fit": _fit,
        "batch": _batch,
        "track": _track,
        "scene": _scene,
        "stats": _stats,
        "detect": _detect,
        "train-encoder": _train_encoder,
    }
    try:
        return commands[args.command](args)
    # FitError is a ValueError; importing it here would load the fit engine for every command.
    except (ImageError, ValueError, OSError, LookupError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
