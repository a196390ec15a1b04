"""App tests with Streamlit's AppTest: every page, a real short fit, share links, bad input.

AppTest cannot fire ``run_every`` timers or wait for worker threads, so the fit test
re-runs the script in a loop until the background job has finished. One real fit
(``run_fit``, a few steps on the built-in demo scene) is made once per module and
reused. The store is a temporary folder (``DROPLET_STORE``, set in conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from droplet_core.inference.engine import FitError
from droplet_core.service.store import FitStore

pytestmark = pytest.mark.slow  # every test drives the app with AppTest, most after a real fit

APP = str(Path(__file__).resolve().parents[1] / "app.py")
FIT_STEPS = 150  # the smallest "Steps" option above one chunk; the demo then fits in seconds
FIT_TIMEOUT_S = 240


def new_app() -> AppTest:
    st.cache_data.clear()
    return AppTest.from_file(APP, default_timeout=120)


def open_app() -> AppTest:
    """A new session on the Image page, run twice.

    AppTest resets Streamlit's "uses a pages/ directory" flag before every run, so each
    run goes through the legacy router and app_support.app.main's start-of-session rerun makes the
    very first run's widget ids differ from later runs (in a browser only the first
    run of a server process is routed that way; see app_support/app.py). Interactions are
    therefore made after the second run.
    """
    at = new_app()
    at.run()
    at.run()
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def figure(at: AppTest, key: str) -> dict:
    """The Plotly figure JSON of the chart with ``key``."""
    for chart in at.get("plotly_chart"):
        if chart.key == key:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key!r}; have {[c.key for c in at.get('plotly_chart')]}")


def gaps(trace: dict) -> int:
    """The gaps (NaN) in a line trace's x, which Plotly sends as a binary typed array."""
    x = trace["x"]
    return int(np.isnan(np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])).sum())


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


JOB_ENDINGS = ("Fit done", "Loaded from store", "Stopped", "The fit failed")


def fit_ended(at: AppTest) -> bool:
    """Whether the Fit page reports that the job it started has ended."""
    messages = texts(at.success) + texts(at.warning) + texts(at.error)
    return any(ending in message for message in messages for ending in JOB_ENDINGS)


def run_fit_page(at: AppTest, steps: int = FIT_STEPS, seed: int = 0, appearance_from: str | None = None) -> None:
    """On the Fit page: set steps, seed (and the appearance to reuse), press Fit, re-run
    until the job has finished."""
    at.switch_page("pages/fit.py").run()
    at.select_slider(key="w_steps").set_value(steps)
    at.number_input(key="w_seed").set_value(seed)
    if appearance_from is not None:
        at.selectbox(key="w_appearance_from").set_value(appearance_from)
    next(b for b in at.button if b.label == "Fit").click().run()
    deadline = time.monotonic() + FIT_TIMEOUT_S
    while time.monotonic() < deadline:
        assert not at.exception, at.exception
        if fit_ended(at):
            return
        time.sleep(1.0)
        at.run()
    raise AssertionError("the fit did not finish in time")


@pytest.fixture(scope="module")
def fitted() -> dict:
    """One real short fit of the demo scene through the Fit page: its id and the AppTest."""
    at = open_app()
    run_fit_page(at)
    assert not at.error, texts(at.error)
    assert any("Fit done" in s for s in texts(at.success)), texts(at.success)
    fit_id = at.session_state["fit_id"]
    return {"fit_id": fit_id, "at": at}


# -- Image page -------------------------------------------------------------------------------


def test_image_page_shows_demo_size_and_channels():
    at = open_app()
    assert not at.exception
    assert metric(at, "Size") == "500 × 400 px"
    assert figure(at, "image_fig")["data"][0]["type"] == "image"
    # The channel small multiples are ONE faceted figure: one image trace per channel.
    assert len(figure(at, "channels_fig")["data"]) == 10


def test_corrupt_upload_shows_error_and_keeps_image():
    at = open_app()
    before = at.session_state["image_sha"]
    at.file_uploader(key="upload").set_value(("broken.png", b"this is not an image", "image/png"))
    at.run()
    assert not at.exception
    assert any("broken.png" in e and "cannot be used" in e for e in texts(at.error)), texts(at.error)
    assert at.session_state["image_sha"] == before
    assert metric(at, "Size") == "500 × 400 px"


def test_upload_beyond_pixel_limit_is_refused(monkeypatch):
    monkeypatch.setenv("DROPLET_MAX_PIXELS", "300000")  # the 500x400 demo still fits
    at = open_app()
    at.file_uploader(key="upload").set_value(("big.png", png_bytes(700, 600), "image/png"))
    at.run()
    assert not at.exception
    assert any("too large" in e for e in texts(at.error)), texts(at.error)
    assert metric(at, "Size") == "500 × 400 px"


def test_valid_upload_becomes_current_image():
    at = open_app()
    at.file_uploader(key="upload").set_value(("small.png", png_bytes(64, 48), "image/png"))
    at.run()
    assert not at.exception
    assert not at.error
    assert metric(at, "Size") == "64 × 48 px"
    # kept as bytes in the store, by hash
    sha = at.session_state["image_sha"]
    assert FitStore().image_bytes(sha) == png_bytes(64, 48)


# -- Fit and results ---------------------------------------------------------------------------


def test_short_fit_completes_and_results_match_store(fitted):
    at = fitted["at"]
    fit_id = fitted["fit_id"]
    stored = FitStore().load(fit_id)
    assert metric(at, "Droplets") == str(stored.report.count.count)
    at.switch_page("pages/results.py").run()
    assert not at.exception
    assert not at.error, texts(at.error)
    assert metric(at, "Droplets") == str(stored.report.count.count)
    assert at.query_params["fit"] in (fit_id, [fit_id])
    # the share link is shown, and carries the fit id
    assert any(f"results?fit={fit_id}" in c.value for c in at.code)
    centres = figure(at, "overlay")["data"][-1]
    assert centres["type"] == "scattergl" and centres["mode"] == "markers"


def test_results_show_count_interval_and_uncertainty_bands(fitted):
    at = fitted["at"]
    stored = FitStore().load(fitted["fit_id"])
    at.switch_page("pages/results.py").run()
    low, high = (stored.report.count.low, stored.report.count.high)
    assert low <= stored.report.count.count <= high
    assert any(c.startswith(f"90 % interval {low}–{high}") for c in texts(at.caption)), texts(at.caption)
    names = [trace.get("name") for trace in figure(at, "overlay")["data"]]
    assert "90 % bands" not in names
    at.toggle(key="show_uncertainty").set_value(True).run()
    assert not at.exception
    bands = [trace for trace in figure(at, "overlay")["data"] if trace.get("name") in ("90 % bands", "unsure droplets")]
    # Three outlines per droplet (inner and outer radius, position ellipse), separated by gaps.
    assert sum(gaps(trace) for trace in bands) >= 3 * len(stored.droplets)
    centres = figure(at, "overlay")["data"][-1]
    assert "P(exists)" in centres["hovertemplate"] and "(90 %)" in centres["hovertemplate"]


def test_identical_settings_load_from_store(fitted):
    at = open_app()
    run_fit_page(at)
    assert not at.exception
    assert any("Loaded from store" in s for s in texts(at.success)), texts(at.success)
    assert at.session_state["fit_id"] == fitted["fit_id"]


def test_failed_fit_shows_error_and_keeps_earlier_fit(fitted, monkeypatch):
    from app_support import app

    def diverging_fit(*args, **kwargs):
        raise FitError("the fit diverged (loss became NaN/inf at step 50); try a smaller learning rate")

    monkeypatch.setattr(app.registry(), "_fit_fn", diverging_fit)
    at = open_app()
    at.session_state["fit_id"] = fitted["fit_id"]
    run_fit_page(at, seed=12345)
    assert not at.exception
    assert any("diverged" in e for e in texts(at.error)), texts(at.error)
    assert at.session_state["fit_id"] == fitted["fit_id"]  # the earlier fit is kept


def test_reuse_appearance_of_an_earlier_fit(fitted):
    at = open_app()
    # Another session's fit is offered for reuse once this session has opened its link.
    at.query_params["fit"] = fitted["fit_id"]
    at.switch_page("pages/results.py").run()
    at.query_params.pop("fit")
    run_fit_page(at, seed=1, appearance_from=fitted["fit_id"])
    assert not at.error, texts(at.error)
    new_id = at.session_state["fit_id"]
    reused = FitStore().load(new_id)
    assert reused.settings.appearance_from == fitted["fit_id"]
    np.testing.assert_allclose(reused.appearance["masks"], FitStore().load(fitted["fit_id"]).appearance["masks"])
    at.switch_page("pages/gallery.py").run()
    assert not at.exception
    assert any(fitted["fit_id"][:12] in i.value for i in at.info), texts(at.info)


def test_gallery_and_compare_pages(fitted):
    at = fitted["at"]
    at.switch_page("pages/gallery.py").run()
    assert not at.exception
    assert not at.error, texts(at.error)
    assert at.get("plotly_chart"), "gallery figure missing"
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert not at.error, texts(at.error)


# -- share links -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["results", "gallery"])
def test_share_link_restores_fit_in_new_session(fitted, page):
    fit_id = fitted["fit_id"]
    at = new_app()
    at.query_params["fit"] = fit_id
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    assert not at.error, texts(at.error)
    assert at.session_state["fit_id"] == fit_id
    if page == "results":
        assert metric(at, "Droplets") == str(FitStore().load(fit_id).report.count.count)


def test_results_figures_are_built_once_per_fit_and_display_setting(fitted, monkeypatch):
    from app_support import figure_cache, figures

    built = []
    real_overlay = figures.overlay_figure
    monkeypatch.setattr(figures, "overlay_figure", lambda *args, **kw: built.append(kw) or real_overlay(*args, **kw))
    figure_cache._figure.clear()
    sessions = []
    for _ in range(2):  # two sessions open the share link, each runs the page twice
        at = new_app()
        at.query_params["fit"] = fitted["fit_id"]
        at.switch_page("pages/results.py").run()
        at.run()
        assert not at.exception
        sessions.append(at)
    assert len(built) == 1
    first = figure(sessions[0], "overlay")
    assert figure(sessions[1], "overlay") == first
    # Another setting is another figure: hiding the doubtful candidates leaves out their markers.
    droplets = FitStore().load(fitted["fit_id"]).droplets
    sessions[1].slider(key="w_hide_below").set_value(0.5).run()
    assert len(built) == 2
    markers = figure(sessions[1], "overlay")["data"][-1]["x"]
    likely = int((droplets["p_exists"] >= 0.5).sum())
    assert len(base64.b64decode(markers["bdata"])) // np.dtype(markers["dtype"]).itemsize == likely
    sessions[0].run()
    assert len(built) == 2 and figure(sessions[0], "overlay") == first


def test_compare_share_link(fitted):
    at = new_app()
    at.query_params["fits"] = fitted["fit_id"]
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert not at.error, texts(at.error)


@pytest.mark.parametrize(
    "bad_id",
    ["../../etc/passwd", "0123456789abcdef0123456789abcdef", "NOT-HEX", "%2e%2e%2fetc", "a" * 33],
)
@pytest.mark.parametrize("page", ["results", "gallery"])
def test_bad_fit_id_shows_error(bad_id, page):
    at = new_app()
    at.query_params["fit"] = bad_id
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    assert at.error, "expected an error message"
    assert "fit_id" not in at.session_state or at.session_state["fit_id"] != bad_id


def test_bad_compare_ids_show_error():
    at = new_app()
    at.query_params["fits"] = "../../etc/passwd,0123456789abcdef0123456789abcdef"
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert at.error, "expected an error message"
