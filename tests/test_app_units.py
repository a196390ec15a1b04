"""App tests of physical units and size statistics: the Image page's pixel-size field, the
Results page's distribution, statistics table and downloads, Compare's overlaid distributions.

One real short fit of a small ImageJ TIFF scene (pixel size 0.5 µm in the file) is stored
once per module; pages open it by share link, as a collaborator would.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import tifffile
from streamlit.testing.v1 import AppTest

from droplet_core.imaging.images import load_image, sha256_bytes
from droplet_core.inference.engine import run_fit
from droplet_core.measurements.readout import fit_statistics
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import SceneSettings, make_scene

pytestmark = pytest.mark.slow  # drives the app with AppTest after real fits

APP = str(Path(__file__).resolve().parents[1] / "app.py")
UM_PER_PX = 0.5


def new_app() -> AppTest:
    st.cache_data.clear()
    return AppTest.from_file(APP, default_timeout=120)


def figure(at: AppTest, key: str) -> dict:
    for chart in at.get("plotly_chart"):
        if chart.key == key:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key!r}; have {[c.key for c in at.get('plotly_chart')]}")


def statistics_shown(at: AppTest) -> pd.DataFrame:
    table = next(frame.value for frame in at.dataframe if "90 % interval" in frame.value.columns)
    return table.set_index("statistic")


@pytest.fixture(scope="module")
def tiff_fit() -> dict:
    image, _ = make_scene(11, SceneSettings(width_px=160, height_px=128, n_droplets=150, radius_median_px=2.5))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, resolution=(1 / UM_PER_PX, 1 / UM_PER_PX), metadata={"unit": "um"})
    data = buffer.getvalue()
    store = FitStore()
    sha = store.save_image(data)
    result = run_fit(load_image(data), FitSettings(steps=60), image_sha256=sha256_bytes(data))
    store.save(result)
    return {"fit_id": result.fit_id, "sha": sha, "data": data}


def open_results(fit_id: str) -> AppTest:
    at = new_app()
    at.query_params["fit"] = fit_id
    at.switch_page("pages/results.py").run()
    at.run()  # widget ids settle after the first run (see tests/test_app.py: open_app)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_image_page_reads_the_pixel_size_of_a_tiff_and_says_png_has_none(tiff_fit):
    at = new_app()
    at.run()
    at.run()
    field = next(n for n in at.number_input if n.label.startswith("Pixel size"))
    assert field.value == 0.0
    assert any("Pixel size unknown" in c.value for c in at.caption)  # the demo scene is a PNG
    at.file_uploader(key="upload").set_value(("scene.tif", tiff_fit["data"], "image/tiff")).run()
    assert not at.exception
    field = next(n for n in at.number_input if n.label.startswith("Pixel size"))
    assert field.value == pytest.approx(UM_PER_PX)
    assert any("0.5 µm per pixel (from the file)" in c.value for c in at.caption)


def test_results_show_statistics_and_distribution_in_micrometres(tiff_fit):
    at = open_results(tiff_fit["fit_id"])
    result = FitStore().load(tiff_fit["fit_id"])
    expected = fit_statistics(result.droplets, result.report).set_index("label")
    shown = statistics_shown(at)
    assert shown.loc["D[3,2] (Sauter)", "unit"] == "µm"
    assert float(shown.loc["D[3,2] (Sauter)", "value"]) == pytest.approx(
        expected.loc["D[3,2] (Sauter)", "value"] * UM_PER_PX, rel=1e-2
    )
    assert float(shown.loc["Count", "value"]) == result.report.count.count  # the one count
    distribution = figure(at, "size_distribution")
    histograms = [trace for trace in distribution["data"] if trace.get("fill") == "tozeroy"]
    assert {trace["name"] for trace in histograms} == {"number-weighted", "volume-weighted"}
    for trace in histograms:  # a step line: one share per bin, the last repeated to close the step
        assert sum(trace["y"][:-1]) == pytest.approx(100.0, rel=1e-6)
    assert distribution["layout"]["xaxis"]["title"]["text"] == "diameter (µm)"
    assert any("from the file" in c.value for c in at.caption)
    at.toggle(key="size_log_axis").set_value(True).run()
    assert figure(at, "size_distribution")["layout"]["xaxis"]["type"] == "log"
    downloads = {button.key for button in at.get("download_button")}
    assert {"statistics_download", "zip_download", "csv_download"} <= downloads


def test_a_pixel_size_set_by_the_user_changes_the_read_out_not_the_fit(tiff_fit):
    at = new_app()
    at.run()
    at.run()
    at.file_uploader(key="upload").set_value(("scene.tif", tiff_fit["data"], "image/tiff")).run()
    field = next(n for n in at.number_input if n.label.startswith("Pixel size"))
    field.set_value(2.0).run()
    assert any("2 µm per pixel (set by you)" in c.value for c in at.caption)
    stored_fits = len(FitStore().list_fits())
    at.query_params["fit"] = tiff_fit["fit_id"]
    at.switch_page("pages/results.py").run()
    assert not at.exception
    result = FitStore().load(tiff_fit["fit_id"])
    in_px = fit_statistics(result.droplets, result.report).set_index("label")
    assert float(statistics_shown(at).loc["D50 (median)", "value"]) == pytest.approx(
        2.0 * in_px.loc["D50 (median)", "value"], rel=1e-2
    )
    assert len(FitStore().list_fits()) == stored_fits  # nothing was refitted


def test_png_results_stay_in_pixels_and_compare_overlays_distributions(tiff_fit):
    image, _ = make_scene(12, SceneSettings(width_px=120, height_px=96, n_droplets=80))
    from droplet_core.synthetic.scenes import encode_png

    data = encode_png(image)
    store = FitStore()
    store.save_image(data)
    png_fit = run_fit(load_image(data), FitSettings(steps=60), image_sha256=sha256_bytes(data))
    store.save(png_fit)
    at = open_results(png_fit.fit_id)
    assert statistics_shown(at).loc["D50 (median)", "unit"] == "px"
    assert any("unknown: results in pixels" in c.value for c in at.caption)

    at = new_app()
    at.query_params["fits"] = f"{tiff_fit['fit_id']},{png_fit.fit_id}"
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    curves = figure(at, "compare_distributions")
    assert len(curves["data"]) == 4  # two fits, number- and volume-weighted
    assert curves["layout"]["xaxis"]["title"]["text"] == "diameter (px)"  # one image has no pixel size
    assert np.all(np.diff(curves["data"][0]["y"]) >= 0)
