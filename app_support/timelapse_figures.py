"""Plotly figures of a fitted time-lapse (``droplet_core.service.timelapse``'s tables). No Streamlit here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app_support.figures import (
    BAND_COLOUR,
    DEFAULT_RING,
    Placement,
    _image_layout,
    _image_trace,
    circle_outlines,
)
from droplet_core.intervals import interval_half_width

PATH_COLOUR = "#ffd60a"
EVENT_COLOURS = {
    "coalescence": "#ff2d55",
    "splitting": "#bf5af2",
    "appearance": "#30d158",
    "disappearance": "#8e8e93",
    "entered_field": "#64d2ff",
    "left_field": "#636366",
}
RADIUS_BINS = 30


def frame_overlay_figure(
    frame_rgb: np.ndarray, tracks: pd.DataFrame, frame: int, trail_frames: int = 5, height: int = 560
) -> go.Figure:
    """A frame ``(h, w, 3)`` with its droplets (circles, centres selectable) and each droplet's
    path over the last ``trail_frames`` frames.

    Centre markers carry the track id as ``customdata[0]`` (for click / box selection).
    """
    fig = go.Figure()
    fig.add_trace(_image_trace(frame_rgb, Placement(), "frame"))
    recent = tracks[(tracks["frame"] <= frame) & (tracks["frame"] >= frame - trail_frames)]
    now = tracks[tracks["frame"] == frame]
    path_x, path_y = [], []
    for _, path in recent[recent["track"].isin(now["track"])].groupby("track"):
        if len(path) > 1:
            path_x += path["x_px"].round(2).tolist() + [None]
            path_y += path["y_px"].round(2).tolist() + [None]
    # Lines as SVG, not WebGL: a Scattergl line over a go.Image renders flat below the image
    # (see app_support.figures.droplet_traces).
    fig.add_trace(
        go.Scatter(
            x=path_x,
            y=path_y,
            mode="lines",
            line=dict(color=PATH_COLOUR, width=1.5),
            name=f"path (last {trail_frames} frames)",
            hoverinfo="skip",
        )
    )
    ring_x, ring_y = circle_outlines(now["x_px"], now["y_px"], now["radius_px"])
    fig.add_trace(
        go.Scatter(
            x=ring_x, y=ring_y, mode="lines", line=dict(color=DEFAULT_RING, width=1), name="droplets", hoverinfo="skip"
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=now["x_px"],
            y=now["y_px"],
            mode="markers",
            marker=dict(size=5, color=DEFAULT_RING, opacity=0.6),
            customdata=np.stack([now["track"], now["radius_px"]], axis=1) if len(now) else None,
            hovertemplate="track %{customdata[0]}<br>radius %{customdata[1]:.2f} px<extra></extra>",
            name="centres",
        )
    )
    _image_layout(fig, height)
    fig.update_layout(title=f"Frame {frame + 1}", clickmode="event+select")
    return fig


def _event_markers(fig: go.Figure, events: pd.DataFrame, frames: pd.DataFrame, row: int, y_column: str) -> None:
    """Events as markers on a time plot's curve, one trace per kind (legend toggles them)."""
    for kind, group in events.groupby("kind"):
        at = frames.set_index("frame").reindex(group["frame"])
        fig.add_trace(
            go.Scatter(
                x=at["time_s"],
                y=at[y_column],
                mode="markers",
                name=kind.replace("_", " "),
                legendgroup=kind,
                showlegend=row == 1,
                marker=dict(symbol="diamond", size=9, color=EVENT_COLOURS.get(kind, "#000")),
                text=[
                    f"{kind.replace('_', ' ')}: {b or '–'} → {a or '–'}"
                    for b, a in zip(group["tracks_before"], group["tracks_after"])
                ],
                hovertemplate="%{text}<extra></extra>",
            ),
            row=row,
            col=1,
        )


def over_time_figure(
    frames: pd.DataFrame, tracks: pd.DataFrame, events: pd.DataFrame, time_label: str, height: int = 720
) -> go.Figure:
    """Count (90 % band), mean radius and the radius histogram (heat map) against time, events marked."""
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("Droplet count (90 % interval)", "Mean radius (px)", "Radius distribution (droplets per bin)"),
    )
    t = frames["time_s"]
    fig.add_trace(
        go.Scatter(
            x=pd.concat([t, t[::-1]]),
            y=pd.concat([frames["count_high_90"], frames["count_low_90"][::-1]]),
            fill="toself",
            line=dict(width=0),
            fillcolor="rgba(10,132,255,0.2)",
            name="count, 90 %",
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    for row, (column, name) in enumerate((("droplet_count", "count"), ("mean_radius_px", "mean radius")), start=1):
        fig.add_trace(
            go.Scatter(
                x=t, y=frames[column], mode="lines+markers", line=dict(color=BAND_COLOUR), name=name, showlegend=False
            ),
            row=row,
            col=1,
        )
    if len(tracks):
        edges = np.linspace(0.0, float(tracks["radius_px"].max()) * 1.05, RADIUS_BINS + 1)
        times = frames.set_index("frame")["time_s"]
        counts = np.stack(
            [np.histogram(tracks.loc[tracks["frame"] == f, "radius_px"], edges)[0] for f in frames["frame"]], axis=1
        )
        fig.add_trace(
            go.Heatmap(
                x=times.to_numpy(),
                y=0.5 * (edges[1:] + edges[:-1]),
                z=counts,
                colorscale="Viridis",
                colorbar=dict(title="droplets", len=0.3, y=0.15),
                name="radius histogram",
                hovertemplate="t %{x}<br>radius %{y:.2f} px<br>%{z} droplets<extra></extra>",
            ),
            row=3,
            col=1,
        )
    _event_markers(fig, events, frames, 1, "droplet_count")
    _event_markers(fig, events, frames, 2, "mean_radius_px")
    fig.update_yaxes(title_text="radius (px)", row=3, col=1)
    fig.update_xaxes(title_text=time_label, row=3, col=1)
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.04, xanchor="right", x=1),
    )
    return fig


def track_radius_figure(
    track: pd.DataFrame, events: pd.DataFrame, track_id: int, time_label: str, height: int = 320
) -> go.Figure:
    """One droplet's radius over time with its 90 % interval band, and the events it took part in."""
    t, r = track["time_s"], track["radius_px"]
    half = interval_half_width(track["sd_radius_px"].fillna(0.0).to_numpy())
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=pd.concat([t, t[::-1]]),
            y=np.concatenate([r + half, (r - half)[::-1]]),
            fill="toself",
            line=dict(width=0),
            fillcolor="rgba(10,132,255,0.2)",
            name="90 % interval",
            hoverinfo="skip",
        )
    )
    fig.add_trace(go.Scatter(x=t, y=r, mode="lines+markers", line=dict(color=BAND_COLOUR), name="radius"))
    mine = events[
        events["tracks_before"].astype(str).str.split(";").apply(lambda ids: str(track_id) in ids)
        | events["tracks_after"].astype(str).str.split(";").apply(lambda ids: str(track_id) in ids)
    ]
    for event in mine.itertuples(index=False):
        fig.add_vline(
            x=event.time_s,
            line=dict(color=EVENT_COLOURS.get(event.kind, "#000"), dash="dot"),
            annotation_text=event.kind.replace("_", " "),
            annotation_position="top left",
        )
    fig.update_layout(
        height=height,
        title=f"Droplet {track_id}: radius over time",
        xaxis_title=time_label,
        yaxis_title="radius (px)",
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig
