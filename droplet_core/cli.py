"""Command line: ``python -m droplet_core fit IMAGE ...`` and ``python -m droplet_core scene ...``.

Bad input ends with exit status 2 and one line on stderr saying what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from droplet_core.channels import CHANNELS
from droplet_core.images import ImageError
from droplet_core.settings import MODEL_NAMES, FitSettings, default_channel

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m droplet_core", description="Probabilistic droplet fitting.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser("fit", help="fit a model to an image and write droplets.csv, reconstruction.png, fit.json")
    defaults = FitSettings()
    fit.add_argument("image", type=Path)
    fit.add_argument("--model", choices=MODEL_NAMES, default=defaults.model)
    fit.add_argument("--channel", choices=CHANNELS, help="default: grey (rgb for neural)")
    fit.add_argument("--out", type=Path, required=True, help="output folder")
    fit.add_argument("--downscale", type=_whole_or_auto("downscale"), default=defaults.downscale, help="integer factor or 'auto'")
    fit.add_argument("--droplets", type=_whole_or_auto("the droplet count"), default=defaults.droplets, help="maximum count or 'auto'")
    fit.add_argument("--steps", type=int, default=defaults.steps)
    fit.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    fit.add_argument("--seed", type=int, default=defaults.seed)
    fit.add_argument("--mask-types", type=int, default=defaults.mask_types)
    fit.add_argument("--mask-size", type=int, default=defaults.mask_size)
    fit.add_argument("--crop", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    fit.add_argument(
        "--appearance-from",
        metavar="FIT_ID_OR_DIR",
        help="hold the learned appearance of an earlier fit fixed (its id, or a folder with its fit.json)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress on stderr")

    scene = commands.add_parser("scene", help="write a synthetic scene.png and its truth.csv")
    scene.add_argument("--seed", type=int, default=0)
    scene.add_argument("--out", type=Path, required=True)
    return parser


def _stored_fit(reference: str, store):
    """The stored fit named by an id, or by a folder holding its ``fit.json``."""
    import json

    from droplet_core.store import is_valid_fit_id

    folder = Path(reference)
    if not is_valid_fit_id(reference) and (folder / "fit.json").is_file():
        reference = str(json.loads((folder / "fit.json").read_text()).get("fit_id", ""))
    return store.load(reference)


def _fit(args) -> int:
    from droplet_core.fit import run_fit
    from droplet_core.images import load_image, read_image_bytes, sha256_bytes
    from droplet_core.results import write_outputs
    from droplet_core.store import FitStore, fit_key

    store = FitStore()
    source = _stored_fit(args.appearance_from, store) if args.appearance_from else None
    settings = FitSettings(
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
        appearance_from=source.fit_id if source is not None else None,
    )
    data = read_image_bytes(args.image)
    image = load_image(data)
    image_sha256 = sha256_bytes(data)

    def report(progress):
        print(
            f"step {progress.step}/{progress.total_steps}  loss {progress.loss:.1f}  "
            f"droplets {progress.droplets}  {progress.elapsed_s:.1f} s",
            file=sys.stderr,
        )

    key = fit_key(image_sha256, settings)
    if store.has(key):
        result = store.load(key)
        print(f"identical fit found in the store ({store.root}); not refitting", file=sys.stderr)
    else:
        result = run_fit(
            image,
            settings,
            image_sha256=image_sha256,
            progress=None if args.quiet else report,
            appearance_source=source,
        )
        store.save(result)
    write_outputs(result, args.out)
    info = result.info
    print(
        f"fit {result.fit_id}: {info['droplet_count']} droplets, "
        f"RMSE {', '.join(f'{v:.4f}' for v in info['rmse'])}, "
        f"{info['timings']['total_s']:.1f} s on {info['device']} -> {args.out}"
    )
    return 0


def _scene(args) -> int:
    from droplet_core.scenes import write_scene

    write_scene(args.seed, args.out)
    print(f"scene {args.seed} -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from droplet_core.fit import FitError

    try:
        return _fit(args) if args.command == "fit" else _scene(args)
    except (ImageError, FitError, ValueError, OSError, LookupError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
