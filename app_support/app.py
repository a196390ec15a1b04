"""What every page of the Droplet app shares: navigation, the store and job registry,
the session's current image and fit, share links, the sidebar and captions.

``app.py`` (the script Streamlit runs) calls ``main``; every page calls ``page_start``
first. Why ``st.navigation`` with a folder named ``pages/``, and the two reruns below:
Streamlit decides once per server process, when the first session starts, whether the
app "uses the pages directory"; until ``st.navigation`` has run, it treats ``pages/`` as
a legacy multipage folder and runs the first script run through its legacy router. Two
things then go wrong (both reproduced in tests): (1) if that first request is a deep
link (a share link ``/results?fit=...``), Streamlit runs ``pages/results.py`` directly,
without ``app.py``, and shows the legacy menu ("app, compare, fit, ..."); (2) widget
ids of that first run differ from later runs, so the user's first interaction (e.g. an
upload) is lost. Hence: ``main`` reruns once at the start of every new session, before
any page renders, and ``page_start`` (first call of every page) detects a run that did
not come through ``main``, calls ``st.navigation`` itself (switching the process to the
modern behaviour) and, on a session's first run, reruns. Both reruns happen before any
widget or heavy work.

Nothing here imports JAX: it starts with the first fit or detection (``device_description``
names the device only once it has).

No model maths here: everything numeric comes from ``droplet_core``; figures are built in
``app_support.figures``.
"""

from __future__ import annotations

import sys
import uuid
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import streamlit as st

from app_support import access, state
from app_support.run_times import timed_run
from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.imaging.channels import CHANNEL_LABELS, CHANNELS, all_channels
from droplet_core.imaging.display import DEFAULT_PERCENTILES, stretch_contrast
from droplet_core.imaging.images import ImageError, load_image, max_pixels_limit
from droplet_core.measurements.counting import DropletCount, count_of_table
from droplet_core.results import FitReport, FitResult
from droplet_core.service.store import FitStore, StoreError, default_store_root

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
    ("pages/timelapse.py", "Time-lapse", ":material/movie:", "timelapse"),
)
PAGE_FILES = {url: script for script, _, _, url in PAGE_SPECS}
# Pages that show the fit named by ``?fit=`` (share links).
FIT_LINK_PAGES = ("results", "gallery")
_ROUTED_KEY = "_droplet_routed"
_STARTED_KEY = "_droplet_session_started"


# -- navigation --------------------------------------------------------------------------


def navigation():
    pages = [
        st.Page(script, title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (script, title, icon, url) in enumerate(PAGE_SPECS)
    ]
    # Before the login (when one is asked for) not even the pages' names are shown.
    return st.navigation(pages, position="sidebar" if access.has_access() else "hidden")


def main() -> None:
    st.set_page_config(page_title="Droplet", page_icon=":material/bubble_chart:", layout="wide")
    page = navigation()
    if not st.session_state.get(_STARTED_KEY):
        # First run of a session (may have come through the legacy router): start clean.
        st.session_state[_STARTED_KEY] = True
        st.rerun()
    access.require_access()
    st.session_state[_ROUTED_KEY] = True
    with timed_run(page.title):
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
    access.require_access()
    collect_background_jobs()
    requested = st.query_params.get("fit")
    if (
        url_path in FIT_LINK_PAGES
        and is_valid_fit_id(requested)
        and requested != st.session_state.get(state.FIT_ID)
        and fit_report(requested) is not None
    ):
        set_current_fit(requested)  # before the sidebar, so that it names the linked fit and its image
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
    from droplet_core.service.jobs import JobRegistry, QueueSettings

    return JobRegistry(_store(root), queue=QueueSettings.from_env())


def store() -> FitStore:
    return _store(store_root())


def registry():
    """The process-wide ``JobRegistry`` (thread-safe; shared by all sessions): every fit the
    app starts waits in its queue, in this process or on the Dask cluster of ``DROPLET_SCHEDULER``."""
    try:
        return _registry(store_root())
    except ValueError as exc:  # a malformed DROPLET_SESSION_LIMIT
        st.error(f"This server's fit queue is misconfigured: {exc}.", icon=":material/error:")
        st.stop()


def session_lane() -> str:
    """This session's lane in the fit queue (fits are started round-robin across lanes)."""
    if "_droplet_lane" not in st.session_state:
        st.session_state["_droplet_lane"] = uuid.uuid4().hex
    return st.session_state["_droplet_lane"]


def device_description() -> str:
    """The device fits run on, once JAX has started (a fit or a detection starts it)."""
    if "jax" not in sys.modules:
        return "not known until the first fit or detection starts JAX"
    return _jax_device_description()


@st.cache_resource(show_spinner=False)
def _jax_device_description() -> str:
    try:
        from droplet_core.provenance import jax_device_description

        return jax_device_description()
    except Exception as exc:  # the engine missing or JAX failing must not break the app
        return f"unavailable ({type(exc).__name__}: {exc})"


@st.cache_resource(show_spinner=False)
def _demo_sha(root: str) -> str:
    from droplet_core.synthetic.scenes import demo_image_bytes

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
# One source of truth per session (keys in ``app_support.state``): the current image, the
# current fit (always a fit of the current image, or None) and this session's fits, newest
# first (its own and those it opened by link; no page lists any other fit of the store).

DEMO_NAME = "demo scene (built in)"


def current_image_sha() -> str:
    """The image the user works on; the built-in demo scene until they upload one."""
    sha = st.session_state.get(state.IMAGE_SHA)
    if not sha:
        sha = demo_sha()
        st.session_state[state.IMAGE_SHA] = sha
        st.session_state[state.IMAGE_NAME] = DEMO_NAME
    return sha


def current_image_name() -> str:
    current_image_sha()
    return st.session_state.get(state.IMAGE_NAME) or "image"


def set_current_image(sha: str, name: str) -> None:
    """Make ``sha`` the current image. What belonged to the previous image (crop,
    downscale, detections, the running job's display, the current fit) is cleared; the
    session's fits stay listed, and the newest of them of this image becomes current."""
    if st.session_state.get(state.IMAGE_SHA) == sha:
        return
    st.session_state[state.IMAGE_SHA] = sha
    st.session_state[state.IMAGE_NAME] = name
    if name != DEMO_NAME:
        try:
            store().name_image(sha, name)
        except StoreError:
            pass
    if st.session_state.get(state.JOB_ID):
        # A fit of the previous image may still run: it joins this session's list when done.
        st.session_state[state.BACKGROUND_JOBS] = [
            *st.session_state.get(state.BACKGROUND_JOBS, []),
            st.session_state[state.JOB_ID],
        ]
    for key in state.PER_IMAGE_KEYS:
        st.session_state.pop(key, None)
    st.session_state[state.FIT_ID] = next(
        (f for f in session_fit_ids() if (report := fit_report(f)) is not None and report.image_sha256 == sha), None
    )


def current_fit_id() -> str | None:
    fit_id = st.session_state.get(state.FIT_ID)
    return fit_id if is_valid_fit_id(fit_id) else None


def session_fit_ids() -> list[str]:
    """This session's fits, newest first: made here or opened by a link."""
    return [f for f in st.session_state.get(state.FIT_HISTORY, []) if is_valid_fit_id(f)]


def collect_background_jobs() -> None:
    """Fits started on an earlier image that have finished since: into this session's list."""
    waiting = st.session_state.get(state.BACKGROUND_JOBS)
    if not waiting:
        return
    still = []
    for job_id in waiting:
        job = registry().get(job_id)
        if job is None:
            continue
        if job.snapshot().status == "running":
            still.append(job_id)
        elif job.result() is not None:
            remember_fit(job.result().fit_id)
    st.session_state[state.BACKGROUND_JOBS] = still


def remember_fit(fit_id: str) -> None:
    """Add a fit to this session's list (made here, or opened by a link)."""
    history = [f for f in session_fit_ids() if f != fit_id]
    st.session_state[state.FIT_HISTORY] = [fit_id] + history[:49]


def set_current_fit(fit_id: str) -> None:
    """Make ``fit_id`` the current fit, and its image the current image."""
    remember_fit(fit_id)
    report = fit_report(fit_id)
    sha = report.image_sha256 if report is not None else None
    if sha and sha != st.session_state.get(state.IMAGE_SHA):
        name = DEMO_NAME if sha == demo_sha() else (store().image_name(sha) or f"image {sha[:8]}")
        set_current_image(sha, name)
    st.session_state[state.FIT_ID] = fit_id


@st.cache_resource(show_spinner=False, max_entries=256)
def _fit_report(fit_id: str, root: str) -> FitReport:
    return _store(root).fit_report(fit_id)


def fit_report(fit_id: str) -> FitReport | None:
    """A stored fit's report, or None when it is not stored."""
    try:
        return _fit_report(fit_id, store_root())
    except StoreError:
        return None


def image_label(sha: str) -> str:
    """What an image is called: the demo, its file name, or its short hash."""
    if sha == demo_sha():
        return DEMO_NAME
    if sha == st.session_state.get(state.IMAGE_SHA):
        return st.session_state.get(state.IMAGE_NAME) or f"image {sha[:8]}"
    return store().image_name(sha) or f"image {sha[:8]}"


def fit_label(report: FitReport) -> str:
    """A fit as a chemist names it: image file name, model, time (and its count)."""
    created = report.created[:16].replace("T", " ")
    count = report.count.count if report.count is not None else "?"
    status = "" if report.status == "done" else f" ({report.status})"
    reused = " · look reused" if report.appearance_from else ""
    return f"{image_label(report.image_sha256)} · {report.model}{reused} · {created} UTC · {count} droplets{status}"


def fit_short_label(report: FitReport) -> str:
    """A fit in few words (figure titles): short image name, model, time."""
    name = image_label(report.image_sha256)
    name = name if len(name) <= 22 else name[:20] + "…"
    return f"{name} · {report.model} · {report.created[11:16]}"


DOWNSCALE_OPTIONS = (0, 1, 2, 3, 4, 6, 8)


def downscale_label(k: int) -> str:
    """How a downscale choice reads on every page (0 = automatic, from the droplets' size)."""
    if k == 0:
        return "automatic (from the droplets' size)"
    return "none (1x)" if k == 1 else f"{k}x"


def fit_from_url_or_session(show_errors: bool = True) -> FitResult | None:
    """The fit a results page shows: ``?fit=<id>`` if present (share links), else the
    session's current fit. Keeps ``?fit=`` in the URL. Invalid ids give an ``st.error``
    and never touch the disk (validated before any store access). A fit opened by link
    joins this session's list and becomes current, with its image."""
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
        if st.session_state.get(state.FIT_ID) != requested:
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


def channel_label(name: str) -> str:
    return f"{name} — {CHANNEL_LABELS.get(name, name)}"


SINGLE_CHANNELS = tuple(c for c in CHANNELS if c != "rgb")


# -- sidebar --------------------------------------------------------------------------------


def sidebar(url_path: str) -> None:
    with st.sidebar:
        st.markdown("### :material/bubble_chart: Droplet")
        st.caption("Finds and measures droplets in microscopy images by fitting a model of the whole image.")
        try:
            sha = current_image_sha()
            image = decoded_image(sha)
            st.markdown(f"**Image:** {current_image_name()}  \n{image.shape[1]} × {image.shape[0]} px")
        except Exception as exc:  # noqa: BLE001 - never let the sidebar break a page
            st.warning(f"No image: {exc}")
        fit_id = current_fit_id()
        report = fit_report(fit_id) if fit_id else None
        if report is not None:
            count = report.count.count if report.count is not None else "?"
            st.markdown(f"**Current fit:** {report.model}, {report.created[11:16]} UTC, {count} droplets")
        else:
            st.markdown("**Current fit:** none yet for this image")
        st.slider(
            "Display contrast (percentiles)",
            0.0,
            100.0,
            DEFAULT_PERCENTILES,
            step=0.5,
            key="w_display_percentiles",
            help="Images are shown stretched so that these percentiles of their brightness become black and "
            "white, so dim and 16-bit images are visible. Only the display changes: fits always use the "
            "image's raw values. 0–100 spans the image's whole range.",
        )
        access.account_box()
        with st.expander("About this server"):
            scheduler = registry().queue_settings.scheduler
            where = f"the Dask cluster at `{scheduler}`" if scheduler else f"`{device_description()}`"
            st.markdown(
                f"Fits run on: {where}  \nFit store: `{store_root()}`  \n"
                f"Image id (SHA-256): `{st.session_state.get(state.IMAGE_SHA, '')[:16]}…`"
            )


def display_percentiles() -> tuple[float, float]:
    """The display contrast the user chose in the sidebar."""
    low, high = st.session_state.get("w_display_percentiles", DEFAULT_PERCENTILES)
    return float(low), float(high)


def for_display(image: np.ndarray) -> np.ndarray:
    """``image`` contrast-stretched for display (the sidebar's percentiles); fits never see it."""
    return stretch_contrast(image, display_percentiles())


def show_verdict(report: FitReport) -> None:
    """The fit's verdict on itself, plainly, with what to try (top of Fit and Results)."""
    verdict = report.verdict
    if verdict is None:
        st.info(
            "This fit was made before Droplet judged its own fits; refit it to see how well it explains the image.",
            icon=":material/info:",
        )
        return
    detail = (
        f"The model explains {verdict.explained_fraction:.0%} of the image's structure at droplet size; "
        f"what remains is {verdict.relative_rmse:.0%} of the image's contrast."
    )
    if verdict.quality == "good":
        st.success(f"**Good fit.** {detail}", icon=":material/verified:")
        return
    problems = "".join(f"\n- {p[0].upper()}{p[1:]}" for p in verdict.problems)
    body = f"{problems}\n\n**What to try:** {' '.join(verdict.advice)}  \n{detail}"
    if verdict.quality == "partial":
        st.warning(f"**The fit explains this image only in part.**{body}", icon=":material/report:")
    else:
        st.error(f"**This fit did not explain the image: do not trust its droplets.**{body}", icon=":material/report:")


def downscale_caption(report: FitReport) -> str:
    """At which downscale the fit ran, and why (an automatic choice follows the droplets' size)."""
    choice = report.downscale_choice
    if choice:
        return f"Fitted at downscale {report.downscale}x, chosen from the droplets' size: {choice['reason']}."
    return f"Fitted at downscale {report.downscale}x, as set on the Image page."


def fit_count(report: FitReport, droplets) -> DropletCount:
    """The fit's droplet count (``droplet_core.measurements.counting``), for fits of every age."""
    return report.count if report.count is not None else count_of_table(droplets)


def count_caption(report: FitReport, droplets) -> str:
    """The count's 90 % interval and how many candidates are doubtful, in words."""
    count = fit_count(report, droplets)
    text = f"90 % interval {count.low}–{count.high}"
    if count.doubtful:
        text += f" · {count.candidates} candidates, {count.doubtful} of them doubtful (probably not droplets)"
    return text
