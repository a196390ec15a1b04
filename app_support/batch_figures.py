"""Plotly figures of a batch: droplet count per image and radius distribution per image.

Built from the batch's ``summary.csv`` and combined ``droplets.csv`` tables
(``droplet_core.service.batch``); no Streamlit here.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from droplet_core.service.batch import FAILED, IMAGE_COLUMN


def droplet_count_figure(summary: pd.DataFrame, height: int = 320) -> go.Figure:
    """One bar per fitted image: its droplet count (hover: median radius and RMSE)."""
    fitted = summary[summary["status"] != FAILED]
    fig = go.Figure(
        go.Bar(
            x=fitted["image"],
            y=fitted["droplet_count"],
            marker_color="#1f77b4",
            customdata=fitted[["median_radius", "rmse"]].to_numpy(dtype=float),
            hovertemplate="%{x}<br>%{y} droplets<br>median radius %{customdata[0]:.2f} px"
            "<br>RMSE %{customdata[1]:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Droplets per image",
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        yaxis_title="droplets",
        xaxis_title=None,
    )
    return fig


def radius_distribution_figure(droplets: pd.DataFrame, height: int = 360) -> go.Figure:
    """A box per image of its droplets' radii (pixels of the image as given)."""
    fig = go.Figure()
    for image, rows in droplets.groupby(IMAGE_COLUMN, sort=False):
        fig.add_trace(go.Box(y=rows["radius"], name=str(image), boxpoints=False, showlegend=False))
    fig.update_layout(
        title="Radius distribution per image",
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        yaxis_title="radius (px)",
    )
    return fig
