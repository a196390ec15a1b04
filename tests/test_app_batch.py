"""AppTest of the Batch page: uploads (one of them a zip), a background batch, its summary,
plots and download; bad archives and bad links give clear messages.

AppTest cannot wait for worker threads, so the test re-runs the script until the batch has
finished. The store is a temporary folder (``DROPLET_STORE``, set in conftest.py).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

pytestmark = pytest.mark.slow  # drives the Batch page with AppTest and fits

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SCENE = SceneSettings(width_px=160, height_px=120, n_droplets=60)
BATCH_TIMEOUT_S = 240


def batch_page() -> AppTest:
    """A new session on the Batch page (run twice first: see test_app.open_app)."""
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.run()
    at.switch_page("pages/batch.py").run()
    return at


def scene_png(seed: int) -> bytes:
    return encode_png(make_scene(seed, SCENE)[0])


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def run_button(at: AppTest):
    return next(button for button in at.button if button.label == "Run batch")


def keyed(at: AppTest, kind: str, key: str):
    found = [element for element in at.get(kind) if getattr(element, "key", None) == key]
    return found[0] if found else None


def summary(at: AppTest):
    """The finished batch's summary table (the page's only table once the batch is done), or None."""
    if not any(m.label == "Images fitted" for m in at.metric):
        return None
    return at.dataframe[0].value


def figure(at: AppTest, key: str) -> dict:
    return json.loads(keyed(at, "plotly_chart", key).proto.spec)


def test_batch_of_uploads_and_a_zip_shows_summary_plots_and_download():
    at = batch_page()
    assert not at.exception
    at.file_uploader(key="batch_upload").set_value(
        [
            ("first.png", scene_png(1), "image/png"),
            (
                "more.zip",
                zip_of({"lab/second.png": scene_png(2), "readme.txt": b"notes", "__MACOSX/lab/._second.png": b"junk"}),
                "application/zip",
            ),
            ("broken.png", scene_png(3)[:300], "image/png"),
        ]
    )
    at.radio(key="b_model").set_value("gaussian")
    at.select_slider(key="b_steps").set_value(50)
    run_button(at).click().run()
    assert not at.exception, at.exception
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while summary(at) is None:
        assert time.monotonic() < deadline, "the batch did not finish"
        time.sleep(1.0)
        at.run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]

    table = summary(at)
    assert list(table["image"]) == ["first.png", "second.png", "broken.png"]
    assert list(table["status"]) == ["fitted", "fitted", "failed"]
    assert "truncated" in table["error"].iloc[2]
    assert [m.value for m in at.metric if m.label == "Images fitted"] == ["2 of 3"]
    assert any("broken.png" in w.value and "truncated" in w.value for w in at.warning)
    counts = figure(at, "batch_counts")["data"][0]
    assert list(counts["x"]) == ["first.png", "second.png"]
    radii = figure(at, "batch_radii")["data"]
    assert [trace["name"] for trace in radii] == ["first.png", "second.png"]
    assert keyed(at, "download_button", "batch_download") is not None
    # Size statistics per image: in the table, and D50 / D[3,2] with their intervals as a plot.
    assert (table["d32_low_90"].iloc[:2] <= table["d32"].iloc[:2]).all()
    sizes = figure(at, "batch_statistics")["data"]
    assert [trace["name"] for trace in sizes] == ["D50", "D[3,2]"]
    assert list(sizes[0]["x"]) == ["first.png", "second.png"]
    assert keyed(at, "download_button", "batch_statistics_download") is not None
    batch_id = at.query_params["batch"][0] if isinstance(at.query_params["batch"], list) else at.query_params["batch"]

    # The share link in a new session shows the finished batch, nothing recomputed.
    again = batch_page()
    again.query_params["batch"] = batch_id
    again.run()
    assert not again.exception
    assert list(summary(again)["status"]) == ["fitted", "fitted", "failed"]


def test_bad_archive_and_bad_links_give_clear_messages():
    at = batch_page()
    at.file_uploader(key="batch_upload").set_value([("photos.zip", b"PK\x03\x04 not really a zip", "application/zip")])
    run_button(at).click().run()
    assert not at.exception
    assert any("photos.zip is not a readable zip archive" in e.value for e in at.error)

    for link, message in (("../../etc/passwd", "not valid"), ("0123456789abcdef0123456789abcdef", "No batch")):
        at = batch_page()
        at.query_params["batch"] = link
        at.run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_the_batch_form_starts_from_the_settings_chosen_on_the_fit_page():
    at = batch_page()
    at.switch_page("pages/fit.py").run()
    at.radio(key="w_model").set_value("gaussian").run()
    at.select_slider(key="w_steps").set_value(300)
    at.number_input(key="w_seed").set_value(7)
    # Submitting the form by the instant detection sets its values without starting a fit.
    next(button for button in at.button if button.label == "Detect (instant)").click().run()
    assert not at.exception, at.exception
    at.switch_page("pages/batch.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="b_model").value == "gaussian"
    assert at.select_slider(key="b_steps").value == 300
    assert at.number_input(key="b_seed").value == 7
