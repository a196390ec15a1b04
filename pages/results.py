"""Results page: reconstruction / residual / original with linked zoom, droplets over the
image (hover, box/lasso selection filtering the table), radius histogram, downloads."""

from __future__ import annotations

import streamlit as st

import app
from app_support.figures import (
    Placement,
    fit_placement,
    overlay_figure,
    panels_figure,
    radius_histogram,
    residual_rgb,
)
from app_support.pixel_size import pixel_size_for
from app_support.size_figures import size_distribution_figure, statistics_display_table, statistics_interval_figure
from droplet_core.readout import droplet_table, fit_statistics
from droplet_core.results import zip_outputs
from droplet_core.size_statistics import in_micrometres
from droplet_core.units import PixelSize

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


@st.cache_data(show_spinner="Size statistics ...", max_entries=16)
def _statistics_px(fit_id: str, root: str, version: str):
    """In px: a new pixel size only rescales them (``in_micrometres``)."""
    result = app.load_fit(fit_id)
    return fit_statistics(result.droplets, result.info)


info = result.info
droplets = result.droplets
settings = result.settings
pixel_size = pixel_size_for(result.image_sha256)

if result.status == "stopped":
    unit = "iteration" if settings.appearance_from else "step"
    st.warning(f"This fit was stopped early at {unit} {info.get('steps_done', '?')} of {settings.steps}; "
               "it shows what was reached. Continue it from the Fit page.", icon=":material/pause_circle:")

cols = st.columns(5)
interval = info.get("droplet_count_interval_90")
cols[0].metric("Droplets", len(droplets),
               help="Droplets in the fit; below it, the 90 % interval of the count from each droplet's "
                    "probability of existing (P(exists) in the table)")
if interval:
    cols[0].caption(f"90 % interval {interval[0]}–{interval[1]}")
cols[1].metric("Model", settings.model, help=f"channel {app.channel_label(settings.channel)}")
rmse = info.get("rmse") or []
cols[2].metric("RMSE", ", ".join(f"{v:.4f}" for v in rmse) if rmse else "—",
               help="Root-mean-square reconstruction error per fitted channel")
total = info.get("timings", {}).get("total_s")
cols[3].metric("Fit time", f"{total:.1f} s" if isinstance(total, (int, float)) else "—",
               help=f"on {info.get('device', 'unknown device')}")
cols[4].metric("Steps", info.get("total_steps_done", info.get("steps_done", settings.steps)),
               help="Optimisation steps in total, including any fits this one continued")
st.caption(f"Fit `{result.fit_id}` · image `{result.image_sha256[:12]}` · fit resolution "
           f"{result.observed.shape[1]} × {result.observed.shape[0]} px (downscale {info.get('downscale', '?')}x) · "
           f"device {info.get('device', '?')} · created {str(info.get('created', ''))[:19]}")
app.share_box("results", {"fit": result.fit_id})

# -- droplets over the image ----------------------------------------------------------------
st.subheader("Detected droplets")
st.caption("Hover a centre for its position, radius, 90 % intervals and composition. Select droplets with "
           "the box or lasso tool (toolbar, top right) to filter the table below; double-click clears.")
has_uncertainty = "sd_radius" in droplets.columns
show_uncertainty = st.toggle(
    "Show 90 % uncertainty", key="show_uncertainty", disabled=not has_uncertainty,
    help="Dotted: each droplet's 90 % position ellipse and radius band (inner and outer circle); "
         "yellow: droplets less likely than not to exist." if has_uncertainty else
         "This fit was made before Droplet reported radius uncertainty; refit to see it.")
image = app.image_for_fit(result)
placement = fit_placement(info, settings.crop)
if image is None:  # show the fitted channel in its place
    image, overlay_placement = result.observed, placement
else:
    overlay_placement = Placement()
overlay = overlay_figure(image, droplets, placement=overlay_placement, crop=settings.crop, height=720,
                         show_uncertainty=show_uncertainty)
event = st.plotly_chart(overlay, key="overlay", on_select="rerun", selection_mode=("points", "box", "lasso"),
                        width="stretch", config={"scrollZoom": True})

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
selected = sorted(set(i for i in selected if 0 <= i < len(droplets)))

# -- reconstruction / residual / original -------------------------------------------------
st.subheader("Reconstruction and residual")
residual, scale = residual_rgb(result.residual)
observed = result.observed
panels = [("Observed (fitted channel)", observed), ("Reconstruction", result.reconstruction),
          (f"Residual (observed − reconstruction, ±{scale:.3f})", residual)]
st.plotly_chart(panels_figure(panels, placement, height=430), key="panels", width="stretch",
                config={"scrollZoom": True})
st.caption("Zoom or pan one panel and the others follow. Residual: red = observed brighter than the model, "
           "blue = darker.")

# -- table and distribution ---------------------------------------------------------------
left, right = st.columns([3, 2])
with right:
    st.plotly_chart(radius_histogram(droplets if not selected else droplets.iloc[selected]),
                    key="radius_hist", width="stretch")
with left:
    if selected:
        st.markdown(f"**{len(selected)} of {len(droplets)} droplets selected**")
        table = droplets.iloc[selected]
    else:
        st.markdown(f"**All {len(droplets)} droplets** (select on the overlay to filter)")
        table = droplets
    st.dataframe(table, height=320, width="stretch")
d1, d2 = st.columns(2)
with d1:
    st.download_button("Download droplets (CSV)" + (" — selection" if selected else ""),
                       droplet_table(droplets, pixel_size).iloc[selected or slice(None)]
                       .to_csv(index=False, float_format="%.6g").encode(),
                       file_name=f"droplets-{result.fit_id[:8]}.csv", mime="text/csv",
                       icon=":material/download:", key="csv_download")
with d2:
    st.download_button("Download the whole fit (zip: droplets.csv, statistics.csv, labels.tif, Fiji ROI set, "
                       "reconstruction.png, fit.json)",
                       _zip_bytes(result.fit_id, app.store_root(), app.CACHE_VERSION, pixel_size),
                       file_name=f"fit-{result.fit_id[:8]}.zip", mime="application/zip",
                       icon=":material/folder_zip:", key="zip_download")
# -- size distribution and statistics ------------------------------------------------------
st.subheader("Size distribution")
unit = "µm" if pixel_size.known else "px"
st.caption(f"Pixel size: {pixel_size.describe()}. " + ("" if pixel_size.known else
           "Set it on the Image page for diameters in µm. ") + "Droplets cut by the image edge are left out of "
           "the size statistics and the others weighted to make up for them (Miles–Lantuéjoul); intervals are 90 % "
           "intervals from each droplet's posterior and the calibrated model error.")
statistics = in_micrometres(_statistics_px(result.fit_id, app.store_root(), app.CACHE_VERSION), pixel_size.length_um)
log_axis = st.toggle("Logarithmic diameter axis", key="size_log_axis")
diameters = 2.0 * droplets["radius"].to_numpy(float) * (pixel_size.length_um or 1.0)
# The camera button saves SVG (vector, for papers) with Plotly's own export.
st.plotly_chart(size_distribution_figure(diameters, statistics, unit, log_axis), key="size_distribution",
                width="stretch", config={"toImageButtonOptions": {
                    "format": "svg", "filename": f"size-distribution-{result.fit_id[:8]}"}})
s1, s2 = st.columns([2, 3])
with s1:
    st.dataframe(statistics_display_table(statistics), hide_index=True, width="stretch", key="size_statistics")
with s2:
    st.plotly_chart(statistics_interval_figure(statistics), key="size_intervals", width="stretch")
st.download_button("Download the statistics (CSV)", statistics.to_csv(index=False, float_format="%.6g").encode(),
                   file_name=f"statistics-{result.fit_id[:8]}.csv", mime="text/csv", icon=":material/download:",
                   key="statistics_download")

with st.expander("Fit record (fit.json)"):
    st.json(info, expanded=False)
