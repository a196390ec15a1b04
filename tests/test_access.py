"""Access control with AppTest: with the lab password set, a session sees the login and
nothing else (no page, no fit, no share link's content) until it enters the password; with
an OIDC provider configured, the app asks for the login and serves nothing before it. The
login-off case is every other app test."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from droplet_core.imaging.images import load_image
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings
from droplet_core.synthetic.scenes import demo_image_bytes

pytestmark = pytest.mark.slow  # drives the app with AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PASSWORD = "droplets-in-the-lab"
OIDC_SECRETS = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "not-a-real-secret",
    "client_id": "droplet-test",
    "client_secret": "not-a-real-client-secret",
    "server_metadata_url": "https://login.invalid/.well-known/openid-configuration",
}


@pytest.fixture(scope="module")
def stored_fit_id() -> str:
    """A short real fit of the built-in demo scene, in the tests' store."""
    from droplet_core.imaging.images import sha256_bytes
    from droplet_core.inference.engine import run_fit

    data = demo_image_bytes()
    store = FitStore()
    sha = store.save_image(data)
    assert sha == sha256_bytes(data)
    result = run_fit(load_image(data), FitSettings(steps=50), image_sha256=sha)
    store.save(result)
    return result.fit_id


def new_session(secrets: dict | None = None) -> AppTest:
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    if secrets is not None:
        at.secrets["auth"] = secrets
    return at


def visible_text(at: AppTest) -> str:
    """Everything a user could read on the page, sidebar included."""
    parts = [
        str(e.value)
        for kind in ("title", "markdown", "caption", "info", "success", "warning", "error", "code")
        for e in getattr(at, kind)
    ]
    parts += [m.label + str(m.value) for m in at.metric]
    return "\n".join(parts)


def assert_nothing_served(at: AppTest, fit_id: str) -> None:
    assert not at.exception
    assert [t.value for t in at.title] == ["Droplet"]
    assert not at.metric and not at.get("plotly_chart") and not at.get("dataframe")
    assert fit_id not in visible_text(at)
    assert not at.sidebar.children or not any(at.sidebar.get(kind) for kind in ("markdown", "caption", "slider"))
    assert not at.session_state["fit_history"] if "fit_history" in at.session_state else True


@pytest.mark.parametrize(
    "page, params",
    [
        ("pages/image.py", {}),
        ("pages/results.py", {"fit": "FIT"}),
        ("pages/gallery.py", {"fit": "FIT"}),
        ("pages/compare.py", {"fits": "FIT"}),
        ("pages/fit.py", {}),
        ("pages/batch.py", {"batch": "0" * 32}),
    ],
)
def test_password_mode_serves_no_page_before_login(monkeypatch, stored_fit_id, page, params):
    monkeypatch.setenv("DROPLET_LAB_PASSWORD", PASSWORD)
    at = new_session()
    for name, value in params.items():
        at.query_params[name] = value.replace("FIT", stored_fit_id)
    at.run()
    at.switch_page(page).run()
    assert_nothing_served(at, stored_fit_id)
    assert at.text_input(key="login_password").label == "Lab password"


def test_wrong_password_is_refused_and_the_right_one_opens_the_share_link(monkeypatch, stored_fit_id):
    monkeypatch.setenv("DROPLET_LAB_PASSWORD", PASSWORD)
    stored = FitStore().load(stored_fit_id)
    at = new_session()
    at.query_params["fit"] = stored_fit_id
    at.run()
    at.switch_page("pages/results.py").run()
    at.text_input(key="login_password").input("guess")
    next(b for b in at.button if b.label == "Enter").click().run()
    assert [e.value for e in at.error] == ["That is not the lab's password."]
    assert_nothing_served(at, stored_fit_id)

    at.text_input(key="login_password").input(PASSWORD)
    next(b for b in at.button if b.label == "Enter").click().run()
    at.run()
    assert not at.exception and not at.error
    droplets = next(m for m in at.metric if m.label == "Droplets")
    assert droplets.value == str(stored.report.count.count)
    assert any(f"results?fit={stored_fit_id}" in c.value for c in at.code)
    assert "Logged in with the lab password" in [c.value for c in at.sidebar.caption]


def test_oidc_mode_asks_for_login_and_serves_nothing_before_it(stored_fit_id):
    at = new_session(OIDC_SECRETS)
    at.query_params["fit"] = stored_fit_id
    at.run()
    at.switch_page("pages/results.py").run()
    assert_nothing_served(at, stored_fit_id)
    assert [b.label for b in at.button] == ["Log in"]
    assert not any(t.key == "login_password" for t in at.text_input)


def test_upload_limits_are_shown(monkeypatch):
    monkeypatch.setenv("DROPLET_MAX_PIXELS", "30000000")
    at = new_session()
    at.run()
    at.run()
    assert any(c.value.startswith("Up to 200 MB per file and 30 megapixels per image") for c in at.caption)
