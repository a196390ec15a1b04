"""``python -m droplet_core``: outputs of a fit, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import roifile
import tifffile
from PIL import Image

from droplet_core.detection.matching import match_droplets

pytestmark = pytest.mark.slow  # runs the command line in subprocesses, fits included

REPO = Path(__file__).resolve().parents[1]


def droplet_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "droplet_core", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    done = droplet_cli("scene", "--seed", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


# The fits run on a smaller scene than the preset: what they check (outputs, the store, a reused
# look, a good fit) does not depend on the size, and a fit of it takes half the time.
SMALL_SCENE_ARGS = ("--width", "240", "--height", "192", "--droplets", "150")


@pytest.fixture(scope="module")
def small_scene_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_scene")
    done = droplet_cli("scene", "--seed", "5", *SMALL_SCENE_ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_scene_writes_image_and_truth(scene_dir):
    truth = pd.read_csv(scene_dir / "truth.csv")
    image = Image.open(scene_dir / "scene.png")
    assert list(truth.columns[:3]) == ["x", "y", "radius"]
    assert len(truth) > 500
    assert truth["x"].between(0, image.width - 1).all() and truth["y"].between(0, image.height - 1).all()


def test_fit_writes_the_three_outputs(small_scene_dir, tmp_path):
    out = tmp_path / "fit"
    done = droplet_cli("fit", str(small_scene_dir / "scene.png"), "--steps", "200", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "step 200/200" in done.stderr
    droplets = pd.read_csv(out / "droplets.csv")
    assert list(droplets.columns[:3]) == ["x", "y", "radius"]
    info = json.loads((out / "fit.json").read_text())
    assert info["candidate_droplets"] == len(droplets)
    assert info["droplet_count"] == round(droplets["p_exists"].sum())
    assert info["droplet_count_interval_90"][0] <= info["droplet_count"] <= info["droplet_count_interval_90"][1]
    assert info["verdict"]["quality"] == "good", info["verdict"]
    low, high = info["droplet_count_interval_90"]
    assert f"{info['droplet_count']} droplets (90 % interval {low}-{high})" in done.stdout
    assert "fit quality: good" in done.stdout
    assert info["settings"]["model"] == "templates" and info["settings"]["steps"] == 200
    assert {"device", "versions", "timings", "final_loss", "rmse"} <= set(info)
    reconstruction = Image.open(out / "reconstruction.png")
    assert (reconstruction.height, reconstruction.width) == tuple(info["fit_shape"][:2])
    score = match_droplets(pd.read_csv(small_scene_dir / "truth.csv"), droplets)
    assert score.f1 > 0.8, score
    # A PNG carries no pixel size: the read-out is in pixels, and says so.
    assert info["pixel_size"] == {"x_um": None, "y_um": None, "origin": "unknown: pixels"}
    assert "x_um" not in droplets and list(droplets["label"]) == list(range(1, len(droplets) + 1))
    statistics = pd.read_csv(out / "statistics.csv").set_index("statistic")
    assert statistics.loc["d32", "unit"] == "px" and statistics.loc["count", "value"] == len(droplets)
    labels = tifffile.imread(out / "labels.tif")
    assert labels.shape == (
        Image.open(small_scene_dir / "scene.png").height,
        Image.open(small_scene_dir / "scene.png").width,
    )
    centres = droplets[["y", "x"]].round().astype(int).to_numpy()
    assert (labels[centres[:, 0], centres[:, 1]] == droplets["label"].to_numpy()).mean() > 0.95
    assert [roi.name for roi in roifile.roiread(out / "rois.zip")] == [str(k) for k in droplets["label"]]

    # Statistics of the stored fit, in µm, without refitting.
    stats = droplet_cli("stats", str(out), "--pixel-size", "2um")
    assert stats.returncode == 0, stats.stderr
    assert "2 µm per pixel (set by you)" in stats.stdout and "D[3,2] (Sauter)" in stats.stdout
    d32_line = next(line for line in stats.stdout.splitlines() if "D[3,2]" in line)
    assert float(d32_line.split()[2]) == pytest.approx(2 * statistics.loc["d32", "value"], rel=1e-3)
    by_id = droplet_cli("stats", info["fit_id"])
    assert by_id.returncode == 0 and "unknown: results in pixels" in by_id.stdout
    bad = droplet_cli("stats", str(out), "--pixel-size", "2 parsecs")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_fit_reuses_the_store_and_an_earlier_appearance(small_scene_dir, tmp_path):
    first = tmp_path / "first"
    done = droplet_cli("fit", str(small_scene_dir / "scene.png"), "--steps", "100", "--out", str(first))
    assert done.returncode == 0, done.stderr
    first_id = json.loads((first / "fit.json").read_text())["fit_id"]

    again = droplet_cli("fit", str(small_scene_dir / "scene.png"), "--steps", "100", "--out", str(tmp_path / "again"))
    assert again.returncode == 0 and "identical fit found in the store" in again.stderr
    assert (tmp_path / "again" / "droplets.csv").read_text() == (first / "droplets.csv").read_text()

    other_scene = tmp_path / "other"
    assert droplet_cli("scene", "--seed", "6", *SMALL_SCENE_ARGS, "--out", str(other_scene)).returncode == 0
    reused = tmp_path / "reused"
    done = droplet_cli(
        "fit", str(other_scene / "scene.png"), "--steps", "100", "--appearance-from", str(first), "--out", str(reused)
    )
    assert done.returncode == 0, done.stderr
    info = json.loads((reused / "fit.json").read_text())
    assert info["appearance_from"] == first_id
    score = match_droplets(pd.read_csv(other_scene / "truth.csv"), pd.read_csv(reused / "droplets.csv"))
    assert score.f1 > 0.8, score


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "missing.png", "--out", "OUT"], "no such file"),
        (["fit", "NOT_AN_IMAGE", "--out", "OUT"], "not an image"),
        (["fit", "SCENE", "--model", "neural", "--channel", "h", "--out", "OUT"], "channel 'rgb'"),
        (["fit", "SCENE", "--model", "templates", "--channel", "rgb", "--out", "OUT"], "single channel"),
        (["fit", "SCENE", "--downscale", "400", "--out", "OUT"], "leaves nothing"),
        (["fit", "SCENE", "--channel", "purple", "--out", "OUT"], "invalid choice"),
        (["fit", "SCENE", "--droplets", "-3", "--out", "OUT"], "at least 1"),
        (["fit", "SCENE"], "--out"),
        (["fit", "SCENE", "--appearance-from", "0123456789abcdef0123456789abcdef", "--out", "OUT"], "no stored fit"),
        (["train-encoder", "--out", "OUT", "--init-weights", "OUT"], "no encoder.msgpack"),
    ],
)
def test_bad_input_exits_2_with_one_line(scene_dir, tmp_path, args, message):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are my notes, not a picture")
    replace = {"SCENE": str(scene_dir / "scene.png"), "NOT_AN_IMAGE": str(not_an_image), "OUT": str(tmp_path / "o")}
    done = droplet_cli(*[replace.get(a, a) for a in args])
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:"), done.stderr
    assert message in lines[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_truncated_image_is_refused(scene_dir, tmp_path):
    data = (scene_dir / "scene.png").read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 2])
    done = droplet_cli("fit", str(truncated), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
