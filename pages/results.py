"""Results page: the fit's verdict on itself, the count, droplets over the image (hover,
box/lasso selection filtering the table, doubtful candidates dashed or hidden), the image /
the model's drawing / their difference with linked zoom, the droplet table, sizes, downloads."""

from __future__ import annotations

from functools import partial

import plotly.graph_objects as go
import streamlit as st

from app_support import app, figure_cache
from app_support.figures import (
    Placement,
    fit_placement,
    loss_figure,
    overlay_figure,
    panels_figure,
    residual_rgb,
)
from app_support.pixel_size import pixel_size_for
from app_support.size_figures import (
    size_distribution_figure,
    statistics_display_table,
    statistics_interval_figure,
)
from app_support.tables import droplet_column_config, droplet_table_view
from droplet_core.imaging.display import apply_stretch, stretch_limits
from droplet_core.imaging.units import PixelSize
from droplet_core.measurements.counting import DOUBTFUL_BELOW, doubtful_mask
from droplet_core.measurements.readout import droplet_table, fit_statistics
from droplet_core.measurements.size_statistics import in_micrometres
from droplet_core.results import zip_outputs

app.page_start("results")
st.title("Results")

result = app.fit_from_url_or_session()
if result is None:
    if "fit" not in st.query_params:
        st.info("No fit yet. Fit the image on the Fit page, or open a share link.", icon=":material/info:")
        st.page_link("pages/fit.py", label="Go to the Fit page", icon=":material/arrow_forward:")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=8)
def _zip_bytes(fit_id: str, root: str, version: str, pixel_size: PixelSize) -> bytes:
    return zip_outputs(app.load_fit(fit_id), pixel_size)


@st.cache_data(show_spinner=False, max_entries=16)
def _droplets_csv(fit_id: str, root: str, version: str, pixel_size: PixelSize, rows: tuple[int, ...]) -> bytes:
    """The droplet table as CSV (only ``rows`` when given)."""
    table = droplet_table(app.load_fit(fit_id).droplets, pixel_size)
    return table.iloc[list(rows) or slice(None)].to_csv(index=False, float_format="%.6g").encode()


@st.cache_data(show_spinner="Size statistics ...", max_entries=16)
def _statistics_px(fit_id: str, root: str, version: str):
    """In px: a new pixel size only rescales them (``in_micrometres``)."""
    result = app.load_fit(fit_id)
    return fit_statistics(result.droplets, result.report)


report = result.report
droplets = result.droplets
settings = result.settings
pixel_size = pixel_size_for(result.image_sha256)

st.caption(f"**{app.fit_label(report)}** · channel {app.channel_label(settings.channel)}")
app.show_verdict(report)
st.caption(app.downscale_caption(report))
if result.status == "stopped":
    unit = "iteration" if settings.appearance_from else "step"
    st.warning(
        f"This fit was stopped early at {unit} {report.steps_done} of {settings.steps}; "
        "it shows what was reached. Fit it longer from the Fit page.",
        icon=":material/pause_circle:",
    )

cols = st.columns(4)
cols[0].metric(
    "Droplets",
    app.fit_count(report, droplets).count,
    help="The expected number of droplets: each candidate counts with its probability of being a "
    "droplet (the table's last column). Below it, the range that holds the true number with "
    "90 % probability.",
)
cols[0].caption(app.count_caption(report, droplets))
likely_table = droplets[~doubtful_mask(droplets)]
cols[1].metric(
    "Median radius",
    f"{likely_table['radius'].median():.2f} px" if len(likely_table) else "—",
    help="Median radius of the likely droplets, in pixels of the image as uploaded.",
)
relative = report.verdict.relative_rmse if report.verdict is not None else None
cols[2].metric(
    "Error vs. contrast",
    f"{relative:.0%}" if relative is not None else "—",
    help="Root-mean-square difference between the image and the model's drawing of it, relative to "
    "the image's own contrast at droplet size. Small: the model draws the image closely.",
)
total = report.timings.total_s
cols[3].metric(
    "Fit time",
    f"{total:.1f} s" if isinstance(total, (int, float)) else "—",
    help="Detection, fitting and uncertainty together.",
)
app.share_box("results", {"fit": result.fit_id})

# -- droplets over the image ----------------------------------------------------------------
st.subheader("Droplets over the image")
has_uncertainty = "sd_radius" in droplets.columns
o1, o2 = st.columns([2, 1])
with o1:
    hide_below = st.slider(
        "Hide candidates less likely than this to be droplets",
        0.0,
        1.0,
        0.0,
        step=0.05,
        key="w_hide_below",
        disabled="p_exists" not in droplets.columns,
        help="Every candidate has a probability of being a real droplet. Those below one half are drawn dashed "
        "in grey and flagged in the table; raise this to hide them from the picture and the table.",
    )
with o2:
    show_uncertainty = st.toggle(
        "Show 90 % uncertainty",
        key="show_uncertainty",
        disabled=not has_uncertainty,
        help="Dotted: each droplet's 90 % position ellipse and radius band (inner and outer circle); "
        "yellow: droplets less likely than not to exist."
        if has_uncertainty
        else "This fit was made before Droplet reported radius uncertainty; refit to see it.",
    )
shown = droplets[~doubtful_mask(droplets, hide_below)] if hide_below > 0 else droplets
st.caption(
    "Hover a centre for its position, radius and 90 % intervals. Select droplets with the box or lasso "
    "tool (tool bar, right) to filter the table below; double-click clears. Scroll to zoom."
)
image = app.image_for_fit(result)
placement = fit_placement(report)
if image is None:  # show the fitted channel in its place
    image, overlay_placement = result.observed, placement
else:
    overlay_placement = Placement()
overlay = figure_cache.figure(
    ("results overlay", result.fit_id, app.display_percentiles(), overlay_placement, hide_below, show_uncertainty),
    lambda: overlay_figure(
        app.for_display(image),
        shown,
        placement=overlay_placement,
        crop=settings.crop,
        height=760,
        show_uncertainty=show_uncertainty,
        doubtful_below=DOUBTFUL_BELOW,
    ),
)
event = st.plotly_chart(
    overlay,
    key="overlay",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    width="stretch",
    config={"scrollZoom": True},
)

marker_curve = len(overlay.data) - 1
selected: list[int] = []
try:
    for point in event.selection.points:
        if point.get("curve_number") == marker_curve:
            index = point.get("point_index", point.get("point_number"))
            if index is not None:
                selected.append(int(index))
except AttributeError:
    selected = []
selected = sorted(set(i for i in selected if 0 <= i < len(shown)))

# -- reconstruction / residual / original -------------------------------------------------
st.subheader("How well the model draws the image")


def fit_panels() -> go.Figure:
    residual, scale = residual_rgb(result.residual)
    limits = stretch_limits(result.observed, app.display_percentiles())
    panels = [
        ("Image (fitted channel)", apply_stretch(result.observed, limits)),
        ("The model's drawing", apply_stretch(result.reconstruction, limits)),
        (f"Difference (±{scale:.3f})", residual),
    ]
    return panels_figure(panels, placement, height=460)


st.plotly_chart(
    figure_cache.figure(("results panels", result.fit_id, app.display_percentiles()), fit_panels),
    key="panels",
    width="stretch",
    config={"scrollZoom": True},
)
st.caption(
    "Zoom or pan one panel and the others follow. Difference = image − drawing: red where the image is "
    "brighter than the model, blue where darker. A good fit leaves only noise; rings or disks there are "
    "droplets the model did not draw."
)

# -- the droplet table --------------------------------------------------------------------
st.subheader("Droplet table")
table = shown.iloc[selected] if selected else shown
# The selection's rows in the whole table (``shown`` leaves out the hidden candidates).
selected_rows = tuple(int(row) for row in droplets.index.get_indexer(table.index)) if selected else ()
if selected:
    st.markdown(f"**{len(selected)} of {len(shown)} droplets selected**")
else:
    st.markdown(f"**All {len(shown)} candidates shown** (select on the picture to filter)")
st.dataframe(
    droplet_table_view(table), height=360, width="stretch", hide_index=True, column_config=droplet_column_config(table)
)
# The files are made when a button is clicked (in a thread of their own), not on every run:
# the zip takes about a second.
d1, d2 = st.columns(2)
with d1:
    st.download_button(
        "Download droplets (CSV)" + (" — selection" if selected else ""),
        partial(_droplets_csv, result.fit_id, app.store_root(), app.CACHE_VERSION, pixel_size, selected_rows),
        file_name=f"droplets-{result.fit_id[:8]}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="csv_download",
    )
with d2:
    st.download_button(
        "Download the whole fit (zip: droplets.csv, statistics.csv, labels.tif, Fiji ROI set, "
        "reconstruction.png, fit.json)",
        partial(_zip_bytes, result.fit_id, app.store_root(), app.CACHE_VERSION, pixel_size),
        file_name=f"fit-{result.fit_id[:8]}.zip",
        mime="application/zip",
        icon=":material/folder_zip:",
        key="zip_download",
    )
# -- size distribution and statistics ------------------------------------------------------
st.subheader("Size distribution")
unit = "µm" if pixel_size.known else "px"
st.caption(
    f"Pixel size: {pixel_size.describe()}. "
    + ("" if pixel_size.known else "Set it on the Image page for diameters in µm. ")
    + "Droplets cut by the image edge are left out of "
    "the size statistics and the others weighted to make up for them (Miles–Lantuéjoul); intervals are 90 % "
    "intervals from each droplet's posterior and the calibrated model error."
)
statistics = in_micrometres(_statistics_px(result.fit_id, app.store_root(), app.CACHE_VERSION), pixel_size.length_um)
log_axis = st.toggle("Logarithmic diameter axis", key="size_log_axis")
diameters = 2.0 * droplets["radius"].to_numpy(float) * (pixel_size.length_um or 1.0)
# The camera button saves SVG (vector, for papers) with Plotly's own export.
st.plotly_chart(
    figure_cache.figure(
        ("size distribution", result.fit_id, pixel_size, log_axis),
        lambda: size_distribution_figure(diameters, statistics, unit, log_axis),
    ),
    key="size_distribution",
    width="stretch",
    config={"toImageButtonOptions": {"format": "svg", "filename": f"size-distribution-{result.fit_id[:8]}"}},
)
s1, s2 = st.columns([2, 3])
with s1:
    st.dataframe(statistics_display_table(statistics), hide_index=True, width="stretch", key="size_statistics")
with s2:
    st.plotly_chart(
        figure_cache.figure(
            ("size intervals", result.fit_id, pixel_size), lambda: statistics_interval_figure(statistics)
        ),
        key="size_intervals",
        width="stretch",
    )
st.download_button(
    "Download the statistics (CSV)",
    statistics.to_csv(index=False, float_format="%.6g").encode(),
    file_name=f"statistics-{result.fit_id[:8]}.csv",
    mime="text/csv",
    icon=":material/download:",
    key="statistics_download",
)

# -- advanced ----------------------------------------------------------------------------------
with st.expander("Advanced: the fit's full record (fit.json) and loss curve"):
    st.caption(
        f"Fit id `{result.fit_id}` · image id `{result.image_sha256[:16]}…` · fit resolution "
        f"{result.observed.shape[1]} × {result.observed.shape[0]} px (downscale {report.downscale}x)"
        f" · {report.total_steps_done} iterations · on {report.device}"
    )
    if len(result.losses):
        st.plotly_chart(
            figure_cache.figure(("loss", result.fit_id), lambda: loss_figure(result.losses, height=240)),
            key="results_loss",
            width="stretch",
        )
    st.json(report.to_dict(), expanded=False)
