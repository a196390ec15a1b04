"""Droplet dashboard: entry point, navigation and the state shared by every page.

Run with ``streamlit run app.py``. The pages are the files in ``pages/``, listed
explicitly with ``st.navigation`` + ``st.Page`` (the current API; the auto-discovered
``pages/`` folder is "legacy" in Streamlit's docs).

Why ``st.navigation`` with a folder named ``pages/``, and the two reruns below:
Streamlit decides once per server process, when the first session starts, whether the
app "uses the pages directory"; until ``st.navigation`` has run, it treats ``pages/`` as
a legacy multipage folder and runs the first script run through its legacy router. Two
things then go wrong (both reproduced in tests): (1) if that first request is a deep
link (a share link ``/results?fit=...``), Streamlit runs ``pages/results.py`` directly,
without this script, and shows the legacy menu ("app, compare, fit, ..."); (2) widget
ids of that first run differ from later runs, so the user's first interaction (e.g. an
upload) is lost. Hence: ``main`` reruns once at the start of every new session, before
any page renders, and ``page_start`` (first call of every page) detects a run that did
not come through ``main``, calls ``st.navigation`` itself (switching the process to the
modern behaviour) and, on a session's first run, reruns. Both reruns happen before any
widget or heavy work.

This file is both the script Streamlit runs (as ``__main__``) and the module ``app`` the
pages import for shared helpers; the main block hands over to the imported module so
that one copy of every ``st.cache_resource`` function (one job registry) exists.

No model maths here: everything numeric comes from ``droplet_core``; figures are built in
``app_support.figures``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import streamlit as st

from droplet_core.channels import CHANNEL_LABELS, CHANNELS, all_channels
from droplet_core.images import ImageError, load_image, max_pixels_limit
from droplet_core.results import FitResult
from droplet_core.store import FitStore, StoreError, default_store_root, is_valid_fit_id

APP_DIR = Path(__file__).resolve().parent
# Bump when cached values computed here change meaning (cache keys cover only the source
# of the cached function, not droplet_core).
CACHE_VERSION = "1"

# (script, title, icon, url path); the first is the default page.
PAGE_SPECS = (
    ("pages/image.py", "Image", ":material/image:", "image"),
    ("pages/fit.py", "Fit", ":material/play_circle:", "fit"),
    ("pages/results.py", "Results", ":material/bubble_chart:", "results"),
    ("pages/gallery.py", "Mask gallery", ":material/grid_view:", "gallery"),
    ("pages/compare.py", "Compare", ":material/compare:", "compare"),
    ("pages/batch.py", "Batch", ":material/stacks:", "batch"),
)
PAGE_FILES = {url: script for script, _, _, url in PAGE_SPECS}
_ROUTED_KEY = "_droplet_routed"
_STARTED_KEY = "_droplet_session_started"


# -- navigation --------------------------------------------------------------------------


def navigation():
    pages = [
        st.Page(script, title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (script, title, icon, url) in enumerate(PAGE_SPECS)
    ]
    return st.navigation(pages, position="sidebar")


def main() -> None:
    st.set_page_config(page_title="Droplet", page_icon=":material/bubble_chart:", layout="wide")
    page = navigation()
    if not st.session_state.get(_STARTED_KEY):
        # First run of a session (may have come through the legacy router): start clean.
        st.session_state[_STARTED_KEY] = True
        st.rerun()
    st.session_state[_ROUTED_KEY] = True
    page.run()


def page_start(url_path: str) -> None:
    """First call of every page: navigation guard (see the module docstring) and sidebar."""
    if not st.session_state.pop(_ROUTED_KEY, False):
        # Run directly by Streamlit's legacy router, without main(): register the real
        # navigation (turns the legacy router off for this process) and start again.
        navigation()
        if not st.session_state.get(_STARTED_KEY):
            st.session_state[_STARTED_KEY] = True
            st.rerun()
        # Later runs can still arrive here under AppTest, which resets Streamlit's
        # pages-directory flag before every run; they render normally.
    sidebar(url_path)


# -- shared resources (one per server process) ----------------------------------------------


def store_root() -> str:
    """The store folder: ``$DROPLET_STORE`` or ./.droplet-store (read on every run, so tests
    can point each session at a temporary folder)."""
    return str(default_store_root().resolve())


@st.cache_resource(show_spinner=False)
def _store(root: str) -> FitStore:
    return FitStore(root)


@st.cache_resource(show_spinner=False)
def _registry(root: str):
    from droplet_core.jobs import JobRegistry

    return JobRegistry(_store(root))


def store() -> FitStore:
    return _store(store_root())


def registry():
    """The process-wide ``JobRegistry`` (thread-safe; shared by all sessions)."""
    return _registry(store_root())


@st.cache_resource(show_spinner="Starting JAX ...")
def device_description() -> str:
    """The device fits run on (imports the fit engine, hence JAX, once)."""
    try:
        from droplet_core.provenance import jax_device_description

        return jax_device_description()
    except Exception as exc:  # the engine missing or JAX failing must not break the app
        return f"unavailable ({type(exc).__name__}: {exc})"


@st.cache_resource(show_spinner=False)
def _demo_sha(root: str) -> str:
    from droplet_core.scenes import demo_image_bytes

    return _store(root).save_image(demo_image_bytes())


def demo_sha() -> str:
    return _demo_sha(store_root())


@st.cache_resource(show_spinner="Decoding image ...", max_entries=6)
def _decoded_image(sha: str, root: str, version: str) -> np.ndarray:
    image = load_image(_store(root).image_bytes(sha), max_pixels=max_pixels_limit())
    image.flags.writeable = False  # shared between sessions: read-only
    return image


def decoded_image(sha: str) -> np.ndarray:
    """The stored image ``sha`` as float32 RGB (raises StoreError / ImageError)."""
    return _decoded_image(sha, store_root(), CACHE_VERSION)


@st.cache_resource(show_spinner="Computing channels ...", max_entries=6)
def _channel_thumbnails(sha: str, root: str, version: str) -> dict[str, np.ndarray]:
    from app_support.figures import THUMB_SIDE, display_factor, reduce_for_display

    image = _decoded_image(sha, root, version)
    small = reduce_for_display(image, display_factor(image.shape[0], image.shape[1], THUMB_SIDE))
    return all_channels(small)


def channel_thumbnails(sha: str) -> dict[str, np.ndarray]:
    """Every single channel of a reduced copy of the image (for the small multiples)."""
    return _channel_thumbnails(sha, store_root(), CACHE_VERSION)


@st.cache_resource(show_spinner="Loading fit ...", max_entries=12)
def _load_fit(fit_id: str, root: str, version: str) -> FitResult:
    return _store(root).load(fit_id)


def load_fit(fit_id: str) -> FitResult:
    """A stored fit (raises StoreError for malformed, unknown or unreadable ids)."""
    if not is_valid_fit_id(fit_id):
        raise StoreError("malformed fit id")
    return _load_fit(fit_id, store_root(), CACHE_VERSION)


# -- session state ------------------------------------------------------------------------


def current_image_sha() -> str:
    """The image the user works on; the built-in demo scene until they upload one."""
    sha = st.session_state.get("image_sha")
    if not sha:
        sha = demo_sha()
        st.session_state["image_sha"] = sha
        st.session_state["image_name"] = "demo scene (built in)"
    return sha


def set_current_image(sha: str, name: str) -> None:
    if st.session_state.get("image_sha") != sha:
        st.session_state["image_sha"] = sha
        st.session_state["image_name"] = name
        st.session_state["crop"] = None
        st.session_state.pop("w_crop_on", None)
        st.session_state.pop("w_crop_x", None)
        st.session_state.pop("w_crop_y", None)


def current_fit_id() -> str | None:
    fit_id = st.session_state.get("fit_id")
    return fit_id if is_valid_fit_id(fit_id) else None


def set_current_fit(fit_id: str) -> None:
    st.session_state["fit_id"] = fit_id
    history = [f for f in st.session_state.get("fit_history", []) if f != fit_id]
    st.session_state["fit_history"] = [fit_id] + history[:19]


def fit_from_url_or_session(show_errors: bool = True) -> FitResult | None:
    """The fit a results page shows: ``?fit=<id>`` if present (share links), else the
    session's current fit. Keeps ``?fit=`` in the URL. Invalid ids give an ``st.error``
    and never touch the disk (validated before any store access)."""
    requested = st.query_params.get("fit")
    if requested is not None:
        if not is_valid_fit_id(requested):
            if show_errors:
                st.error(
                    "This link's fit id is not valid: a fit id is 32 lowercase hexadecimal "
                    "characters. Check that the whole link was copied."
                )
            return None
        try:
            result = load_fit(requested)
        except StoreError:
            if show_errors:
                st.error(
                    f"No stored fit with id `{requested}`. It may have been made on another "
                    "server or its store was cleared; run the fit again from the Fit page."
                )
            return None
        if st.session_state.get("fit_id") != requested:
            set_current_fit(requested)
        return result
    fit_id = current_fit_id()
    if fit_id is None:
        return None
    try:
        result = load_fit(fit_id)
    except StoreError as exc:
        if show_errors:
            st.error(f"The current fit cannot be loaded: {exc}")
        return None
    st.query_params["fit"] = fit_id
    return result


def share_url(url_path: str, params: dict[str, str]) -> str:
    """An absolute link to ``url_path`` with ``params``, from the URL the user is on."""
    base = ""
    try:
        base = st.context.url or ""
    except Exception:
        base = ""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    for _, _, _, url in PAGE_SPECS:
        if path.endswith("/" + url):
            path = path[: -len(url) - 1]
            break
    if not parts.netloc:
        return f"/{url_path}?{urlencode(params, safe=',')}"
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/{url_path}", urlencode(params, safe=","), ""))


def share_box(url_path: str, params: dict[str, str]) -> None:
    """A copyable share link (st.code has a copy button)."""
    st.caption("Share link: opens this stored fit without refitting")
    st.code(share_url(url_path, params), language=None)


def image_for_fit(result: FitResult) -> np.ndarray | None:
    """The uploaded image of a fit from the store (None, with a warning, if missing)."""
    try:
        return decoded_image(result.image_sha256)
    except (StoreError, ImageError) as exc:
        st.warning(f"The original image of this fit is not in the store ({exc}); showing the fitted channel.")
        return None


def fit_label(info: dict) -> str:
    """Short human label of a stored fit's info dict."""
    settings = info.get("settings", {})
    created = str(info.get("created", ""))[:16].replace("T", " ")
    count = info.get("droplet_count", "?")
    status = "" if info.get("status") == "done" else f" ({info.get('status')})"
    return (
        f"{settings.get('model', '?')} · {settings.get('channel', '?')} · {count} droplets · "
        f"{settings.get('steps', '?')} steps · {created} · {str(info.get('fit_id', ''))[:8]}{status}"
    )


def channel_label(name: str) -> str:
    return f"{name} — {CHANNEL_LABELS.get(name, name)}"


SINGLE_CHANNELS = tuple(c for c in CHANNELS if c != "rgb")


# -- sidebar --------------------------------------------------------------------------------


def sidebar(url_path: str) -> None:
    with st.sidebar:
        st.markdown("### :material/bubble_chart: Droplet")
        st.caption("Probabilistic droplet fitting for chemical-microscopy images.")
        try:
            sha = current_image_sha()
            image = decoded_image(sha)
            st.markdown(
                f"**Image:** {st.session_state.get('image_name', 'uploaded image')}  \n"
                f"{image.shape[1]} × {image.shape[0]} px · `{sha[:10]}`"
            )
        except Exception as exc:  # noqa: BLE001 - never let the sidebar break a page
            st.warning(f"No image: {exc}")
        fit_id = current_fit_id()
        if fit_id:
            st.markdown(f"**Current fit:** `{fit_id[:12]}`")
        st.markdown(f"**JAX device:** `{device_description()}`")
        st.caption(f"Store: `{store_root()}`")


if __name__ == "__main__":
    # Hand over to the importable module ``app`` so pages share its caches.
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    import app as _app

    _app.main()
