"""Time-lapse: seconds per frame, track quality and coalescence detection on synthetic movies.

Run from the repository root::

    python -m bench.timelapse                       # 2 scored movies of 10 frames (about 10 minutes on 2 cores)
    python -m bench.timelapse --frames 5 --movies 1 # quicker
    python -m bench.timelapse --frames 100 --seeds 8  # a 100-frame stack (about 10 minutes)
    python -m bench.timelapse --seeds 3 4           # unscored movies, for looking at what goes wrong
    python -m bench.timelapse --seeds 3 4 --reuse-iterations 3  # what fewer iterations a later frame cost
    JAX_PLATFORMS=cpu python -m bench.timelapse --frames 100 --seeds 8 --no-baseline  # Droplet alone, to time a device

Movies (``droplet_core.synthetic.stack_scenes``): the default 500x400 scene of about 1500 droplets
(radii 1-10 px), drifting (1.0, 0.5) px a frame, Brownian steps of 0.25 px, growth rates of
1 % sd (a growing droplet stops at its neighbours, a shrinking one dissolves below the
scene's smallest radius), droplets entering and leaving with the drift, and ``--coalescences`` scripted
coalescences of droplets of at least 4 px radius. Seeds 1.. are scored; seed 100 tunes the
baseline only, and nothing in ``droplet_core`` was tuned on any of them.

For each scored movie (this run, fresh store, so the first fit compiles as a user's first does):

- seconds of the first frame's full fit, and of every later frame (appearance reused,
  started from the previous frame's droplets), with their ratio to the first fit, and the
  median split of a later frame's seconds by step (``FrameFit.steps_s``);
- track quality (``score_tracks``): the fraction of true tracks followed without an identity
  switch (matched in all frames but at most one, always to one track), identity switches per
  1000 true droplet-frames, and coalescence precision and recall (within a frame and two
  largest radii);
- the reported uncertainty of the later frames (reuse fits): the fraction of true droplets
  (matched by ``droplet_core.detection.matching.match_pairs``) inside the 90 % intervals of x, y
  and radius (normal, from ``sd_x_px``, ``sd_y_px``, ``sd_radius_px``);
- the same for the baseline: trackpy ``locate`` tuned for F1 on frame 0 of the tuning movie
  (``bench.classical.tune_trackpy``), ``trackpy.link`` with its own ``compute_drift`` /
  ``subtract_drift`` and the same search range, and the same event rules
  (``droplet_core.service.timelapse.find_events``, with the same changes of the frames; without
  per-droplet sds, volumes must agree within the tolerance alone).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np
import pandas as pd
from scipy.stats import norm

from bench import classical
from droplet_core.detection.matching import match_pairs
from droplet_core.imaging.stacks import Stack
from droplet_core.inference.reuse_compiled import compiled_chosen
from droplet_core.provenance import jax_device_description
from droplet_core.service.store import FitStore
from droplet_core.service.timelapse import (
    TimelapseSettings,
    analyse_stack,
    field_shift_px,
    find_events,
    fit_stack,
    frame_changes,
    link_droplets,
)
from droplet_core.synthetic.scenes import SceneSettings
from droplet_core.synthetic.stack_scenes import (
    StackSceneSettings,
    make_stack,
    score_tracks,
)

TUNING_SEED = 100
COVERAGE_LEVEL = 0.9


def movie_settings(frames: int, coalescences: int) -> StackSceneSettings:
    return StackSceneSettings(
        scene=SceneSettings(), n_frames=frames, coalescences=coalescences, coalescing_radius_px=4.0
    )


def as_stack(frames_uint8: np.ndarray) -> Stack:
    frames = frames_uint8.astype(np.float32) / 255.0
    digests = tuple(hashlib.sha256(frame.tobytes()).hexdigest() for frame in frames)
    return Stack(frames, tuple(f"frame {i + 1}" for i in range(len(frames))), digests, None, ())


def baseline_tables(
    frames_uint8: np.ndarray, params: dict, search_range_px: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trackpy locate (tuned) + link on every frame: tracks and events."""
    detect = classical.make_detector("trackpy", params)
    rows = []
    for index, frame in enumerate(frames_uint8):
        found = detect(frame)
        rows.append(
            pd.DataFrame(
                {
                    "frame": index,
                    "x_px": found["x"],
                    "y_px": found["y"],
                    "radius_px": found["radius"],
                    "sd_x_px": np.nan,
                    "sd_y_px": np.nan,
                    "sd_radius_px": np.nan,
                    "p_exists": 1.0,
                }
            )
        )
    droplets = pd.concat(rows, ignore_index=True)
    tracks, _ = link_droplets(droplets, np.zeros((len(frames_uint8), 2)), search_range_px=search_range_px)
    # The same image evidence for events as Droplet's: each frame's change since the one before.
    frames = frames_uint8.astype(np.float32) / 255.0
    shifts = np.array([(0.0, 0.0)] + [field_shift_px(a, b) for a, b in zip(frames[:-1], frames[1:])])
    return tracks, find_events(tracks, len(frames), frames.shape[1:3], frame_change=frame_changes(frames, shifts))


def later_coverage(tracks: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Fraction of the true droplets of frames after the first, matched to a tracked droplet,
    whose x, y and radius lie in that droplet's central ``COVERAGE_LEVEL`` interval."""
    half_width = norm.ppf(0.5 + COVERAGE_LEVEL / 2.0)
    inside = {coordinate: [] for coordinate in ("x", "y", "radius")}
    for frame, true in truth[truth["frame"] > 0].groupby("frame"):
        found = tracks[tracks["frame"] == frame]
        true_index, found_index = match_pairs(
            true.reset_index(drop=True), found.rename(columns={"x_px": "x", "y_px": "y"}).reset_index(drop=True)
        )
        for coordinate, values in inside.items():
            error = found[f"{coordinate}_px"].to_numpy()[found_index] - true[coordinate].to_numpy()[true_index]
            values.append(np.abs(error) <= half_width * found[f"sd_{coordinate}_px"].to_numpy()[found_index])
    return {coordinate: float(np.mean(np.concatenate(values))) for coordinate, values in inside.items()}


def step_split(fits) -> str:
    """The median seconds of each step of the frames fitted (``FrameFit.steps_s``): registration,
    detection and the image's part of the verdict (taken while the frame before was fitted), the
    wait for them, the reuse fit, its uncertainty, table and verdict, and the rest (store, start)."""
    steps = pd.DataFrame([fit.steps_s for fit in fits if fit.steps_s])
    if steps.empty:
        return "none fitted"
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in steps.median().items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--movies", type=int, default=2, help="scored movies (seeds 1..N)")
    parser.add_argument("--seeds", type=int, nargs="+", help="these movies' seeds instead of 1..N")
    parser.add_argument("--coalescences", type=int, default=3)
    parser.add_argument(
        "--reuse-iterations",
        type=int,
        default=TimelapseSettings.reuse_iterations,
        help="most iterations of a later frame",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score trackpy beside Droplet (--no-baseline: Droplet alone, e.g. to time devices)",
    )
    args = parser.parse_args()
    settings = movie_settings(args.frames, args.coalescences)
    print(f"JAX device {jax_device_description()}, reuse step {'compiled' if compiled_chosen() else 'host'}")

    if args.baseline:
        tuning_frames, tuning_truth, _ = make_stack(TUNING_SEED, settings)
        started = time.perf_counter()
        params, tuning_f1, _ = classical.tune_trackpy(tuning_frames[0], tuning_truth[tuning_truth["frame"] == 0])
        print(
            f"baseline: trackpy locate tuned on frame 1 of movie {TUNING_SEED} (F1 {tuning_f1:.3f}, "
            f"{time.perf_counter() - started:.0f} s): {params}"
        )

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = FitStore(os.path.join(folder, "store"))
        for seed in args.seeds or range(1, args.movies + 1):
            frames, truth, true_events = make_stack(seed, settings)
            stack = as_stack(frames)
            timelapse = TimelapseSettings(reuse_iterations=args.reuse_iterations)
            fits = fit_stack(stack, timelapse, store)
            tables = analyse_stack(stack, timelapse, fits, store)
            first = fits[0].seconds
            later = np.array([fit.seconds for fit in fits[1:]])
            ours = score_tracks(tables.tracks, tables.events, truth, true_events)
            scores = [("droplet", ours)]
            if args.baseline:
                reach = max(2.0, 0.6 * float(np.median(tables.tracks["radius_px"])))
                base_tracks, base_events = baseline_tables(frames, params, reach)
                scores.append(("trackpy", score_tracks(base_tracks, base_events, truth, true_events)))
            kinds = [fit.kind for fit in fits]
            print(
                f"movie {seed}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]}, "
                f"{int(truth.groupby('frame').size().mean())} droplets a frame, {(true_events['kind'] == 'coalescence').sum()} coalescences; "
                f"first fit {first:.1f} s, later frames {later.mean():.2f} s median {np.median(later):.2f} s "
                f"(ratio {later.mean() / first:.2f}); fit kinds {dict(pd.Series(kinds).value_counts())}; "
                f"load average {os.getloadavg()[0]:.2f}"
            )
            print(f"movie {seed}: median seconds of a later frame by step: {step_split(fits[1:])}")
            coverage = later_coverage(tables.tracks, truth)
            print(
                f"movie {seed}: {COVERAGE_LEVEL:.0%} intervals of later frames hold the truth: "
                + ", ".join(f"{coordinate} {share:.3f}" for coordinate, share in coverage.items())
            )
            for name, score in scores:
                rows.append(
                    {
                        "movie": seed,
                        "method": name,
                        "followed": score.followed_fraction,
                        "switches_per_1000": score.switches_per_1000,
                        "coalescence_precision": score.coalescence_precision,
                        "coalescence_recall": score.coalescence_recall,
                        "s_per_frame_after_first": later.mean() if name == "droplet" else np.nan,
                        "first_frame_s": first if name == "droplet" else np.nan,
                    }
                )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        table.groupby("method")[
            ["followed", "switches_per_1000", "coalescence_precision", "coalescence_recall", "s_per_frame_after_first"]
        ]
        .mean()
        .to_string(float_format=lambda v: f"{v:.3f}")
    )


if __name__ == "__main__":
    main()
