"""Image page: upload an image or use the built-in demo scene; channels, crop, downscale."""

from __future__ import annotations

import streamlit as st

from app_support import access, app, figure_cache, state
from app_support.figures import channels_figure, image_figure
from app_support.pixel_size import pixel_size_field
from droplet_core.imaging.channels import CHANNEL_LABELS
from droplet_core.imaging.images import ImageError, load_image, max_pixels_limit
from droplet_core.settings import FitSettings

app.page_start("image")
st.title("Image")

# -- the three steps, and the next one's button at the top ------------------------------
guide, next_step = st.columns([4, 1], vertical_alignment="center")
with guide:
    st.markdown(
        "**1 · Image** (this page): use the demo or upload yours, pick the channel where droplets "
        "stand out  →  **2 · Fit**: press Fit  →  **3 · Results**: the count, sizes and droplet table."
    )
with next_step:
    if st.button(
        "Next: fit this image", type="primary", icon=":material/arrow_forward:", key="next_fit", width="stretch"
    ):
        st.switch_page("pages/fit.py")

# -- choose the image -------------------------------------------------------------------
# Callbacks, not code below the widgets: they run before the script, so the sidebar and
# everything else drawn in this run already show the new image.


def take_upload() -> None:
    uploaded = st.session_state.get("upload")
    if uploaded is None:
        return
    data = uploaded.getvalue()  # bytes; the UploadedFile object is not kept
    try:
        load_image(data, max_pixels=max_pixels_limit())  # validate before keeping it
    except ImageError as exc:
        state.set_upload_error(f"**{uploaded.name}** cannot be used: {exc}")
    else:
        app.set_current_image(app.store().save_image(data), uploaded.name)
        state.set_upload_error(None)


def take_demo() -> None:
    app.set_current_image(app.demo_sha(), app.DEMO_NAME)
    state.set_upload_error(None)


left, right = st.columns([3, 1], vertical_alignment="bottom")
with left:
    st.file_uploader(
        "Upload a microscopy image (PNG, JPEG or TIFF, 8 or 16 bit)",
        type=["png", "jpg", "jpeg", "tif", "tiff"],
        key="upload",
        on_change=take_upload,
        help="The image is kept on this server so that share links can show it later.",
    )
    st.caption(access.upload_limits_text())
with right:
    st.button("Use the demo scene", icon=":material/science:", width="stretch", on_click=take_demo)

if state.upload_error():
    st.error(state.upload_error() + "  \nYou keep working on the current image.", icon=":material/error:")

sha = app.current_image_sha()
try:
    image = app.decoded_image(sha)
except Exception as exc:  # noqa: BLE001 - a vanished store entry: fall back to the demo
    st.error(f"The current image cannot be read ({exc}); switching to the demo scene.")
    app.set_current_image(app.demo_sha(), app.DEMO_NAME)
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
    state.set_crop(crop)
    fit_w, fit_h = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (width, height)
    with c3:
        downscale = st.selectbox(
            "Downscale",
            app.DOWNSCALE_OPTIONS,
            format_func=app.downscale_label,
            key="w_downscale",
            persist_state="session",
            help="Average k x k pixels into one before fitting: faster, and large droplets fit better. "
            "Automatic measures the droplets' size and fits where the small droplets still span a pixel "
            "or two and the typical one a few pixels. Positions and radii are always reported in pixels "
            "of the uploaded image.",
        )
    state.set_downscale(downscale)
    if downscale == 0:
        st.caption(
            f"The fit measures the droplets' size in this {fit_w} x {fit_h} region and picks the "
            "downscale; the Fit page says what it chose and why."
        )
    else:
        st.caption(
            f"The fit will see {fit_w // downscale} x {fit_h // downscale} pixels ({fit_w} x {fit_h} "
            f"region, downscale {downscale}x)."
        )

# -- the image --------------------------------------------------------------------------
st.subheader(app.current_image_name())
m1, m2 = st.columns(2)
m1.metric("Size", f"{width} × {height} px", help="width x height of the image as uploaded")
m2.metric("Pixels", f"{width * height / 1e6:.2f} M")
low, high = app.display_percentiles()
st.caption(
    f"Shown with its contrast stretched ({low:g}–{high:g} percentiles; change it in the sidebar). "
    "The fit uses the raw values."
)
pixel_size_field(sha)
st.plotly_chart(
    figure_cache.figure(
        ("image", sha, app.display_percentiles(), crop),
        lambda: image_figure(app.for_display(image), crop=crop, height=620),
    ),
    key="image_fig",
    width="stretch",
    config={"scrollZoom": True},
)

# -- channels ---------------------------------------------------------------------------
st.subheader("Channels")
st.caption("Every channel side by side: pick the one where droplets stand out best from the background.")
channels = figure_cache.figure(
    ("channels", sha, app.display_percentiles()),
    lambda: channels_figure(
        {name: app.for_display(channel) for name, channel in app.channel_thumbnails(sha).items()}, CHANNEL_LABELS
    ),
)
st.plotly_chart(channels, key="channels_fig", width="stretch")
channel = st.selectbox(
    "Channel to fit (for the one-channel models)",
    app.SINGLE_CHANNELS,
    index=app.SINGLE_CHANNELS.index(FitSettings().channel),
    format_func=app.channel_label,
    key="w_channel",
    persist_state="session",
    help="The channel where droplets differ most from the background. The colour-optics model always "
    "uses all three colour channels at once.",
)
state.set_channel(channel)
st.page_link("pages/fit.py", label="Next: fit this image", icon=":material/arrow_forward:")
