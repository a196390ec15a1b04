"""Time-lapse page: upload a stack, fit every frame in the background, then step or play through
the frames with each droplet's recent path, see count, mean radius and the radius distribution
over time with events marked, and one droplet's radius over time with its 90 % interval.

A stack fit's files live in the store under ``timelapses/<id>/`` (``droplet_core.service.timelapse``)
and the stack itself among the store's images, so ``?stack=<id>&frame=<n>`` shows a finished
stack fit at that frame again, also after a restart.
"""

from __future__ import annotations

import io
import threading
import zipfile

import streamlit as st

from app_support import app
from app_support.timelapse_figures import (
    frame_overlay_figure,
    over_time_figure,
    track_radius_figure,
)
from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.imaging.stacks import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    StackError,
    parse_frame_interval,
    read_stack,
)
from droplet_core.service.store import StoreError
from droplet_core.service.timelapse import (
    TimelapseSettings,
    load_timelapse,
    record_folder,
    representative_track,
    run_timelapse,
    stack_id,
)
from droplet_core.settings import FitSettings, default_channel
from droplet_core.variants import variant_names

app.page_start("timelapse")
st.title("Time-lapse")
st.caption(
    "Fit every frame of a movie: the first frame in full, later frames with its learned droplet look, "
    "starting from the previous frame's droplets. Droplets are followed from frame to frame, and "
    "coalescence, splitting, appearance and disappearance are marked."
)

DEFAULTS = FitSettings()
PLAY_EVERY_S = 0.8
UPLOAD_TYPES = [s.lstrip(".") for s in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)] + ["zip"]


@st.cache_resource(show_spinner=False)
def running_stacks(root: str) -> tuple[dict[str, dict], threading.Lock]:
    """Stack fits submitted by this server process, by id: future, progress, stop event."""
    return {}, threading.Lock()


@st.cache_resource(show_spinner="Reading the stack ...", max_entries=2)
def stored_stack(sha: str, root: str):
    """The stack stored under ``sha``: one shared, read-only copy (``cache_data`` would pickle
    every frame on every rerun)."""
    store = app.store()
    return read_stack([(store.image_name(sha) or "stack", store.image_bytes(sha))])


def stack_file(files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The upload as one file for the store: itself, or several images zipped in their order."""
    if len(files) == 1:
        return files[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return "frames.zip", buffer.getvalue()


# -- request ------------------------------------------------------------------------------
with st.form("timelapse_form", border=True):
    uploads = st.file_uploader(
        "A stack: multi-page TIFF / OME-TIFF, a video (MP4, AVI), a zip of images, or several images (in name order)",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="tl_upload",
    )
    c1, c2, c3 = st.columns(3)
    with c1:
        model = st.radio(
            "Model", variant_names(), index=variant_names().index(DEFAULTS.model), horizontal=True, key="tl_model"
        )
        channel = st.selectbox(
            "Channel",
            app.SINGLE_CHANNELS,
            format_func=app.channel_label,
            key="tl_channel",
            index=app.SINGLE_CHANNELS.index(DEFAULTS.channel),
        )
    with c2:
        downscale = st.selectbox(
            "Downscale",
            app.DOWNSCALE_OPTIONS,
            format_func=app.downscale_label,
            key="tl_downscale",
            help="Chosen on the first frame and kept for all frames.",
        )
        first_frame = st.number_input("Frame fitted in full first", 1, 100_000, 1, key="tl_first")
    with c3:
        interval_text = st.text_input(
            "Time between frames", "", placeholder="e.g. 2s, 500ms (empty: from the file)", key="tl_interval"
        )
    submitted = st.form_submit_button("Fit stack", type="primary", icon=":material/play_arrow:")

root = app.store_root()
jobs, jobs_lock = running_stacks(root)

if submitted:
    try:
        files = [(f.name, f.getvalue()) for f in uploads or []]
        if not files:
            raise StackError("upload a stack first")
        stack = read_stack(files)
        interval = parse_frame_interval(interval_text) if interval_text.strip() else None
        if first_frame > stack.n_frames:
            raise ValueError(f"the stack has {stack.n_frames} usable frames; frame {first_frame} is not one of them")
        settings = TimelapseSettings(
            fit=FitSettings(
                model=model, channel=default_channel(model) if model == "neural" else channel, downscale=int(downscale)
            ),
            first_frame=int(first_frame) - 1,
            frame_interval_s=interval,
        )
    except (StackError, ValueError) as exc:
        st.error(f"This stack cannot be fitted: {' '.join(str(exc).split())}", icon=":material/error:")
    else:
        name, data = stack_file(files)
        store = app.store()
        sha = store.save_image(data)
        store.name_image(sha, name)
        record_id = stack_id(stack, settings)
        with jobs_lock:
            finished = (record_folder(store, record_id) / "record.json").is_file()
            if not finished and (record_id not in jobs or jobs[record_id]["future"].done()):
                state = {"done": 0, "total": stack.n_frames, "stop": threading.Event(), "problems": stack.problems}

                def report(done, total, frame, state=state):
                    state["done"], state["total"] = done, total

                # The app's one queue of fits: a stack waits its turn like a batch.
                state["future"] = (
                    app.registry()
                    .executor(f"stack {record_id}", settings.fit)
                    .submit(
                        run_timelapse, stack, settings, store, stack_sha256=sha, progress=report, stop=state["stop"]
                    )
                )
                jobs[record_id] = state
        st.query_params["stack"] = record_id
        st.query_params.pop("frame", None)
        st.session_state.pop("tl_frame", None)

# -- the stack fit in the URL ---------------------------------------------------------------
record_id = st.query_params.get("stack")
if record_id is None:
    st.info("Upload a stack and press **Fit stack**.", icon=":material/upload_file:")
    st.stop()
if not is_valid_fit_id(record_id):
    st.error("This link's stack id is not valid: a stack id is 32 lowercase hexadecimal characters.")
    st.stop()
job = jobs.get(record_id)
if job is not None and not job["future"].done():
    for problem in job["problems"]:
        st.warning(f"Left out: {problem}", icon=":material/warning:")

    @st.fragment(run_every=1.0)
    def progress_panel() -> None:
        st.progress(
            job["done"] / max(job["total"], 1),
            text=f"Fitting frame {min(job['done'] + 1, job['total'])} of {job['total']} ({job['done']} done)",
        )
        if st.button("Stop", key="tl_stop", icon=":material/stop:"):
            job["stop"].set()
        if job["future"].done():
            st.rerun()

    progress_panel()
    st.stop()
failure = job["future"].exception() if job is not None else None
if failure is not None:
    st.error(
        f"The stack fit failed: {' '.join(str(failure).split()) or type(failure).__name__}. "
        "Frames fitted before are kept in the store.",
        icon=":material/error:",
    )
    st.stop()
try:
    record, tables = load_timelapse(app.store(), record_id)
    stack = stored_stack(record["stack_sha256"], root)
except (LookupError, StoreError, StackError) as exc:
    if job is not None:
        st.warning(
            "The stack fit was stopped. Press **Fit stack** again to continue from the frames already fitted.",
            icon=":material/pause:",
        )
    else:
        st.error(
            f"No finished stack fit with id `{record_id}` on this server ({exc}). Upload the stack and fit it again."
        )
    st.stop()

# -- results ------------------------------------------------------------------------------
for problem in record.get("problems", []):
    st.warning(f"Left out: {problem}", icon=":material/warning:")
tracks, events, frames = tables.tracks, tables.events, tables.frames
settings = TimelapseSettings.from_dict(record["settings"])
known_interval = settings.frame_interval_s is not None or stack.frame_interval_s is not None
time_label = "time (s)" if known_interval else "frame"
n_frames = stack.n_frames
kinds = events["kind"].value_counts()
a, b, c, d = st.columns(4)
a.metric("Frames", n_frames)
b.metric("Droplets followed", int(tracks["track"].nunique()))
c.metric("Coalescences", int(kinds.get("coalescence", 0)))
d.metric(
    "Refits",
    int((frames["fit_kind"] == "refit").sum()),
    help="Frames whose look had changed so much that they were fitted in full again",
)

if "tl_frame" not in st.session_state:
    requested = st.query_params.get("frame", "1")
    st.session_state["tl_frame"] = min(max(int(requested), 1), n_frames) if requested.isdigit() else 1
st.toggle("Play", key="tl_play", help="Step through the frames")


@st.fragment(run_every=PLAY_EVERY_S if st.session_state.get("tl_play") else None)
def frame_view() -> None:
    if st.session_state.get("tl_play"):
        st.session_state["tl_frame"] = st.session_state["tl_frame"] % n_frames + 1
    frame = st.slider("Frame", 1, n_frames, key="tl_frame")
    st.query_params["frame"] = str(frame)
    row = frames[frames["frame"] == frame - 1].iloc[0]
    st.caption(
        f"{record['names'][frame - 1]} · {row['fit_kind']} fit · {int(row['droplet_count'])} droplets "
        f"(90 %: {int(row['count_low_90'])}–{int(row['count_high_90'])}) · drift "
        f"({row['drift_x_px']:.1f}, {row['drift_y_px']:.1f}) px · [open this frame's fit]"
        f"({app.share_url('results', {'fit': row['fit_id']})})"
    )
    chosen = st.plotly_chart(
        frame_overlay_figure(app.for_display(stack.frames[frame - 1]), tracks, frame - 1),
        key="tl_overlay",
        on_select="rerun",
        selection_mode=("points",),
        width="stretch",
    )
    points = (chosen or {}).get("selection", {}).get("points", []) if chosen else []
    picked = [p["customdata"][0] for p in points if p.get("customdata")]
    track_ids = sorted(tracks["track"].unique().tolist())
    if picked and int(picked[0]) in track_ids:
        st.session_state["tl_track"] = int(picked[0])
    if track_ids:
        if st.session_state.get("tl_track") not in track_ids:
            st.session_state["tl_track"] = representative_track(tracks, *stack.frames.shape[1:3])
        track_id = st.selectbox("Droplet (click one in the frame, or pick its track)", track_ids, key="tl_track")
        st.plotly_chart(
            track_radius_figure(tracks[tracks["track"] == track_id], events, track_id, time_label),
            key="tl_track_radius",
            width="stretch",
        )
    app.share_box("timelapse", {"stack": record_id, "frame": str(frame)})


frame_view()
st.plotly_chart(over_time_figure(frames, tracks, events, time_label), key="tl_over_time", width="stretch")
with st.expander(f"Events ({len(events)})"):
    st.dataframe(events, hide_index=True, key="tl_events")
folder = record_folder(app.store(), record_id)
left, middle, right = st.columns(3)
for column, name in ((left, "tracks.csv"), (middle, "events.csv"), (right, "frames.csv")):
    column.download_button(
        f"Download {name}", (folder / name).read_bytes(), file_name=name, mime="text/csv", key=f"tl_download_{name}"
    )
