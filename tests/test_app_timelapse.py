"""AppTest of the Time-lapse page: a synthetic movie uploaded as image files (one of them broken),
fitted in the background, then what a user sees: the frames, the overlay with the droplets'
paths, plots over time with the coalescences marked, a droplet's radius over time, and a share
link that opens the same stack fit at the same frame in a new session.

AppTest cannot wait for worker threads, so the test re-runs the script until the fit is done.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from droplet_core.service.store import FitStore, default_store_root
from droplet_core.service.timelapse import load_timelapse
from droplet_core.synthetic.scenes import encode_png
from droplet_core.synthetic.stack_scenes import make_stack

pytestmark = pytest.mark.slow  # fits a stack through the app

APP = str(Path(__file__).resolve().parents[1] / "app.py")
FIT_TIMEOUT_S = 400


def timelapse_page() -> AppTest:
    """A new session on the Time-lapse page (run twice first: see test_app.open_app)."""
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.run()
    at.switch_page("pages/timelapse.py").run()
    return at


def keyed(at: AppTest, kind: str, key: str):
    found = [element for element in at.get(kind) if getattr(element, "key", None) == key]
    return found[0] if found else None


def figure(at: AppTest, key: str) -> dict:
    return json.loads(keyed(at, "plotly_chart", key).proto.spec)


def values(field) -> list:
    """A figure's data array: a list, or Plotly's binary ``{"dtype", "bdata"}`` form."""
    if isinstance(field, dict) and "bdata" in field:
        return np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"]).tolist()
    return list(field)


def metric(at: AppTest, label: str):
    return next((m.value for m in at.metric if m.label == label), None)


def query(at: AppTest, name: str) -> str:
    value = at.query_params[name]
    return value[0] if isinstance(value, list) else value


def test_a_movie_is_fitted_followed_and_shared():
    frames, truth, events = make_stack(0)
    at = timelapse_page()
    assert not at.exception
    files = [(f"t{i + 1}.png", encode_png(frame), "image/png") for i, frame in enumerate(frames)]
    files.append(("t9.png", encode_png(frames[0])[:200], "image/png"))  # a truncated last frame
    at.file_uploader(key="tl_upload").set_value(files)
    at.text_input(key="tl_interval").set_value("2s")
    next(b for b in at.button if b.label == "Fit stack").click().run()
    assert not at.exception, at.exception
    deadline = time.monotonic() + FIT_TIMEOUT_S
    while metric(at, "Frames") is None:
        assert time.monotonic() < deadline, "the stack fit did not finish"
        assert not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.run()
        assert not at.exception, at.exception

    assert metric(at, "Frames") == "8"
    assert int(metric(at, "Coalescences")) >= len(events)
    assert any("t9.png" in w.value and "truncated" in w.value for w in at.warning)
    overlay = figure(at, "tl_overlay")
    centres = next(trace for trace in overlay["data"] if trace.get("name") == "centres")
    true_first = (truth["frame"] == 0).sum()
    assert true_first - 2 <= len(values(centres["x"])) <= true_first + 12
    over_time = figure(at, "tl_over_time")
    assert any(trace["type"] == "heatmap" for trace in over_time["data"])
    marked = [trace for trace in over_time["data"] if trace.get("name") == "coalescence"]
    assert marked and len(values(marked[0]["x"])) == int(metric(at, "Coalescences"))
    # The droplet shown first is followed through every frame, whole, and among the largest.
    shown = at.selectbox(key="tl_track").value
    track_radius = figure(at, "tl_track_radius")
    assert track_radius["layout"]["title"]["text"] == f"Droplet {shown}: radius over time"
    _, tables = load_timelapse(FitStore(default_store_root()), query(at, "stack"))
    median_radius = tables.tracks.groupby("track")["radius_px"].median()
    assert median_radius[shown] >= median_radius.quantile(0.9)
    assert (tables.tracks["track"] == shown).sum() == 8
    assert figure(at, "tl_over_time")["layout"]["xaxis3"]["title"]["text"] == "time (s)"

    at.slider(key="tl_frame").set_value(4).run()
    assert not at.exception
    assert figure(at, "tl_overlay")["layout"]["title"]["text"] == "Frame 4"
    assert query(at, "frame") == "4"
    paths = next(trace for trace in figure(at, "tl_overlay")["data"] if trace.get("name", "").startswith("path"))
    assert sum(v is None for v in paths["x"]) >= 0.8 * (truth["frame"] == 3).sum()  # most droplets show a path
    record_id = query(at, "stack")
    assert any(f"stack={record_id}&frame=4" in code.value for code in at.code)

    again = timelapse_page()
    again.query_params["stack"] = record_id
    again.query_params["frame"] = "3"
    again.run()
    assert not again.exception and not again.error
    assert metric(again, "Frames") == "8"
    assert again.slider(key="tl_frame").value == 3
    assert figure(again, "tl_overlay")["layout"]["title"]["text"] == "Frame 3"


def test_bad_stacks_and_links_give_clear_messages():
    at = timelapse_page()
    at.file_uploader(key="tl_upload").set_value(
        [("movie.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4")]
    )
    next(b for b in at.button if b.label == "Fit stack").click().run()
    assert not at.exception
    assert any("This stack cannot be fitted" in e.value and "movie.mp4" in e.value for e in at.error)

    for link, message in (("../../etc/passwd", "not valid"), ("0123456789abcdef0123456789abcdef", "No finished stack")):
        at = timelapse_page()
        at.query_params["stack"] = link
        at.run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
