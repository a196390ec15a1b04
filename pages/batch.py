"""Batch page: fit several uploaded images (or zip archives of them) with the same settings in
the background, watch progress, see counts and radius distributions per image, download all.

A batch's files live in the store folder under ``batches/<batch id>/`` (``images/`` as
uploaded, ``out/`` as ``python -m droplet_core batch`` writes it), so ``?batch=<id>``
shows a finished batch again, also after a restart. Identical requests (same files, same
settings) share one batch; every fit goes through the fit store, so images fitted before
are not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from app_support import access, app, state
from app_support.batch_figures import droplet_count_figure, radius_distribution_figure
from app_support.size_figures import batch_statistics_figure
from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.imaging.images import IMAGE_SUFFIXES
from droplet_core.service.batch import (
    FAILED,
    SubmittedBatch,
    submit_batch,
    summary_table,
    unpack_uploads,
    write_batch_outputs,
    write_images,
    zip_folder,
)
from droplet_core.settings import FitSettings, default_channel
from droplet_core.variants import variant_names

app.page_start("batch")
st.title("Batch")
st.caption(
    "Fit many images of the same kind with the same settings. Each image's fit is stored (and shareable) "
    "like a single fit; images fitted before with the same settings are not recomputed."
)

STEP_OPTIONS = [50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000]
DEFAULTS = FitSettings()


@st.cache_resource(show_spinner=False)
def running_batches(root: str) -> tuple[dict[str, SubmittedBatch], threading.Lock]:
    """Batches submitted by this server process, by batch id, and a lock for them."""
    return {}, threading.Lock()


def batch_folder(batch_id: str) -> Path:
    return Path(app.store_root()) / "batches" / batch_id


def batch_id_of(files: list[tuple[str, bytes]], settings: FitSettings, pixel_size_um: float | None = None) -> str:
    """32 hex characters naming this exact request: the files' names and bytes, the settings and
    the pixel size given for all images (it changes the read-out, not the fits)."""
    payload = {
        "files": [[name, hashlib.sha256(data).hexdigest()] for name, data in files],
        "settings": settings.to_dict(),
    }
    if pixel_size_um:
        payload["pixel_size_um"] = pixel_size_um
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@st.cache_data(show_spinner="Packing the download ...", max_entries=4)
def outputs_zip(out_dir: str, summary_mtime_ns: int) -> bytes:
    return zip_folder(out_dir)


# -- request ------------------------------------------------------------------------------
fit_choices = state.fit_choices()
fit_model = fit_choices.model
fit_channel = state.image_choices().channel
with st.form("batch_form", border=True):
    uploads = st.file_uploader(
        "Images, or zip archives of images",
        type=[s.lstrip(".") for s in IMAGE_SUFFIXES] + ["zip"],
        accept_multiple_files=True,
        key="batch_upload",
    )
    st.caption(access.upload_limits_text())
    st.caption(
        "Settings start from the Fit page's; the channel applies to gaussian and templates "
        "(neural always fits RGB). No crop: the images may differ in size."
    )
    c1, c2, c3 = st.columns(3)
    with c1:
        model = st.radio(
            "Model", variant_names(), index=variant_names().index(fit_model), horizontal=True, key="b_model"
        )
        channel = st.selectbox(
            "Channel",
            app.SINGLE_CHANNELS,
            format_func=app.channel_label,
            key="b_channel",
            index=app.SINGLE_CHANNELS.index(fit_channel) if fit_channel in app.SINGLE_CHANNELS else 0,
        )
    with c2:
        fit_steps = fit_choices.steps
        steps = st.select_slider(
            "Fitting effort (iterations)",
            STEP_OPTIONS,
            key="b_steps",
            value=fit_steps if fit_steps in STEP_OPTIONS else DEFAULTS.steps,
        )
        droplets = st.number_input(
            "Number of droplets (0 = let the fit decide)", 0, 20000, fit_choices.droplets, step=50, key="b_droplets"
        )
    with c3:
        fit_downscale = state.image_choices().downscale
        downscale = st.selectbox(
            "Downscale",
            app.DOWNSCALE_OPTIONS,
            format_func=app.downscale_label,
            key="b_downscale",
            index=app.DOWNSCALE_OPTIONS.index(fit_downscale) if fit_downscale in app.DOWNSCALE_OPTIONS else 0,
            help="Automatic: chosen per image (about 400,000 pixels are fitted).",
        )
        seed = st.number_input("Random seed", 0, 2**31 - 1, fit_choices.seed, key="b_seed")
        pixel_size_um = st.number_input(
            "Pixel size, all images (µm per pixel)",
            min_value=0.0,
            step=0.01,
            format="%.4f",
            key="b_pixel_size",
            help="0 = each file's own (ImageJ / OME-TIFF), else pixels. Sizes in the statistics and tables only.",
        )
    sources = [
        report
        for report in (app.fit_report(f) for f in app.session_fit_ids())
        if report is not None and report.model in ("templates", "neural") and not report.appearance_from
    ]
    labels = {report.fit_id: app.fit_label(report) for report in sources}
    appearance_from = st.selectbox(
        "Reuse the droplet look learned in",
        [None, *labels],
        key="b_appearance_from",
        format_func=lambda fit_id: "— learn the look from each image —" if fit_id is None else labels[fit_id],
        help="Keep the droplet look an earlier fit of this session learned (same model) for every image.",
    )
    submitted = st.form_submit_button("Run batch", type="primary", icon=":material/play_arrow:")

batches, batches_lock = running_batches(app.store_root())

if submitted:
    try:
        files = unpack_uploads([(f.name, f.getvalue()) for f in uploads or []])
        if not files:
            raise ValueError("upload at least one image (or a zip archive holding images)")
        source = next((report.settings for report in sources if report.fit_id == appearance_from), None)
        if source is not None and source.model != model:
            raise ValueError(f"the appearance of a {source.model} fit can only be reused by the {source.model} model")
        look = source or fit_choices
        settings = FitSettings(
            model=model,
            channel=default_channel(model) if model == "neural" else channel,
            downscale=int(downscale),
            droplets=int(droplets),
            steps=int(steps),
            seed=int(seed),
            learning_rate=fit_choices.learning_rate,
            mask_types=int(look.mask_types),
            mask_size=int(look.mask_size),
            appearance_from=appearance_from,
        )
    except ValueError as exc:
        st.error(f"This batch cannot be run: {' '.join(str(exc).split())}", icon=":material/error:")
    else:
        batch_id = batch_id_of(files, settings, float(pixel_size_um) or None)
        with batches_lock:
            if batch_id not in batches and not (batch_folder(batch_id) / "out" / "summary.csv").is_file():
                images = write_images(files, batch_folder(batch_id) / "images")
                # The images wait in the app's fit queue, as one more lane beside the sessions.
                executor = app.registry().executor(f"batch {batch_id}", settings)
                batches[batch_id] = submit_batch(
                    images, settings, executor, app.store_root(), float(pixel_size_um) or None
                )
        st.query_params["batch"] = batch_id

# -- the batch in the URL -------------------------------------------------------------------
batch_id = st.query_params.get("batch")
if batch_id is None:
    st.info("Upload images and press **Run batch**.", icon=":material/upload_file:")
    st.stop()
if not is_valid_fit_id(batch_id):
    st.error("This link's batch id is not valid: a batch id is 32 lowercase hexadecimal characters.")
    st.stop()
out = batch_folder(batch_id) / "out"
batch = batches.get(batch_id)

if batch is not None and not (out / "summary.csv").is_file():
    if not batch.done():

        @st.fragment(run_every=1.0)
        def progress_panel() -> None:
            outcomes = batch.finished_outcomes()
            failed = sum(o.status == FAILED for o in outcomes)
            st.progress(
                len(outcomes) / len(batch.images),
                text=f"Batch: {len(outcomes)} of {len(batch.images)} images finished · {failed} failed",
            )
            if outcomes:
                st.dataframe(summary_table(outcomes), hide_index=True, key="batch_progress_table")
            if batch.done():
                st.rerun()  # redraw the whole page with the results

        progress_panel()
        st.stop()
    with batches_lock:
        if not (out / "summary.csv").is_file():
            write_batch_outputs(batch.finished_outcomes(), app.store(), out)

if not (out / "summary.csv").is_file():
    st.error(f"No batch with id `{batch_id}` on this server. Upload the images and run it again.")
    st.stop()

# -- results ------------------------------------------------------------------------------
summary = pd.read_csv(out / "summary.csv", dtype={"fit_id": str, "error": str})
combined = pd.read_csv(out / "droplets.csv")
fitted = summary[summary["status"] != FAILED]
a, b, c = st.columns(3)
a.metric("Images fitted", f"{len(fitted)} of {len(summary)}")
b.metric("Droplets", int(fitted["droplet_count"].sum()))
c.metric("Failed", int((summary["status"] == FAILED).sum()))
for row in summary[summary["status"] == FAILED].itertuples():
    st.warning(f"**{row.image}** was not fitted: {row.error}", icon=":material/error:")
for row in summary[summary["fit_quality"] == "failed"].itertuples():
    st.warning(
        f"The fit of **{row.image}** did not explain the image: {row.fit_problems} Open it below and try "
        "another channel, model or downscale.",
        icon=":material/report:",
    )
st.dataframe(
    summary,
    hide_index=True,
    key="batch_summary",
    column_config={
        "fit_id": st.column_config.TextColumn("fit id"),
        "droplet_count": st.column_config.NumberColumn(
            "droplets", help="Expected number of droplets (each weighed by its probability of existing)"
        ),
        "count_low_90": st.column_config.NumberColumn("count, 90 % low"),
        "count_high_90": st.column_config.NumberColumn("count, 90 % high"),
        "median_radius": st.column_config.NumberColumn("median radius (px)", format="%.2f"),
        "rmse": st.column_config.NumberColumn("RMSE", format="%.4f"),
        "fit_quality": st.column_config.TextColumn(
            "fit quality", help="good / partial / failed: how much of the image the fit explains"
        ),
        "fit_problems": st.column_config.TextColumn("problems found", width="large"),
        "seconds": st.column_config.NumberColumn("seconds", format="%.1f"),
    },
)
if not fitted.empty:
    left, right = st.columns(2)
    left.plotly_chart(droplet_count_figure(summary), key="batch_counts", width="stretch")
    right.plotly_chart(radius_distribution_figure(combined), key="batch_radii", width="stretch")
    if "d50" in summary:
        st.plotly_chart(batch_statistics_figure(summary), key="batch_statistics", width="stretch")
        st.download_button(
            "Download the statistics per image (CSV)",
            summary.to_csv(index=False).encode(),
            file_name=f"statistics-{batch_id[:8]}.csv",
            mime="text/csv",
            key="batch_statistics_download",
        )
    st.markdown(
        "Open one image's fit: "
        + " · ".join(f"[{row.image}]({app.share_url('results', {'fit': row.fit_id})})" for row in fitted.itertuples())
    )
st.download_button(
    "Download everything (zip)",
    outputs_zip(str(out), (out / "summary.csv").stat().st_mtime_ns),
    file_name=f"droplet-batch-{batch_id[:8]}.zip",
    mime="application/zip",
    icon=":material/download:",
    key="batch_download",
)
st.caption("Share link: opens this batch's results")
st.code(app.share_url("batch", {"batch": batch_id}), language=None)
