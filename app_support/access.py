"""Who may use this server: everyone (the default, for one user on their own machine), the
holders of a shared lab password, or people who log in with the lab's identity provider.

- **OIDC login**: an ``[auth]`` section in ``.streamlit/secrets.toml`` (Streamlit's own
  ``st.login`` configuration: ``redirect_uri``, ``cookie_secret``, ``client_id``,
  ``client_secret``, ``server_metadata_url``). Streamlit keeps the login in a cookie, so a
  share link opens directly for someone already logged in.
- **Lab password**: ``DROPLET_LAB_PASSWORD`` in the server's environment; each new browser
  session asks for it once.

Either way, ``require_access`` runs before any page draws anything: without passing it, a
session sees the login and nothing else (no page, no fit, no share link's content, no
menu). Upload limits are read here too, so that pages can show them.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

from droplet_core.imaging.images import max_pixels_limit

PASSWORD_ENV_VAR = "DROPLET_LAB_PASSWORD"
OFF, PASSWORD, OIDC = "off", "password", "oidc"
_PASSED_KEY = "_droplet_password_passed"


def login_mode() -> str:
    """``"oidc"`` when secrets.toml has an ``[auth]`` section, else ``"password"`` when
    ``DROPLET_LAB_PASSWORD`` is set, else ``"off"``."""
    if st.secrets.load_if_toml_exists() and st.secrets.get("auth"):
        return OIDC
    if os.environ.get(PASSWORD_ENV_VAR):
        return PASSWORD
    return OFF


def has_access() -> bool:
    """Whether this session may see the app."""
    mode = login_mode()
    if mode == OIDC:
        # Missing until Streamlit has read the [auth] section: not logged in.
        return bool(st.user.get("is_logged_in", False))
    if mode == PASSWORD:
        return bool(st.session_state.get(_PASSED_KEY))
    return True


def require_access() -> None:
    """Draw the login and end this script run unless the session may see the app."""
    if has_access():
        return
    st.title("Droplet")
    if login_mode() == OIDC:
        st.info(
            "This lab server asks you to log in first; a link you were sent opens after that.", icon=":material/lock:"
        )
        st.button("Log in", type="primary", icon=":material/login:", on_click=st.login, key="login_button")
        st.stop()
    st.info(
        "This lab server asks for the lab's password; a link you were sent opens after that.", icon=":material/lock:"
    )
    with st.form("login_form", clear_on_submit=True):
        entered = st.text_input("Lab password", type="password", key="login_password")
        submitted = st.form_submit_button("Enter", type="primary", icon=":material/login:")
    if submitted:
        expected = os.environ.get(PASSWORD_ENV_VAR, "")
        if hmac.compare_digest(entered.encode(), expected.encode()):
            st.session_state[_PASSED_KEY] = True
            st.rerun()
        st.error("That is not the lab's password.", icon=":material/error:")
    st.stop()


def account_box() -> None:
    """Who is logged in, and a way out (sidebar); nothing when login is off."""
    mode = login_mode()
    if mode == OIDC and st.user.get("is_logged_in", False):
        st.caption(f"Logged in as {st.user.get('name') or st.user.get('email') or 'you'}")
        st.button("Log out", icon=":material/logout:", on_click=st.logout, key="logout_button")
    elif mode == PASSWORD:
        st.caption("Logged in with the lab password")
        if st.button("Log out", icon=":material/logout:", key="logout_button"):
            st.session_state.pop(_PASSED_KEY, None)
            st.rerun()


def max_upload_mb() -> int:
    """The largest upload this server takes, in MB (Streamlit's ``server.maxUploadSize``)."""
    return int(st.get_option("server.maxUploadSize"))


def upload_limits_text() -> str:
    """The upload limits in words, for captions under the uploaders."""
    return (
        f"Up to {max_upload_mb()} MB per file and {max_pixels_limit() / 1e6:.0f} megapixels per image "
        "(limits set by whoever runs this server)."
    )
