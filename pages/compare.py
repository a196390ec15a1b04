"""Compare: two or more of this session's fits side by side (overlays, counts, radii, quality).

Private by default: the choices are this session's own fits and those it opened by a
link; a compare link (``?fits=a,b``) adds its fits to the session that opens it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import app, figure_cache
from app_support.figures import compare_overlays_figure, compare_radius_figure
from app_support.pixel_size import pixel_size_for
from app_support.size_figures import compare_distributions_figure
from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.measurements.counting import doubtful_mask
from droplet_core.service.store import StoreError

app.page_start("compare")
st.title("Compare fits")

# Fits named in the URL (?fits=a,b): checked against the id pattern and the store before
# anything else touches the disk; the good ones join this session's list.
requested = [f for f in st.query_params.get("fits", "").split(",") if f]
found = [f for f in requested if is_valid_fit_id(f) and app.fit_report(f) is not None]
bad = [f for f in requested if f not in found]
if bad:
    st.error(f"{len(bad)} fit id(s) in this link are not valid or not stored on this server and are left out.")
for fit_id in reversed(found):
    if fit_id not in app.session_fit_ids():
        app.remember_fit(fit_id)

reports = {f: report for f in app.session_fit_ids() if (report := app.fit_report(f)) is not None}
labels = {f: app.fit_label(report) for f, report in reports.items()}
if not labels:
    st.info(
        "This session has no fits yet. Fit an image on the Fit page, or open a link someone shared; "
        "fits of other people are not listed.",
        icon=":material/info:",
    )
    st.stop()
default = [f for f in found if f in labels] or list(labels)[:2]
# Apply the URL only when it changed outside this page (a link); our own writes are skipped.
if "w_compare" not in st.session_state or (requested and requested != st.session_state.get("_compare_url")):
    st.session_state["w_compare"] = default
st.session_state["w_compare"] = [f for f in st.session_state["w_compare"] if f in labels]
chosen = st.multiselect(
    "Fits to compare",
    list(labels),
    format_func=labels.get,
    key="w_compare",
    help="This session's fits (and those opened by a link), newest first. Pick two or more.",
)
st.query_params["fits"] = ",".join(chosen)
st.session_state["_compare_url"] = list(chosen)
if len(chosen) < 2:
    st.info("Pick at least two fits to compare.")
    if len(labels) > 1:
        app.share_box("compare", {"fits": ",".join(labels)})
    st.stop()

results = []
for fit_id in chosen:
    try:
        results.append(app.load_fit(fit_id))
    except StoreError as exc:
        st.error(f"The fit {labels[fit_id]} cannot be loaded: {exc}")
if not results:
    st.stop()

rows = []
for r in results:
    likely = r.droplets[~doubtful_mask(r.droplets)]
    verdict = r.report.verdict
    rows.append(
        {
            "fit": labels[r.fit_id],
            "droplets": app.fit_count(r.report, r.droplets).count,
            "90 % interval": f"{r.report.count.low}–{r.report.count.high}" if r.report.count is not None else "—",
            "median radius (px)": float(likely["radius"].median()) if len(likely) else None,
            "fit quality": verdict.quality if verdict is not None else "—",
            "error vs. contrast": verdict.relative_rmse if verdict is not None else None,
            "channel": r.settings.channel,
            "fit time (s)": r.report.timings.total_s,
        }
    )
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    width="stretch",
    column_config={
        "median radius (px)": st.column_config.NumberColumn(format="%.2f"),
        "error vs. contrast": st.column_config.NumberColumn(format="percent"),
        "fit time (s)": st.column_config.NumberColumn(format="%.1f"),
    },
)
st.caption("Share link: opens these fits side by side")
st.code(app.share_url("compare", {"fits": ",".join(chosen)}), language=None)
if len(labels) > len(chosen):
    with st.expander(f"Share all {len(labels)} fits of this session"):
        st.code(app.share_url("compare", {"fits": ",".join(labels)}), language=None)

panels = []
for r in results:
    image = app.image_for_fit(r)
    if image is not None:
        panels.append((app.fit_short_label(r.report), image, r.droplets, r.fit_id))
if panels:
    shown = panels[:4]
    st.plotly_chart(
        figure_cache.figure(
            ("compare overlays", tuple((label, fit_id) for label, _, _, fit_id in shown), app.display_percentiles()),
            lambda: compare_overlays_figure(
                [(label, app.for_display(image), droplets) for label, image, droplets, _ in shown], height=560
            ),
        ),
        key="compare_overlays",
        width="stretch",
        config={"scrollZoom": True},
    )
    if len(panels) > 4:
        st.caption("Pictures show the first four fits; the table and histogram include all.")
    if len({r.image_sha256 for r in results}) > 1:
        st.caption("These fits are of different images; zoom is linked by pixel position.")

# -- sizes (further size statistics go in this section) ----------------------------------------
st.subheader("Sizes")
radius_tables = {app.fit_short_label(r.report): r.droplets for r in results}
st.plotly_chart(
    figure_cache.figure(
        ("compare radius", tuple((app.fit_short_label(r.report), r.fit_id) for r in results)),
        lambda: compare_radius_figure(radius_tables, height=380),
    ),
    key="compare_radius",
    width="stretch",
)

# Diameter distributions, in µm when every fit's image has a pixel size (else all in px).
sizes = {r.fit_id: pixel_size_for(r.image_sha256) for r in results}
in_um = all(size.known for size in sizes.values())
log_axis = st.toggle("Logarithmic diameter axis", key="compare_log_axis")
diameters = {
    f"{r.fit_id[:8]} {r.settings.model}": 2
    * r.droplets["radius"].to_numpy(float)
    * (sizes[r.fit_id].length_um if in_um else 1.0)
    for r in results
}
st.plotly_chart(
    figure_cache.figure(
        ("compare distributions", tuple(r.fit_id for r in results), tuple(sizes.values()), in_um, log_axis),
        lambda: compare_distributions_figure(diameters, "µm" if in_um else "px", log_axis),
    ),
    key="compare_distributions",
    width="stretch",
    config={"toImageButtonOptions": {"format": "svg", "filename": "size-distributions"}},
)
