"""Compare: two or more stored fits side by side (overlays, counts, radii, RMSE, time)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import app
from app_support.figures import compare_overlays_figure, compare_radius_figure
from app_support.pixel_size import pixel_size_for
from app_support.size_figures import compare_distributions_figure
from droplet_core.store import StoreError, is_valid_fit_id

app.page_start("compare")
st.title("Compare fits")

fits = app.store().list_fits()
labels = {info["fit_id"]: app.fit_label(info) for info in fits}

# Selection from the URL (?fits=a,b) first, then this session's recent fits. Ids are
# checked against the pattern and the store's own list; nothing else touches the disk.
requested = [f for f in st.query_params.get("fits", "").split(",") if f]
bad = [f for f in requested if not is_valid_fit_id(f) or f not in labels]
if bad:
    st.error(f"{len(bad)} fit id(s) in this link are not valid or not stored and are left out.")
if not fits:
    st.info("The store holds no fits yet. Fit an image on the Fit page first.", icon=":material/info:")
    st.stop()
default = [f for f in requested if f in labels] or \
    [f for f in st.session_state.get("fit_history", []) if f in labels][:2] or list(labels)[:2]
# Apply the URL only when it changed outside this page (a link); our own writes are skipped.
if "w_compare" not in st.session_state or (requested and requested != st.session_state.get("_compare_url")):
    st.session_state["w_compare"] = default
chosen = st.multiselect("Fits to compare", list(labels), format_func=labels.get, key="w_compare",
                        help="Stored fits, newest first. Pick two or more.")
st.query_params["fits"] = ",".join(chosen)
st.session_state["_compare_url"] = list(chosen)
if len(chosen) < 2:
    st.info("Pick at least two fits to compare.")
    st.stop()

results = []
for fit_id in chosen:
    try:
        results.append(app.load_fit(fit_id))
    except StoreError as exc:
        st.error(f"Fit {fit_id[:12]} cannot be loaded: {exc}")
if not results:
    st.stop()

rows = []
for r in results:
    timings = r.info.get("timings", {})
    rmse = r.info.get("rmse") or []
    rows.append({
        "fit": r.fit_id[:8],
        "model": r.settings.model,
        "channel": r.settings.channel,
        "droplets": len(r.droplets),
        "median radius (px)": float(r.droplets["radius"].median()) if len(r.droplets) else None,
        "RMSE": float(sum(rmse) / len(rmse)) if rmse else None,
        "fit time (s)": timings.get("total_s"),
        "steps": r.info.get("total_steps_done", r.info.get("steps_done")),
        "final loss": r.info.get("final_loss"),
        "status": r.info.get("status"),
        "device": r.info.get("device"),
    })
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
app.share_box("compare", {"fits": ",".join(chosen)})

panels = []
for r in results:
    image = app.image_for_fit(r)
    if image is not None:
        panels.append((f"{r.fit_id[:8]} · {r.settings.model} · {len(r.droplets)}", image, r.droplets))
if panels:
    st.plotly_chart(compare_overlays_figure(panels[:4]), key="compare_overlays", width="stretch",
                    config={"scrollZoom": True})
    if len(panels) > 4:
        st.caption("Overlays show the first four fits; the table and histogram include all.")
    if len({r.image_sha256 for r in results}) > 1:
        st.caption("These fits are of different images; zoom is linked by pixel position.")
st.plotly_chart(compare_radius_figure({f"{r.fit_id[:8]} {r.settings.model}": r.droplets for r in results}),
                key="compare_radius", width="stretch")

# Diameter distributions, in µm when every fit's image has a pixel size (else all in px).
sizes = {r.fit_id: pixel_size_for(r.image_sha256) for r in results}
in_um = all(size.known for size in sizes.values())
log_axis = st.toggle("Logarithmic diameter axis", key="compare_log_axis")
diameters = {f"{r.fit_id[:8]} {r.settings.model}":
             2 * r.droplets["radius"].to_numpy(float) * (sizes[r.fit_id].length_um if in_um else 1.0) for r in results}
st.plotly_chart(compare_distributions_figure(diameters, "µm" if in_um else "px", log_axis), key="compare_distributions",
                width="stretch", config={"toImageButtonOptions": {"format": "svg", "filename": "size-distributions"}})
