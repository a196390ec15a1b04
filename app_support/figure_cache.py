"""The pages' figures, built once per fit (or image) and display setting and shared by all sessions.

Building a Plotly figure of a few thousand droplets over an image costs about a second
(Plotly validates every outline point; the image is encoded as PNG), and a page's script
runs again on every click, slider move and share-link open. ``figure`` keeps what a page
built under a key that names everything the figure depends on (the fit or image id and
the display settings), in ``st.cache_resource`` with an entry limit, and hands the same
object to every session: callers must not change it (``st.plotly_chart`` only reads it).
``st.cache_data`` would not help here: it pickles its values, and unpickling a Plotly
figure validates it all over again, about as slowly as building it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import plotly.graph_objects as go
import streamlit as st

from app_support import app

# Figures kept in all (the least recently used go first): the pages of a few fits, each in a
# few display settings. The largest, 4,500 droplets with their uncertainty bands over the
# 3-megapixel example image, holds about 7 MB, so the cache stays under about 170 MB.
FIGURES_KEPT = 24


@st.cache_resource(show_spinner=False, max_entries=FIGURES_KEPT)
def _figure(key: tuple[Hashable, ...], root: str, version: str, _build: Callable[[], go.Figure]) -> go.Figure:
    return _build()


def figure(key: tuple[Hashable, ...], build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``build()`` returns, built once per ``key`` (and store).

    Parameters
    ----------
    key : what the figure is and everything it depends on, e.g. ``("overlay", fit_id,
        display percentiles, ...)``: two calls with the same key get the same figure.
    build : makes the figure; called only when no figure is kept under ``key``.

    Returns
    -------
    go.Figure
        Shared by every session: read it, never change it.
    """
    return _figure(key, app.store_root(), app.CACHE_VERSION, build)
