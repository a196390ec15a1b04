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
    fit.add_argument("--quiet", action="store_true", help="no progress on stderr")

    scene = commands.add_parser("scene", help="write a synthetic scene.png and its truth.csv")
    scene.add_argument("--seed", type=int, default=0)
    scene.add_argument("--out", type=Path, required=True)
    return parser


def _fit(args) -> int:
    from droplet_core.fit import run_fit
    from droplet_core.images import load_image, read_image_bytes, sha256_bytes
    from droplet_core.results import write_outputs

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
    )
    data = read_image_bytes(args.image)
    image = load_image(data)

    def report(progress):
        print(
            f"step {progress.step}/{progress.total_steps}  loss {progress.loss:.1f}  "
            f"droplets {progress.droplets}  {progress.elapsed_s:.1f} s",
            file=sys.stderr,
        )

    result = run_fit(image, settings, image_sha256=sha256_bytes(data), progress=None if args.quiet else report)
    write_outputs(result, args.out)
    info = result.info
    print(
        f"{info['droplet_count']} droplets, RMSE {', '.join(f'{v:.4f}' for v in info['rmse'])}, "
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
    except (ImageError, FitError, ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
