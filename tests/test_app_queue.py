"""The Fit page and the shared queue, with AppTest: a session whose fit waits behind another
session's sees how many fits are ahead and about how long it waits; a session over its limit
is told so and keeps what it has. Fits are gated fakes (test_jobs.FakeFit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_jobs import WAIT_S, FakeFit

from droplet_core.service.jobs import QueueSettings

pytestmark = pytest.mark.slow  # drives the app with AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def fit_page_session() -> AppTest:
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.run()
    at.switch_page("pages/fit.py").run()
    return at


def press_fit(at: AppTest, seed: int) -> None:
    at.number_input(key="w_seed").set_value(seed)
    next(b for b in at.button if b.label == "Fit").click().run()


@pytest.fixture
def gated_queue(monkeypatch):
    from app_support import app

    registry = app.registry()
    fake = FakeFit()
    monkeypatch.setattr(registry, "_fit_fn", fake)
    yield registry, fake
    for job in registry.jobs():
        job.stop()
    fake.release(1000)
    for job in registry.jobs():
        assert job.wait(WAIT_S)


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_a_queued_fit_shows_the_fits_ahead_and_the_wait(gated_queue):
    registry, fake = gated_queue
    alice = fit_page_session()
    press_fit(alice, seed=7001)
    assert fake.started.wait(WAIT_S)
    bob = fit_page_session()
    press_fit(bob, seed=7002)
    assert not bob.exception
    [text] = progress_texts(bob)
    assert text.startswith("Queued: 1 fit ahead of yours · about ")
    assert text.endswith(" to wait (fits start in turn across everyone using this server)")
    assert any(b.label == "Stop" for b in bob.button)
    # Bob stops his queued fit: it ends at once and nothing was fitted.
    next(b for b in bob.button if b.label == "Stop").click().run()
    bob.run()
    assert any("Stopped before the first step" in w.value for w in bob.warning)
    assert fake.calls == 1


def test_a_session_over_its_limit_is_told_and_keeps_its_fits(gated_queue, monkeypatch):
    registry, fake = gated_queue
    monkeypatch.setattr(registry, "queue_settings", QueueSettings(session_limit=1))
    at = fit_page_session()
    press_fit(at, seed=7003)
    assert fake.started.wait(WAIT_S)
    running = at.session_state["job_id"]
    press_fit(at, seed=7004)
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "Not started: you have 1 fit queued or running, the most one session may have at once (1); wait for one "
        "to finish or stop it."
    ]
    assert at.session_state["job_id"] == running


def test_a_malformed_session_limit_is_one_line_on_the_fit_page(monkeypatch, tmp_path):
    # A store folder of its own: the registry of this server process is made anew for it.
    monkeypatch.setenv("DROPLET_STORE", str(tmp_path))
    monkeypatch.setenv("DROPLET_SESSION_LIMIT", "lots")
    at = fit_page_session()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This server's fit queue is misconfigured: DROPLET_SESSION_LIMIT must be a whole number, not 'lots'."
    ]


def test_the_sidebar_names_the_cluster_the_fits_run_on(monkeypatch, tmp_path):
    monkeypatch.setenv("DROPLET_STORE", str(tmp_path))
    monkeypatch.setenv("DROPLET_SCHEDULER", "tcp://lab-gpu:8786")
    at = fit_page_session()
    assert not at.exception
    assert any(m.value.startswith("Fits run on: the Dask cluster at `tcp://lab-gpu:8786`") for m in at.sidebar.markdown)
