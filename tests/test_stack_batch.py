"""Several or long time-lapse stacks side by side: parts of a stack fitted on different workers and
linked across their seams, a broken stack failing alone, and the ``track`` command on Dask."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import tifffile

from droplet_core.service import timelapse
from droplet_core.service.stack_batch import output_folders, stack_parts, track_stacks
from droplet_core.service.store import FitStore
from droplet_core.synthetic.stack_scenes import make_stack, score_tracks

REPO = Path(__file__).resolve().parents[1]


def test_a_stack_is_cut_into_parts_of_at_least_two_frames():
    assert stack_parts(8, None) == [(0, 8)]
    assert stack_parts(8, 4) == [(0, 4), (4, 8)]
    assert stack_parts(9, 4) == [(0, 4), (4, 9)]  # a last part of one frame joins the one before
    assert stack_parts(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="at least 2 frames"):
        stack_parts(8, 1)


def test_output_folders_are_named_after_the_stacks_and_unique(tmp_path):
    folders = output_folders(["a/movie.tif", "b/movie.tif", "c/frames"], tmp_path)
    assert [f.name for f in folders] == ["movie", "movie-2", "frames"]


@pytest.fixture(scope="module")
def movie_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stacks")
    frames, truth, events = make_stack(0)
    good = folder / "movie.tif"
    tifffile.imwrite(good, frames, photometric="rgb", metadata={"axes": "TYXS"})
    broken = folder / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    return good, broken, truth, events


@pytest.mark.slow  # fits a stack of 8 frames in two parts
def test_a_stack_fitted_in_parts_is_linked_across_their_seam(movie_files):
    good, broken, truth, true_events = movie_files
    settings = timelapse.TimelapseSettings(frame_interval_s=2.0)
    # One thread: numpyro traces models on a global handler stack, so fits share no process
    # (Dask's workers are processes).
    with ThreadPoolExecutor(1) as executor:
        outcomes = track_stacks([good, broken], settings, executor, FitStore(), chunk_frames=4)
    fitted, failed = outcomes
    assert failed.tables is None and failed.error
    assert fitted.error is None and fitted.parts == 2 and fitted.n_frames == 8
    frames = fitted.tables.frames
    assert frames["frame"].tolist() == list(range(8))
    # Each part starts with a full fit of its own; the other frames reuse an appearance.
    assert frames.loc[frames["fit_kind"] == "full", "frame"].tolist() == [0, 4]
    score = score_tracks(fitted.tables.tracks, fitted.tables.events, truth, true_events)
    assert score.followed_fraction >= 0.9
    crossing = fitted.tables.tracks.groupby("track")["frame"].agg(["min", "max"])
    assert ((crossing["min"] <= 3) & (crossing["max"] >= 4)).mean() >= 0.8


@pytest.mark.slow  # starts a local Dask cluster
def test_track_command_fits_several_stacks_on_dask(movie_files, tmp_path):
    good, broken, _, _ = movie_files
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "droplet_core", "track", str(good), str(broken), "--out", str(out)]
        + ["--workers", "1", "--chunk-frames", "4", "--frame-interval", "2s", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "broken.tif" in done.stderr and "warning" in done.stderr
    assert "8 frames in 2 parts" in done.stdout
    tables = {name: pd.read_csv(out / "movie" / f"{name}.csv") for name in ("tracks", "events", "frames")}
    assert tables["frames"]["fit_kind"].tolist().count("full") == 2
    assert len(tables["tracks"]) > 0 and not (out / "broken").exists()
