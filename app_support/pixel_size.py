"""The pixel size of each image in the app: the file's, or one the user set on the Image page.

Kept per image (by its sha256) in the session; it only changes how results are read out
(µm columns, statistics, exports), never a fit.
"""

from __future__ import annotations

import streamlit as st

from app_support import app
from droplet_core.imaging.units import PixelSize, read_pixel_size, resolve_pixel_size
from droplet_core.service.store import StoreError

_OVERRIDES = "pixel_size_um_by_image"


@st.cache_data(show_spinner=False, max_entries=64)
def _file_pixel_size(sha: str, root: str) -> PixelSize:
    try:
        return read_pixel_size(app.store().image_bytes(sha))
    except StoreError:
        return PixelSize()


def file_pixel_size(sha: str) -> PixelSize:
    """The pixel size the stored image ``sha`` carries (unknown when it carries none or is gone)."""
    return _file_pixel_size(sha, app.store_root())


def pixel_size_for(sha: str) -> PixelSize:
    """The pixel size results of image ``sha`` are read out with."""
    return resolve_pixel_size(file_pixel_size(sha), st.session_state.get(_OVERRIDES, {}).get(sha))


def pixel_size_field(sha: str) -> PixelSize:
    """The Image page's pixel-size field for image ``sha``; returns the pixel size in force."""
    from_file = file_pixel_size(sha)
    overrides = st.session_state.setdefault(_OVERRIDES, {})
    key = f"w_pixel_size_{sha[:16]}"

    def keep() -> None:
        value = float(st.session_state[key] or 0.0)
        if value > 0 and not (from_file.known and abs(value - from_file.length_um) < 1e-9):
            overrides[sha] = value
        else:
            overrides.pop(sha, None)

    if key not in st.session_state:
        st.session_state[key] = overrides.get(sha) or from_file.length_um or 0.0
    st.number_input(
        "Pixel size (µm per pixel)",
        min_value=0.0,
        step=0.01,
        format="%.4f",
        key=key,
        on_change=keep,
        help="Length of one pixel of the image as uploaded. Read from ImageJ / OME-TIFF files when they carry it; "
        "set it here for other images (0 = unknown: results in pixels). Changing it never refits: "
        "only the µm columns, size statistics and exports change.",
    )
    current = pixel_size_for(sha)
    if current.known:
        st.caption(f"Pixel size: {current.describe()}.")
    else:
        st.caption("Pixel size unknown: results are in pixels. Enter it above for µm columns and statistics.")
    return current
