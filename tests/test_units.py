"""Physical units, size statistics and exports, against known synthetic truth."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import roifile
import tifffile

from droplet_core.imaging.images import load_image, sha256_bytes
from droplet_core.imaging.units import (
    FROM_FILE,
    SET_BY_USER,
    UNKNOWN,
    parse_pixel_size,
    read_pixel_size,
    resolve_pixel_size,
)
from droplet_core.inference.engine import run_fit
from droplet_core.measurements.exports import roi_zip_bytes
from droplet_core.measurements.readout import fit_statistics, readout_files
from droplet_core.measurements.size_statistics import (
    BORDER_KEEP_ALL,
    StatisticsSettings,
    border_weights,
    size_statistics,
)
from droplet_core.results import FitReport
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

SMALL_SCENE = SceneSettings(width_px=160, height_px=128, n_droplets=150, radius_median_px=2.5)
FIT = FitSettings(steps=80)


def imagej_tiff(image_uint8: np.ndarray, um_per_px: float) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, image_uint8, imagej=True, resolution=(1 / um_per_px, 1 / um_per_px), metadata={"unit": "micron"}
    )
    return buffer.getvalue()


def ome_tiff(image_uint8: np.ndarray, nm_per_px: float) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        image_uint8,
        ome=True,
        photometric="rgb",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": nm_per_px,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": nm_per_px,
            "PhysicalSizeYUnit": "nm",
        },
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scene():
    return make_scene(7, SMALL_SCENE)


@pytest.mark.parametrize(
    ("writer", "expected_um"),
    [
        (lambda image: imagej_tiff(image, 0.65), 0.65),
        (lambda image: ome_tiff(image, 325.0), 0.325),
    ],
)
def test_tiff_pixel_size_is_read_from_the_file(scene, writer, expected_um):
    data = writer(scene[0])
    pixel_size = read_pixel_size(data)
    assert pixel_size.origin == FROM_FILE
    assert pixel_size.x_um == pytest.approx(expected_um) and pixel_size.y_um == pytest.approx(expected_um)
    np.testing.assert_allclose(load_image(data), scene[0] / 255.0, atol=1e-6)  # the image itself is unchanged


def test_png_and_plain_tiff_have_no_pixel_size(scene):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, scene[0])
    assert read_pixel_size(encode_png(scene[0])).origin == UNKNOWN
    assert not read_pixel_size(buffer.getvalue()).known
    assert resolve_pixel_size(read_pixel_size(encode_png(scene[0])), 0.5).origin == SET_BY_USER


@pytest.mark.parametrize(
    ("text", "um"), [("0.65um", 0.65), ("650 nm", 0.65), ("0.65", 0.65), ("1.2µm", 1.2), ("0.002mm", 2.0)]
)
def test_pixel_size_text(text, um):
    assert parse_pixel_size(text) == pytest.approx(um)


@pytest.mark.parametrize("text", ["", "abc", "0.65 furlong", "-1um", "0um"])
def test_bad_pixel_size_text_is_refused(text):
    with pytest.raises(ValueError, match="pixel size"):
        parse_pixel_size(text)


def test_statistics_of_a_known_mixture():
    # 30 droplets of diameter 10 px and 10 of diameter 20 px, well inside a 1000 x 1000 field.
    rng = np.random.default_rng(0)
    diameter = np.r_[np.full(30, 10.0), np.full(10, 20.0)]
    x, y = rng.uniform(100, 900, 40), rng.uniform(100, 900, 40)
    table = size_statistics(
        x, y, diameter / 2, (0, 0, 1000, 1000), um_per_px=0.5, settings=StatisticsSettings(border=BORDER_KEEP_ALL)
    ).set_index("statistic")
    um = diameter * 0.5
    assert table.loc["count", "value"] == 40
    assert table.loc["mean_diameter", "value"] == pytest.approx(um.mean())
    assert table.loc["sd_diameter", "value"] == pytest.approx(um.std())
    assert table.loc["d32", "value"] == pytest.approx((um**3).sum() / (um**2).sum())
    assert table.loc["d43", "value"] == pytest.approx((um**4).sum() / (um**3).sum())
    assert table.loc["d50", "value"] == pytest.approx(5.0)  # 75 % of droplets are 5 µm
    assert table.loc["dv50", "value"] == pytest.approx(10.0)  # 8000 of 10750 volume units are 10 µm droplets
    assert table.loc["cv", "value"] == pytest.approx(um.std() / um.mean())
    assert table.loc["area_fraction", "value"] == pytest.approx((np.pi * diameter**2 / 4).sum() / 1e6)
    assert set(table["unit"]) == {"", "µm"}
    # No uncertainty given: the intervals are the values themselves.
    np.testing.assert_allclose(table["low_90"], table["value"])
    np.testing.assert_allclose(table["high_90"], table["value"])


def test_miles_lantuejoul_leaves_out_cut_droplets_and_weights_large_ones():
    field = (0, 0, 100, 50)
    weights = border_weights(
        np.array([50.0, 2.0, 50.0]),
        np.array([25.0, 25.0, 25.0]),
        np.array([10.0, 10.0, 40.0]),
        field,
        "miles-lantuejoul",
    )
    assert weights[1] == 0.0  # cut by the left edge
    assert weights[0] == pytest.approx(100 * 50 / (90 * 40))
    assert weights[2] == pytest.approx(100 * 50 / (60 * 10))


@pytest.mark.slow
def test_miles_lantuejoul_is_unbiased_where_keeping_cut_droplets_is_not():
    # Many random fields of a bimodal population: the corrected mean diameter matches the population's.
    rng = np.random.default_rng(1)
    corrected, kept = [], []
    for _ in range(200):
        n = 60
        diameter = np.where(rng.random(n) < 0.8, 4.0, 30.0)
        x, y = rng.uniform(-0.5, 99.5, n), rng.uniform(-0.5, 99.5, n)
        seen = size_statistics(x, y, diameter / 2, (0, 0, 100, 100), settings=StatisticsSettings(draws=2))
        radius = diameter / 2
        inside = (x - radius >= -0.5) & (x + radius <= 99.5) & (y - radius >= -0.5) & (y + radius <= 99.5)
        corrected.append(seen.set_index("statistic").loc["mean_diameter", "value"])
        kept.append(diameter[inside].mean())
    population = 0.8 * 4.0 + 0.2 * 30.0
    assert abs(np.mean(corrected) / population - 1) < 0.03
    assert np.mean(kept) / population - 1 < -0.15  # inside-only without weights under-counts large droplets


@pytest.mark.slow
def test_intervals_widen_with_uncertainty_and_hold_the_truth():
    # Measured diameters = truth + noise of a known sd: the 90 % interval of D50 holds the truth's D50 in
    # about 90 % of repeats (the per-droplet part of the propagation; D50 is one that the noise barely biases).
    rng = np.random.default_rng(2)
    hits = 0
    repeats = 60
    for seed in range(repeats):
        radius = rng.lognormal(np.log(4.0), 0.4, 300)
        x, y = rng.uniform(50, 950, 300), rng.uniform(50, 950, 300)
        sd = 0.15 * radius
        measured = radius + sd * rng.standard_normal(300)
        table = size_statistics(
            x, y, measured, (0, 0, 1000, 1000), sd_radius_px=sd, settings=StatisticsSettings(seed=seed, draws=200)
        ).set_index("statistic")
        truth = size_statistics(x, y, radius, (0, 0, 1000, 1000), settings=StatisticsSettings(draws=2))
        true_d50 = truth.set_index("statistic").loc["d50", "value"]
        hits += table.loc["d50", "low_90"] <= true_d50 <= table.loc["d50", "high_90"]
        assert table.loc["d50", "high_90"] - table.loc["d50", "low_90"] > 0
    assert 0.8 <= hits / repeats <= 0.98


def test_label_image_and_rois_match_the_table(tmp_path):
    droplets = pd.DataFrame({"x": [10.0, 17.0, 40.2], "y": [10.0, 10.0, 30.7], "radius": [5.0, 5.0, 3.4]})
    report = FitReport(
        "0" * 32,
        "0" * 64,
        FitSettings(),
        "done",
        "2025-01-01T00:00:00+00:00",
        1,
        1,
        fit_shape=(50, 60, 3),
        image_shape=(50, 60, 3),
    )
    files = readout_files(droplets, report)
    labels = tifffile.imread(io.BytesIO(files["labels.tif"]))
    assert labels.shape == (50, 60) and labels.dtype == np.uint16
    assert labels[10, 10] == 1 and labels[10, 17] == 2 and labels[31, 40] == 3 and labels[0, 0] == 0
    # Discs 1 and 2 overlap between columns 12 and 15: the nearer centre wins, the border is at x = 13.5.
    assert labels[10, 13] == 1 and labels[10, 14] == 2
    assert (labels == 3).sum() == pytest.approx(np.pi * 3.4**2, rel=0.1)

    (tmp_path / "rois.zip").write_bytes(roi_zip_bytes(droplets))
    rois = roifile.roiread(tmp_path / "rois.zip")
    assert [roi.name for roi in rois] == ["1", "2", "3"]
    for roi, row in zip(rois, droplets.itertuples()):
        assert roi.roitype == roifile.ROI_TYPE.OVAL
        # ImageJ's pixel centres are at index + 0.5.
        assert roi.xd + roi.widthd / 2 - 0.5 == pytest.approx(row.x, abs=1e-4)
        assert roi.yd + roi.heightd / 2 - 0.5 == pytest.approx(row.y, abs=1e-4)
        assert roi.widthd == pytest.approx(2 * row.radius, abs=1e-4)
        # The oval ImageJ would draw covers the same pixels as the label.
        assert roi.coordinates()[:, 0].mean() == pytest.approx(row.x + 0.5, abs=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_fit_of_a_tiff_with_a_pixel_size_comes_out_in_micrometres(scene, kind):
    image_uint8, truth = scene
    um = 0.65 if kind == "imagej" else 0.325
    data = imagej_tiff(image_uint8, um) if kind == "imagej" else ome_tiff(image_uint8, um * 1000)
    result = run_fit(load_image(data), FIT, image_sha256=sha256_bytes(data))
    files = readout_files(result.droplets, result.report, read_pixel_size(data))
    droplets = pd.read_csv(io.BytesIO(files["droplets.csv"]))
    np.testing.assert_allclose(droplets["x_um"], droplets["x"] * um, rtol=1e-5)
    np.testing.assert_allclose(droplets["y_um"], droplets["y"] * um, rtol=1e-5)
    np.testing.assert_allclose(droplets["diameter_um"], 2 * droplets["radius"] * um, rtol=1e-5)
    np.testing.assert_allclose(droplets["sd_diameter_um"], 2 * droplets["sd_radius"] * um, rtol=1e-5)
    assert list(droplets["label"]) == list(range(1, len(droplets) + 1))
    assert json.loads(files["fit.json"])["pixel_size"] == {
        "x_um": pytest.approx(um),
        "y_um": pytest.approx(um),
        "origin": FROM_FILE,
    }
    statistics = pd.read_csv(io.BytesIO(files["statistics.csv"])).set_index("statistic")
    true = size_statistics(
        truth["x"], truth["y"], truth["radius"], (0, 0, 160, 128), um_per_px=um, settings=StatisticsSettings(draws=2)
    ).set_index("statistic")
    assert statistics.loc["d32", "unit"] == "µm"
    for name in ("d50", "d32", "mean_diameter"):
        assert statistics.loc[name, "value"] == pytest.approx(true.loc[name, "value"], rel=0.2), name
        assert statistics.loc[name, "low_90"] <= statistics.loc[name, "value"] <= statistics.loc[name, "high_90"]
    assert abs(statistics.loc["count", "value"] - len(truth)) <= 0.1 * len(truth)
    # Units never change the fit: the same statistics in px are the µm ones over the pixel size.
    in_px = fit_statistics(result.droplets, result.report).set_index("statistic")
    assert in_px.loc["d32", "value"] * um == pytest.approx(statistics.loc["d32", "value"], rel=1e-5)
    with zipfile.ZipFile(io.BytesIO(files["rois.zip"])) as archive:
        assert len(archive.namelist()) == len(droplets)
