"""Image page: upload an image or use the built-in demo scene; channels, crop, downscale."""

from __future__ import annotations

import streamlit as st

import app
from app_support.figures import channels_figure, image_figure
from app_support.pixel_size import pixel_size_field
from droplet_core.channels import CHANNEL_LABELS
from droplet_core.images import ImageError, auto_downscale_factor, load_image, max_pixels_limit, sha256_bytes
from droplet_core.settings import AUTO_DOWNSCALE_PIXELS, FitSettings

app.page_start("image")
st.title("Image")

# -- choose the image -------------------------------------------------------------------
left, right = st.columns([3, 1], vertical_alignment="bottom")
with left:
    uploaded = st.file_uploader(
        "Upload a microscopy image (PNG, JPEG or TIFF, 8 or 16 bit)",
        type=["png", "jpg", "jpeg", "tif", "tiff"],
        key="upload",
        help="The image is kept in the fit store by its SHA-256, so share links can show it later.",
    )
with right:
    if st.button("Use the demo scene", icon=":material/science:", width="stretch"):
        app.set_current_image(app.demo_sha(), "demo scene (built in)")
        st.session_state["upload_error"] = None

if uploaded is not None:
    data = uploaded.getvalue()  # bytes; the UploadedFile object is not kept
    digest = sha256_bytes(data)
    if st.session_state.get("last_upload_sha") != digest:
        st.session_state["last_upload_sha"] = digest
        try:
            load_image(data, max_pixels=max_pixels_limit())  # validate before keeping it
        except ImageError as exc:
            st.session_state["upload_error"] = f"**{uploaded.name}** cannot be used: {exc}"
        else:
            app.set_current_image(app.store().save_image(data), uploaded.name)
            st.session_state["upload_error"] = None

if st.session_state.get("upload_error"):
    st.error(st.session_state["upload_error"] + "  \nYou keep working on the current image.", icon=":material/error:")

sha = app.current_image_sha()
try:
    image = app.decoded_image(sha)
except Exception as exc:  # noqa: BLE001 - a vanished store entry: fall back to the demo
    st.error(f"The current image cannot be read ({exc}); switching to the demo scene.")
    app.set_current_image(app.demo_sha(), "demo scene (built in)")
    sha = app.current_image_sha()
    image = app.decoded_image(sha)
height, width = image.shape[:2]

# -- region of interest and downscale ----------------------------------------------------
with st.container(border=True):
    st.markdown("**Region and resolution for the fit**")
    c1, c2, c3 = st.columns([1, 2, 1])
    with c1:
        crop_on = st.toggle("Crop to a region of interest", key="w_crop_on", persist_state="session")
    crop = None
    if crop_on:
        with c2:
            xs = st.slider("Columns (x)", 0, width, (0, width), key="w_crop_x", persist_state="session")
            ys = st.slider("Rows (y)", 0, height, (0, height), key="w_crop_y", persist_state="session")
        if xs[1] - xs[0] >= 8 and ys[1] - ys[0] >= 8:
            crop = (int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1]))
        else:
            st.warning("The region must be at least 8 x 8 pixels; the whole image is used.")
    st.session_state["crop"] = crop
    fit_w, fit_h = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (width, height)
    auto_k = auto_downscale_factor(fit_h, fit_w, AUTO_DOWNSCALE_PIXELS)
    with c3:
        options = [0, 1, 2, 3, 4, 6, 8]
        downscale = st.selectbox(
            "Downscale",
            options,
            format_func=lambda k: f"auto ({auto_k}x)" if k == 0 else ("none (1x)" if k == 1 else f"{k}x"),
            key="w_downscale",
            persist_state="session",
            help="Block-average k x k pixels before fitting. Auto fits about "
            f"{AUTO_DOWNSCALE_PIXELS:,} pixels. Droplet positions are always reported in "
            "pixels of the uploaded image.",
        )
    st.session_state["downscale"] = int(downscale)
    k = auto_k if downscale == 0 else int(downscale)
    st.caption(f"The fit will see {fit_w // k} x {fit_h // k} pixels ({fit_w} x {fit_h} region, downscale {k}x).")

# -- the image --------------------------------------------------------------------------
st.subheader(st.session_state.get("image_name", "image"))
m1, m2, m3 = st.columns(3)
m1.metric("Size", f"{width} × {height} px", help="width x height of the image as uploaded")
m2.metric("Pixels", f"{width * height / 1e6:.2f} M")
m3.metric("Image id", sha[:10], help=f"sha256 {sha}")
pixel_size_field(sha)
st.plotly_chart(image_figure(image, crop=crop, height=520), key="image_fig", width="stretch",
                config={"scrollZoom": True})

# -- channels ---------------------------------------------------------------------------
st.subheader("Channels")
st.caption("Every channel side by side: pick the one where droplets stand out best from the background.")
thumbs = app.channel_thumbnails(sha)
st.plotly_chart(channels_figure(thumbs, CHANNEL_LABELS), key="channels_fig", width="stretch")
channel = st.selectbox(
    "Channel for the single-channel models (gaussian, templates)",
    app.SINGLE_CHANNELS,
    index=app.SINGLE_CHANNELS.index(FitSettings().channel),
    format_func=app.channel_label,
    key="w_channel",
    persist_state="session",
    help="The neural model always fits all three colour channels (RGB) at once.",
)
st.session_state["channel"] = channel
st.page_link("pages/fit.py", label="Next: fit the image", icon=":material/arrow_forward:")
