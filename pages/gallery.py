"""Mask gallery: the learned droplet looks (templates: masks; neural: rendered droplets),
and the droplets coloured by their dominant type."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_support import app, figure_cache
from app_support.figures import (
    Placement,
    composition_columns,
    dominant_type,
    gallery_figure,
    overlay_figure,
)

app.page_start("gallery")
st.title("Mask gallery")

result = app.fit_from_url_or_session()
if result is None:
    if "fit" not in st.query_params:
        st.info("No fit yet. Fit the image with the templates or neural model on the Fit page.", icon=":material/info:")
    st.stop()

appearance = result.appearance or {}
model = result.settings.model
images = None
tile_types = captions = None
if "masks" in appearance:
    images = np.asarray(appearance["masks"])
    st.caption(
        f"The {images.shape[0]} droplet looks learned by the fit **{app.fit_label(result.report)}**. Each "
        "droplet is drawn as a mix of them (its 'type shares' in the droplet table). Colour: brighter (yellow) "
        "or darker (purple) than the background."
    )
elif "gallery" in appearance:
    images = np.asarray(appearance["gallery"])
    tile_types = appearance.get("gallery_type")
    radii = appearance.get("gallery_radius_px")
    if tile_types is not None and radii is not None:
        captions = [f"type {t} · r {r:g} px" for t, r in zip(tile_types, radii)]
    st.caption(
        f"Example droplets drawn by the optics learned in the fit **{app.fit_label(result.report)}**: "
        "each droplet type alone at a few radii (fit pixels)."
    )

if result.settings.appearance_from:
    source = result.settings.appearance_from
    st.info(
        f"This fit reused the appearance learned by fit `{source[:12]}`; it was held fixed.",
        icon=":material/recycling:",
    )
    st.page_link("pages/gallery.py", label="Open the fit the appearance came from", query_params={"fit": source})

if images is None or images.size == 0:
    st.info(
        f"The {model} model learns no droplet appearance, so there is no gallery. Fit with the "
        "templates or neural model to see one.",
        icon=":material/info:",
    )
else:
    st.plotly_chart(
        figure_cache.figure(
            ("gallery", result.fit_id), lambda: gallery_figure(images, types=tile_types, captions=captions)
        ),
        key="gallery_fig",
        width="stretch",
    )

app.share_box("gallery", {"fit": result.fit_id})

types = dominant_type(result.droplets)
if types is not None:
    st.subheader("Droplets by dominant type")
    counts = np.bincount(types, minlength=len(composition_columns(result.droplets)))
    st.caption(" · ".join(f"type {i}: {n}" for i, n in enumerate(counts)))
    image = app.image_for_fit(result)
    if image is not None:
        st.plotly_chart(
            figure_cache.figure(
                ("type overlay", result.fit_id, app.display_percentiles()),
                lambda: overlay_figure(
                    app.for_display(image),
                    result.droplets,
                    Placement(),
                    colour_by_type=True,
                    crop=result.settings.crop,
                    height=600,
                ),
            ),
            key="type_overlay",
            width="stretch",
            config={"scrollZoom": True},
        )
