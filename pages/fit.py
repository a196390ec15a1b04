"""Fit page: model variant and its settings (in a form), background fit with live progress,
Stop / Continue, identical requests served from the store, and instant detection by the
trained detector network with presence-threshold and minimum-radius sliders."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_support import app, state
from app_support.figures import loss_figure, overlay_figure
from droplet_core.imaging import images
from droplet_core.measurements.counting import DOUBTFUL_BELOW, doubtful_mask
from droplet_core.service.jobs import QueueFull
from droplet_core.service.store import StoreError
from droplet_core.settings import FitSettings, default_channel
from droplet_core.variants import variant_names

app.page_start("fit")
st.title("Fit")

MODEL_HELP = {
    "gaussian": "Round soft spots. Quickest; for simple bright or dark spots without rims. One channel.",
    "templates": "Recommended. Learns what your droplets look like (rims, highlights) from the image itself. "
    "One channel.",
    "neural": "Learns how droplets bend light in all three colours at once. Slowest; for colour images where "
    "droplets differ in colour.",
}
STEP_OPTIONS = [50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000]
LR_OPTIONS = [0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1]
DEFAULTS = FitSettings()
# Instant detections are kept down to this presence, so the slider can lower the threshold.
DETECT_FLOOR = 0.05

sha = app.current_image_sha()
try:
    image = app.decoded_image(sha)
except Exception as exc:  # noqa: BLE001
    st.error(f"The current image cannot be read: {exc}. Choose an image on the Image page.")
    st.stop()
choices = state.image_choices()
channel, crop, downscale = choices.channel, choices.crop, choices.downscale
crop_text = f"region x {crop[0]}–{crop[2]}, y {crop[1]}–{crop[3]}" if crop else "whole image"
downscale_text = app.downscale_label(downscale)
st.caption(
    f"Image **{app.current_image_name()}** ({image.shape[1]} × {image.shape[0]} px), {crop_text}, "
    f"downscale {downscale_text} — change these on the Image page."
)

# -- settings -----------------------------------------------------------------------------
model = st.radio(
    "Model",
    variant_names(),
    index=variant_names().index(DEFAULTS.model),
    horizontal=True,
    key="w_model",
    persist_state="session",
    captions=[MODEL_HELP.get(m, "") for m in variant_names()],
)
fit_channel = default_channel(model) if model == "neural" else channel
st.caption(
    f"Channel: **{app.channel_label(fit_channel)}**"
    + (" (this model always uses all three colour channels)" if model == "neural" else "")
)

with st.form("fit_form", border=True):
    droplets = st.slider(
        "Number of droplets (0 = let the fit decide)",
        0,
        5000,
        DEFAULTS.droplets,
        step=50,
        key="w_droplets",
        persist_state="session",
        help="0: the fit finds the droplets and decides how many there are. A number: at most that many.",
    )
    mask_types, mask_size = DEFAULTS.mask_types, DEFAULTS.mask_size
    appearance_from = None
    if model in ("templates", "neural"):
        # This session's fits whose look was learned (not itself reused) with the current look settings.
        sources = [
            report
            for report in (app.fit_report(f) for f in app.session_fit_ids())
            if report is not None
            and report.model == model
            and not report.appearance_from
            and report.settings.mask_types == st.session_state.get("w_mask_types", mask_types)
            and (model == "neural" or report.settings.mask_size == st.session_state.get("w_mask_size", mask_size))
        ]
        labels = {report.fit_id: app.fit_label(report) for report in sources}
        appearance_from = st.selectbox(
            "Reuse the droplet look learned in",
            [None, *labels],
            key="w_appearance_from",
            format_func=lambda fit_id: "— learn the look from this image —" if fit_id is None else labels[fit_id],
            help="For another image of the same kind of droplets: keep the droplet look an earlier fit learned "
            "and fit only positions, sizes and the background. Takes a few seconds.",
        )
    with st.expander("Advanced: fitting effort and the model's details"):
        c1, c2 = st.columns(2)
        with c1:
            steps = st.select_slider(
                "Fitting effort (iterations)",
                STEP_OPTIONS,
                value=DEFAULTS.steps,
                key="w_steps",
                persist_state="session",
                help="How long the optimiser works. More: a closer fit, a longer wait. A fit that reuses a look "
                "stops by itself once converged (usually within a dozen iterations).",
            )
            learning_rate = st.select_slider(
                "Step size",
                LR_OPTIONS,
                value=DEFAULTS.learning_rate,
                key="w_lr",
                persist_state="session",
                help="How far each iteration moves. Smaller if a fit fails with 'diverged'.",
            )
            seed = st.number_input(
                "Random seed",
                0,
                2**31 - 1,
                DEFAULTS.seed,
                step=1,
                key="w_seed",
                persist_state="session",
                help="Same seed, same settings: the same fit.",
            )
        with c2:
            if model in ("templates", "neural"):
                mask_types = st.slider(
                    "Droplet looks to learn",
                    1,
                    12,
                    DEFAULTS.mask_types,
                    key="w_mask_types",
                    persist_state="session",
                    help="How many different droplet appearances the model learns; each "
                    "droplet is a mix of them (its 'type' shares in the table).",
                )
            if model == "templates":
                mask_size = st.slider(
                    "Detail of each learned look (pixels across)",
                    5,
                    31,
                    DEFAULTS.mask_size,
                    step=2,
                    key="w_mask_size",
                    persist_state="session",
                    help="Resolution of each learned look, spanning 1.5 radii either side of the centre.",
                )
    f1, f2 = st.columns([1, 5])
    with f1:
        submitted = st.form_submit_button("Fit", type="primary", icon=":material/play_arrow:")
    with f2:
        detect_clicked = st.form_submit_button(
            "Detect (instant)",
            icon=":material/bolt:",
            help="A trained detector finds droplets in well under a second; nothing is fitted, so there is no "
            "reconstruction or residual to check it against.",
        )

state.set_fit_choices(
    FitSettings(
        model=model,
        channel=fit_channel,
        droplets=int(droplets),
        steps=int(steps),
        learning_rate=float(learning_rate),
        seed=int(seed),
        mask_types=int(st.session_state.get("w_mask_types", mask_types)),
        mask_size=int(st.session_state.get("w_mask_size", mask_size)),
    )
)
registry = app.registry()

# -- instant detection --------------------------------------------------------------------
# Every pyramid level's detections down to a low presence are kept in the session; the
# sliders only filter and merge them again.
if detect_clicked:
    # The detector network starts JAX: imported only when asked.
    from droplet_core.detection import scale
    from droplet_core.detection.in_image import pyramid_detections_in_image

    try:
        levels = pyramid_detections_in_image(image, channel, DETECT_FLOOR, downscale or 1, crop)
        region_hw = (images.crop(image, crop) if crop else image).shape[:2]
        state.set_detections(
            {
                "sha": sha,
                "channel": channel,
                "crop": crop,
                "levels": levels,
                "choice": scale.choose_downscale(
                    scale.outermost_droplets(levels[levels["p_exists"] >= 0.5]), *region_hw
                )
                if downscale == 0
                else None,
            }
        )
    except (OSError, ValueError) as exc:
        st.error(f"Instant detection failed: {exc}")
detected = state.detections()
if detected is not None and detected["sha"] == sha:
    from droplet_core.detection import detector_net, scale

    st.subheader("Instant detection")
    s1, s2, s3 = st.columns([2, 2, 1])
    threshold = s1.slider(
        "Show droplets at least this likely",
        0.05,
        0.95,
        detector_net.DEFAULT_THRESHOLD,
        step=0.05,
        key="w_detect_threshold",
        help="The detector's probability that a droplet is there.",
    )
    min_radius = s2.slider("Minimum radius (px)", 0.0, 10.0, 0.0, step=0.5, key="w_detect_min_radius")
    levels = detected["levels"]
    found = scale.outermost_droplets(levels[(levels["p_exists"] >= threshold) & (levels["radius"] >= min_radius)])
    s3.metric("Detected", len(found))
    if detected["choice"] is not None:
        st.caption(f"A fit would run at downscale {detected['choice'].factor}x: {detected['choice'].reason}.")
    st.plotly_chart(
        overlay_figure(
            app.for_display(image),
            found,
            crop=detected["crop"],
            height=720,
            title=f"{len(found)} droplets (instant detection)",
        ),
        key="detect_overlay",
        width="stretch",
        config={"scrollZoom": True},
    )

if submitted:
    try:
        settings = FitSettings(
            model=model,
            channel=fit_channel,
            downscale=downscale,
            droplets=int(droplets),
            steps=int(steps),
            learning_rate=float(learning_rate),
            seed=int(seed),
            mask_types=int(mask_types),
            mask_size=int(mask_size),
            crop=crop,
            appearance_from=appearance_from,
        )
    except ValueError as exc:
        st.error(f"These settings cannot be fitted: {exc}")
        settings = None
    if settings is not None:
        try:
            job = registry.submit(image, sha, settings, session=app.session_lane())
        except StoreError as exc:
            st.error(f"The stored copy of this fit cannot be read: {exc}")
        except QueueFull as exc:
            st.warning(f"Not started: {exc}.", icon=":material/hourglass_top:")
        else:
            # A job that is done as soon as it is submitted was served from the store (or by
            # an identical fit finished earlier): nothing is recomputed.
            state.show_job(job.fit_id, sha, "store" if job.done() else "new")

# -- the current job ----------------------------------------------------------------------


def queue_text(snap) -> str:
    """Where a queued fit stands: "Queued: 2 fits ahead of yours · about 40 s to wait"."""
    ahead = f"{snap.fits_ahead} fit{'s' if snap.fits_ahead != 1 else ''} ahead of yours"
    wait = f"about {snap.wait_s:.0f} s" if snap.wait_s < 90 else f"about {snap.wait_s / 60:.0f} min"
    return f"Queued: {ahead} · {wait} to wait (fits start in turn across everyone using this server)"


shown_job = state.job_display()
job = registry.get(shown_job.fit_id) if shown_job.fit_id else None
if job is not None and shown_job.image_sha != sha:
    job = None  # a fit of another image (its result stays in this session's list)
if shown_job.fit_id and job is None:
    state.forget_job()  # forgotten by the registry (e.g. server restart)

if job is not None:
    running = job.snapshot().status == "running"

    @st.fragment(run_every=1.0 if running else None)
    def progress_panel() -> None:
        snap = job.snapshot()
        if snap.queued:
            st.progress(0.0, text=queue_text(snap))
            if st.button("Stop", icon=":material/stop_circle:", key="stop_button"):
                job.stop()
        elif snap.status == "running":
            fraction = min(1.0, snap.step / max(1, snap.total_steps))
            loss = "…" if snap.loss is None else f"{snap.loss:.4g}"
            # A fit with a reused appearance runs Levenberg-Marquardt iterations and stops once converged.
            count = (
                f"iteration {snap.step} of at most {snap.total_steps}"
                if job.settings.appearance_from
                else f"step {snap.step} of {snap.total_steps}"
            )
            text = f"Fitting: {count} · {snap.droplets} droplets so far · {snap.elapsed_s:.0f} s"
            st.progress(fraction, text=text if snap.step else "Starting the fit (preparing the model) …")
            if snap.losses:
                with st.expander("Advanced: how the fit converges (loss)"):
                    n = len(snap.losses)
                    x = np.linspace(snap.step / n, snap.step, n)
                    st.caption(f"Loss {loss} (lower is better; its scale has no meaning of its own).")
                    st.plotly_chart(
                        loss_figure(snap.losses, steps=x, total_steps=snap.total_steps, height=260),
                        key="live_loss",
                        width="stretch",
                    )
            if st.button("Stop", icon=":material/stop_circle:", key="stop_button"):
                job.stop()
                st.info("Stopping after the current chunk of steps; the fit reached so far will be kept.")
        elif running:
            st.rerun()  # the job ended while polling: redraw the whole page once

    progress_panel()

    snap = job.snapshot()
    if snap.status != "running":
        result = job.result()
        first_time = state.job_display().handled != snap.fit_id
        if result is not None and first_time:
            app.set_current_fit(result.fit_id)
            state.mark_job_handled(snap.fit_id)
            st.rerun()  # so that the sidebar, drawn before this, names the new fit
        if snap.status == "done" and result is not None:
            if state.job_display().notice == "store":
                st.success(
                    "Loaded from store: identical settings on this image were fitted before; nothing was recomputed.",
                    icon=":material/inventory_2:",
                )
            else:
                took = result.report.timings.total_s
                took_text = f" in {took:.1f} s" if isinstance(took, (int, float)) else ""
                st.success(f"Fit done{took_text}.", icon=":material/check_circle:")
        elif snap.status == "stopped":
            if result is not None:
                unit = "iteration" if job.settings.appearance_from else "step"
                st.warning(
                    f"Stopped at {unit} {snap.step} of {snap.total_steps}. The fit reached so far is kept; "
                    "press Fit longer to refine it.",
                    icon=":material/pause_circle:",
                )
            else:
                st.warning("Stopped before the first step; nothing was fitted. Your earlier fits are kept.")
        elif snap.status == "failed":
            st.error(
                f"The fit failed: {snap.error or 'unknown error'}. Your earlier fits and the current image "
                "are kept; try a smaller step size (Advanced), fewer droplets or another channel.",
                icon=":material/error:",
            )

# -- the current fit (always one of the current image) ----------------------------------
fit_id = app.current_fit_id()
current = None
if fit_id:
    try:
        current = app.load_fit(fit_id)
    except StoreError as exc:
        st.error(f"The current fit cannot be loaded: {exc}")
    if current is not None and current.image_sha256 != sha:
        current = None
busy = job is not None and job.snapshot().status == "running"
if current is not None and not busy:
    st.subheader("Current fit")
    report = current.report
    app.show_verdict(report)
    st.caption(app.downscale_caption(report))
    a, b, c, d = st.columns(4)
    a.metric(
        "Droplets",
        app.fit_count(report, current.droplets).count,
        help="Expected number of droplets: each candidate counts with its probability of being a droplet.",
    )
    a.caption(app.count_caption(report, current.droplets))
    b.metric("Model", current.settings.model, help=f"channel {app.channel_label(current.settings.channel)}")
    c.metric("Iterations", report.total_steps_done)
    total = report.timings.total_s
    d.metric("Fit time", f"{total:.1f} s" if isinstance(total, (int, float)) else "—")
    b1, b2 = st.columns([1, 3])
    with b1:
        if st.button(
            "Fit longer",
            icon=":material/fast_forward:",
            key="continue_button",
            help=f"Continue this fit for another {current.settings.steps} iterations from where it ended.",
        ):
            try:
                base = app.decoded_image(current.image_sha256)
                job = registry.submit(
                    base, current.image_sha256, current.settings, warm_start=current, session=app.session_lane()
                )
            except Exception as exc:  # noqa: BLE001
                st.error(f"Cannot continue this fit: {exc}")
            else:
                state.show_job(job.fit_id, sha, "continue")
                st.rerun()
    with b2:
        st.page_link(
            "pages/results.py",
            label="Next: the results (count, sizes, droplet table, residual)",
            icon=":material/arrow_forward:",
            query_params={"fit": current.fit_id},
        )
    base_image = app.image_for_fit(current)
    if base_image is not None:
        doubtful = int(doubtful_mask(current.droplets).sum())
        title = f"{len(current.droplets) - doubtful} likely droplets" + (
            f" (solid) and {doubtful} doubtful candidates (dashed grey)" if doubtful else ""
        )
        st.plotly_chart(
            overlay_figure(
                app.for_display(base_image),
                current.droplets,
                crop=current.settings.crop,
                height=760,
                title=title,
                doubtful_below=DOUBTFUL_BELOW,
            ),
            key="fit_overlay",
            width="stretch",
            config={"scrollZoom": True},
        )
    app.share_box("results", {"fit": current.fit_id})
    if len(current.losses):
        with st.expander("Advanced: how the fit converged (loss)"):
            st.plotly_chart(loss_figure(current.losses, height=240), key="final_loss", width="stretch")
