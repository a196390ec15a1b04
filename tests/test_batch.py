"""``python -m droplet_core batch`` on a Dask LocalCluster: tables equal to single fits,
resumable, bad files reported while the others are fitted."""

from __future__ import annotations

import contextlib
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from droplet_core.imaging.images import load_image, sha256_bytes
from droplet_core.inference.engine import run_fit
from droplet_core.measurements.readout import write_fit_outputs
from droplet_core.service.batch import FITS_FOLDER, find_images, unpack_uploads
from droplet_core.service.cli import main
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

pytestmark = pytest.mark.slow  # runs a batch on a local Dask cluster

SCENE = SceneSettings(width_px=160, height_px=120, n_droplets=60)
SCENE_NAMES = ("scene0.png", "scene1.png", "scene2.png")
STEPS = 50  # one jitted chunk
SETTINGS = FitSettings(model="gaussian", steps=STEPS)
BATCH_ARGS = ["--model", "gaussian", "--steps", str(STEPS)]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True, scope="module")
def own_store(tmp_path_factory):
    """A store of this module's own: other test files fit the same small scenes, and a fit
    they stored would show here as ``stored`` instead of ``fitted``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DROPLET_STORE", str(tmp_path_factory.mktemp("batch-store")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed, name in enumerate(SCENE_NAMES):
        (folder / name).write_bytes(encode_png(make_scene(seed, SCENE)[0]))
    (folder / "broken.png").write_bytes(encode_png(make_scene(9, SCENE)[0])[:200])
    return folder


@pytest.fixture(scope="module")
def first_batch(images, tmp_path_factory):
    """The batch, run once on a LocalCluster with two worker processes (output captured by hand:
    capsys is function-scoped)."""
    out = tmp_path_factory.mktemp("batch")
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        code = main(["batch", str(images / "*.png"), *BATCH_ARGS, "--workers", "2", "--out", str(out)])
    return code, out, err.getvalue(), stdout.getvalue()


def test_batch_reports_progress_and_a_bad_file(first_batch):
    code, out, err, stdout = first_batch
    assert code == 0, err
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["image"]) == ["broken.png", *SCENE_NAMES]
    assert list(summary["status"]) == ["failed", "fitted", "fitted", "fitted"]
    broken = summary.iloc[0]
    assert "truncated" in broken["error"] and "\n" not in broken["error"]
    assert summary["droplet_count"].iloc[1:].gt(0).all() and summary["rmse"].iloc[1:].gt(0).all()
    # Size statistics per image, with intervals, in pixels (PNGs carry no pixel size).
    fitted = summary.iloc[1:]
    assert (fitted["pixel_size_origin"] == "unknown: pixels").all() and fitted["pixel_size_um"].isna().all()
    assert "count" not in fitted  # one count: the fit's own droplet_count and its interval
    assert (fitted["d32_low_90"] <= fitted["d32"]).all() and (fitted["d32"] <= fitted["d32_high_90"]).all()
    for name in SCENE_NAMES:
        per_image = pd.read_csv(out / FITS_FOLDER / name / "statistics.csv").set_index("statistic")
        assert per_image.loc["d50", "value"] == pytest.approx(summary.set_index("image").loc[name, "d50"], rel=1e-4)
        assert (out / FITS_FOLDER / name / "labels.tif").is_file() and (out / FITS_FOLDER / name / "rois.zip").is_file()
    assert [line.split("]")[0] for line in err.splitlines() if line.startswith("[")] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert "Traceback" not in err
    assert "3 of 4 images fitted" in stdout


def test_batch_tables_equal_single_fits(first_batch, images, tmp_path):
    _, out, _, _ = first_batch
    summary = pd.read_csv(out / "summary.csv").set_index("image")
    combined = pd.read_csv(out / "droplets.csv")
    assert combined.columns[0] == "image" and set(combined["image"]) == set(SCENE_NAMES)
    for name in SCENE_NAMES:
        data = (images / name).read_bytes()
        single = run_fit(load_image(data), SETTINGS, image_sha256=sha256_bytes(data))
        assert summary.loc[name, "fit_id"] == single.fit_id
        assert summary.loc[name, "droplet_count"] == single.report.count.count
        assert summary.loc[name, "fit_quality"] == single.report.verdict.quality
        write_fit_outputs(single, tmp_path / name)
        assert (out / FITS_FOLDER / name / "droplets.csv").read_text() == (tmp_path / name / "droplets.csv").read_text()
        from_batch = combined[combined["image"] == name].drop(columns="image").reset_index(drop=True)
        # Same values; a column that is whole numbers in one image reads back as int on its own.
        pd.testing.assert_frame_equal(from_batch, pd.read_csv(tmp_path / name / "droplets.csv"), check_dtype=False)


def test_second_run_skips_stored_fits(first_batch, images, tmp_path, capsys):
    _, out, _, _ = first_batch
    code, _, err = run_cli(
        capsys, "batch", str(images / "scene*.png"), *BATCH_ARGS, "--workers", "1", "--out", str(tmp_path)
    )
    assert code == 0, err
    again = pd.read_csv(tmp_path / "summary.csv")
    assert list(again["status"]) == ["stored"] * 3
    before = pd.read_csv(out / "summary.csv").set_index("image")
    assert list(again["fit_id"]) == list(before.loc[list(SCENE_NAMES), "fit_id"])
    assert (tmp_path / "droplets.csv").read_text() == (out / "droplets.csv").read_text()


def test_pixel_size_for_the_whole_batch_changes_the_read_out_not_the_fits(first_batch, images, tmp_path, capsys):
    _, out, _, _ = first_batch
    code, _, err = run_cli(
        capsys,
        "batch",
        str(images / "scene0.png"),
        *BATCH_ARGS,
        "--workers",
        "1",
        "--pixel-size",
        "0.5um",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    before = pd.read_csv(out / "summary.csv").set_index("image").loc["scene0.png"]
    assert summary["status"] == "stored" and summary["fit_id"] == before["fit_id"]
    assert summary["pixel_size_um"] == 0.5 and summary["pixel_size_origin"] == "set by you"
    assert summary["d32"] == pytest.approx(0.5 * before["d32"], rel=1e-4)
    droplets = pd.read_csv(tmp_path / "droplets.csv")
    np.testing.assert_allclose(droplets["diameter_um"], droplets["radius"], rtol=1e-5)  # 2 r px x 0.5 um/px


@pytest.mark.parametrize("pattern", ["nothing/*.png", "broken.png"])
def test_nothing_to_fit_exits_2_with_one_line(images, tmp_path, capsys, pattern):
    code, _, err = run_cli(
        capsys, "batch", str(images / pattern), *BATCH_ARGS, "--workers", "1", "--quiet", "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_find_images_names_files_relative_to_their_common_folder(tmp_path):
    (tmp_path / "day1").mkdir()
    (tmp_path / "day2").mkdir()
    for path in (tmp_path / "day1" / "a.tif", tmp_path / "day2" / "a.tif"):
        path.write_bytes(b"x")
    found = find_images([str(tmp_path / "**" / "*.tif")])
    assert [image.name for image in found] == ["day1/a.tif", "day2/a.tif"]
    assert find_images([str(tmp_path / "*.png")]) == []


def test_unpack_uploads_expands_zips_with_unique_names(monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("day1/a.png", b"1")
        bundle.writestr("day2/a.png", b"2")
        bundle.writestr("notes.txt", b"skipped")
        bundle.writestr("__MACOSX/day1/._a.png", b"skipped")
    files = unpack_uploads([("a.png", b"0"), ("run.zip", archive.getvalue())])
    assert files == [("a.png", b"0"), ("a (2).png", b"1"), ("a (3).png", b"2")]
    with pytest.raises(ValueError, match="not a readable zip"):
        unpack_uploads([("run.zip", b"PK\x03\x04 broken")])
    monkeypatch.setattr("droplet_core.service.batch.MAX_ARCHIVE_BYTES", 1)
    with pytest.raises(ValueError, match="unpacks to more than"):
        unpack_uploads([("run.zip", archive.getvalue())])
