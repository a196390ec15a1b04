"""Plotly figures for the Droplet app, built from numpy arrays and DataFrames.

No Streamlit and no model maths here: these functions only turn images, droplet tables
and fit records into figures. Every image is placed in the pixel coordinates of the image
AS UPLOADED (x = column, y = row, pixel centre at its integer index), so droplets from
``FitResult.droplets`` can be drawn over any of them without conversion, including
fit-resolution images of a cropped and downscaled fit (see ``Placement``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from droplet_core.imaging.images import encode_png, to_original_px, to_uint8
from droplet_core.intervals import interval_half_width
from droplet_core.results import FitReport

# Colours of droplet types (dominant composition) on overlays; repeats after 10 types.
TYPE_COLOURS = px.colors.qualitative.Plotly
DEFAULT_RING = "#ff2d55"
CIRCLE_POINTS = 20
BAND_COLOUR = "#0a84ff"
UNSURE_COLOUR = "#ffd60a"
DOUBTFUL_COLOUR = "#b0b0b0"
# Droplets below this probability of existing are drawn apart in the uncertainty view.
UNSURE_P_EXISTS = 0.5
# Images wider or taller than this are shown at a reduced size (block mean) so the page
# does not ship tens of megabytes of PNG; overlays stay in uploaded-pixel coordinates.
MAX_DISPLAY_SIDE = 1600
THUMB_SIDE = 260


@dataclass(frozen=True)
class Placement:
    """Where an image's pixel ``(row i, column j)`` lies in uploaded-image coordinates.

    ``x = x0 + dx * j``, ``y = y0 + dy * i``.
    """

    x0: float = 0.0
    y0: float = 0.0
    dx: float = 1.0
    dy: float = 1.0

    def scaled(self, factor: int) -> Placement:
        """The placement of the same image block-averaged by ``factor``."""
        if factor <= 1:
            return self
        return Placement(
            self.x0 + self.dx * (factor - 1) / 2.0,
            self.y0 + self.dy * (factor - 1) / 2.0,
            self.dx * factor,
            self.dy * factor,
        )


def fit_placement(report: FitReport) -> Placement:
    """Placement of a fit's observed/reconstruction arrays (fit resolution) in uploaded pixels:
    fit pixel 0 lies at ``images.to_original_px(0, k)`` past the crop's origin."""
    k = report.downscale
    x0, y0 = report.crop_origin
    first = float(to_original_px(0.0, k))
    return Placement(x0 + first, y0 + first, float(k), float(k))


# -- image helpers ------------------------------------------------------------------------


def display_factor(height: int, width: int, max_side: int = MAX_DISPLAY_SIDE) -> int:
    """Integer block size that brings the longer side to at most ``max_side``."""
    return max(1, int(np.ceil(max(height, width) / max_side)))


def reduce_for_display(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of ``image`` ``(h, w[, c])`` by ``factor`` (complete blocks only)."""
    if factor <= 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    trimmed = np.asarray(image[: h * factor, : w * factor], dtype=np.float32)
    shape = (h, factor, w, factor) + trimmed.shape[2:]
    return trimmed.reshape(shape).mean(axis=(1, 3))


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png`` URI of a float image in [0, 1] ``(h, w)``/``(h, w, 1|3)`` or uint8 RGB.

    Fast compression: a display image is encoded whenever a page first shows it (0.15 s
    instead of 0.65 s for the example image's 1014 x 760 display copy, 12 % more bytes).
    """
    array = np.asarray(image)
    return "data:image/png;base64," + base64.b64encode(
        encode_png(array if array.dtype == np.uint8 else to_uint8(array), compress_level=1)
    ).decode("ascii")


def diverging_rgb(values: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, float]:
    """Signed ``(h, w)`` values as uint8 RGB on a blue-white-red map; returns (rgb, scale).

    ``scale`` (the value shown fully saturated) defaults to the 99th percentile of |values|.
    """
    values = np.asarray(values, dtype=np.float32)
    if scale is None:
        finite = np.abs(values[np.isfinite(values)])
        scale = float(np.percentile(finite, 99)) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    t = np.clip(values / scale, -1.0, 1.0)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    # white at 0, red (0.84, 0.15, 0.16) for positive, blue (0.13, 0.40, 0.67) for negative.
    red = 1.0 - pos * 0.16 - neg * 0.87
    green = 1.0 - pos * 0.85 - neg * 0.60
    blue = 1.0 - pos * 0.84 - neg * 0.33
    rgb = np.stack([red, green, blue], axis=-1)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), scale


def residual_rgb(residual: np.ndarray) -> tuple[np.ndarray, float]:
    """A residual ``(h, w, c)`` shown as one diverging map (mean over channels)."""
    residual = np.asarray(residual, dtype=np.float32)
    signed = residual.mean(axis=-1) if residual.ndim == 3 else residual
    return diverging_rgb(signed)


def _image_trace(image: np.ndarray, placement: Placement, name: str) -> go.Image:
    factor = display_factor(image.shape[0], image.shape[1])
    shown = reduce_for_display(image, factor)
    where = placement.scaled(factor)
    return go.Image(
        source=png_data_uri(shown),
        x0=where.x0,
        y0=where.y0,
        dx=where.dx,
        dy=where.dy,
        name=name,
        hoverinfo="skip",
    )


def _image_layout(fig: go.Figure, height: int) -> None:
    # The tool bar stands upright in the right margin, so it never covers a title.
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=40, t=40, b=10),
        modebar=dict(orientation="v"),
        dragmode="zoom",
        uirevision="keep",
        # Right-aligned above the plot: the title stays readable at the left.
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )


# -- droplets -------------------------------------------------------------------------------


def composition_columns(droplets: pd.DataFrame) -> list[str]:
    """The ``composition_<k>`` columns of a droplet table, in type order."""
    cols = [c for c in droplets.columns if c.startswith("composition_") and c[12:].isdigit()]
    return sorted(cols, key=lambda c: int(c[12:]))


def dominant_type(droplets: pd.DataFrame) -> np.ndarray | None:
    """Index of each droplet's largest composition weight, or None without compositions."""
    cols = composition_columns(droplets)
    if not cols or droplets.empty:
        return None
    return np.asarray(droplets[cols].to_numpy(dtype=float).argmax(axis=1), dtype=int)


def circle_outlines(x, y, r, points: int = CIRCLE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Closed circle outlines for one SVG line trace (``go.Scatter``): x and y ``(n * (points + 2),)``
    float32, each circle followed by a NaN (a gap).

    Arrays, not lists with None: Plotly sends float arrays as binary typed arrays, which it
    copies and encodes many times faster than lists (a figure of thousands of droplets goes
    out on every script run). An SVG line breaks at NaN (checked in Chromium through
    Streamlit); a WebGL line (``go.Scattergl``) would not, so these are for ``go.Scatter`` only.
    """
    x, y, r = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, y, r))
    angles = np.linspace(0.0, 2.0 * np.pi, points + 1)
    gap = np.full((x.size, 1), np.nan)
    xs = np.hstack([x[:, None] + r[:, None] * np.cos(angles)[None, :], gap])
    ys = np.hstack([y[:, None] + r[:, None] * np.sin(angles)[None, :], gap])
    return xs.reshape(-1).astype(np.float32), ys.reshape(-1).astype(np.float32)


def _hover(droplets: pd.DataFrame) -> tuple[np.ndarray, str]:
    """customdata (row index first) and a hovertemplate for droplet centre markers."""
    fields: list[tuple[str, str]] = [
        ("x", "x %{customdata[1]:.1f}"),
        ("y", "y %{customdata[2]:.1f}"),
        ("radius", "radius %{customdata[3]:.2f} px"),
    ]
    extra = []
    # Hover shows 90 % half-widths (sd columns scaled), as the overlay's bands do.
    for column, label in (("sd_x", "x"), ("sd_y", "y"), ("sd_radius", "radius")):
        if column in droplets.columns:
            extra.append((f"{column}_90", f"± {label} %{{customdata[%d]:.2f}} (90 %)"))
    if "p_exists" in droplets.columns:
        extra.append(("p_exists", "P(exists) %{customdata[%d]:.3f}"))
    if "amplitude" in droplets.columns:
        extra.append(("amplitude", "amplitude %{customdata[%d]:.3f}"))
    if "edge_width" in droplets.columns:
        extra.append(("edge_width", "edge blur %{customdata[%d]:.1f} px"))
    for col in composition_columns(droplets):
        extra.append((col, f"type {col[12:]} " + "%{customdata[%d]:.2f}"))
    columns = [name for name, _ in fields] + [name for name, _ in extra]
    table = droplets.assign(
        **{f"{c}_90": interval_half_width(droplets[c].to_numpy(float)) for c in droplets.columns if c.startswith("sd_")}
    )
    data = np.column_stack(
        [np.arange(len(droplets), dtype=np.float64)] + [table[c].to_numpy(dtype=np.float64) for c in columns]
    )
    lines = [fmt for _, fmt in fields]
    for offset, (_, fmt) in enumerate(extra, start=4):
        lines.append(fmt.replace("%d", str(offset)))
    return data, "droplet %{customdata[0]:.0f}<br>" + "<br>".join(lines) + "<extra></extra>"


def droplet_traces(
    droplets: pd.DataFrame,
    colour_by_type: bool = False,
    ring_colour: str = DEFAULT_RING,
    name: str = "droplets",
    show_legend: bool = True,
    doubtful_below: float | None = None,
) -> list:
    """Circle outlines (one line trace per colour) and a WebGL centre marker trace.

    The marker trace is LAST; its point index equals the droplet's row in ``droplets``
    (its customdata[0] holds the row index too), for hover and box/lasso selection.
    With ``doubtful_below``, droplets whose ``p_exists`` is below it (probably not
    droplets) are outlined dashed in grey, in a trace of their own; droplets out of focus
    (``in_focus`` False) are outlined dotted, in another.
    """
    traces: list = []
    if droplets.empty:
        return [go.Scattergl(x=[], y=[], mode="markers", name=name, showlegend=False)]
    types = dominant_type(droplets) if colour_by_type else None
    doubtful = (
        droplets["p_exists"].to_numpy(float) < doubtful_below
        if doubtful_below is not None and "p_exists" in droplets.columns
        else np.zeros(len(droplets), bool)
    )
    blurred = (
        ~droplets["in_focus"].to_numpy(bool) & ~doubtful
        if "in_focus" in droplets.columns
        else np.zeros(len(droplets), bool)
    )
    plain = ~doubtful & ~blurred
    groups = [(None, plain)] if types is None else [(t, (types == t) & plain) for t in np.unique(types)]
    for mask, colour, dash, label in (
        (doubtful, DOUBTFUL_COLOUR, "dash", "doubtful (probably not droplets)"),
        (blurred, ring_colour, "dot", "out of focus"),
    ):
        if not mask.any():
            continue
        xs, ys = circle_outlines(droplets["x"][mask], droplets["y"][mask], droplets["radius"][mask])
        traces.append(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color=colour, width=1.0, dash=dash),
                name=label,
                hoverinfo="skip",
                showlegend=show_legend,
            )
        )
    for t, mask in groups:
        if not mask.any():
            continue
        sub = droplets[mask]
        xs, ys = circle_outlines(sub["x"], sub["y"], sub["radius"])
        colour = ring_colour if t is None else TYPE_COLOURS[int(t) % len(TYPE_COLOURS)]
        traces.append(
            # SVG, not WebGL: in Streamlit's Plotly a Scattergl *line* trace over a
            # go.Image renders as a flat line below the image (checked in Chromium); one
            # SVG path per colour is cheap even for thousands of circles.
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color=colour, width=1.0),
                name=name if t is None else f"type {t}",
                hoverinfo="skip",
                showlegend=show_legend and (t is not None or bool(doubtful.any() or blurred.any())),
                legendgroup=f"{name}-{t}",
            )
        )
    data, template = _hover(droplets)
    colours = (
        np.full(len(droplets), ring_colour, dtype=object)
        if types is None
        else np.array([TYPE_COLOURS[int(t) % len(TYPE_COLOURS)] for t in types], dtype=object)
    )
    colours[doubtful] = DOUBTFUL_COLOUR
    marker_colour = ring_colour if types is None and not doubtful.any() else colours.tolist()
    traces.append(
        go.Scattergl(
            x=droplets["x"],
            y=droplets["y"],
            mode="markers",
            name=f"{name} (centres)",
            marker=dict(size=3, color=marker_colour, opacity=0.35),
            customdata=data,
            hovertemplate=template,
            showlegend=False,
        )
    )
    return traces


def uncertainty_traces(droplets: pd.DataFrame) -> list:
    """90 % position ellipses and radius bands (inner and outer circle) of every droplet.

    Droplets less likely than ``UNSURE_P_EXISTS`` to exist are drawn in ``UNSURE_COLOUR``.
    Empty when the table has no uncertainty columns.
    """
    if droplets.empty or not {"sd_x", "sd_y", "sd_radius"} <= set(droplets.columns):
        return []
    x, y, r = (droplets[c].to_numpy(float) for c in ("x", "y", "radius"))
    hx, hy, hr = (interval_half_width(droplets[c].to_numpy(float)) for c in ("sd_x", "sd_y", "sd_radius"))
    angles = np.linspace(0.0, 2.0 * np.pi, CIRCLE_POINTS + 1)
    unsure = (
        droplets["p_exists"].to_numpy(float) < UNSURE_P_EXISTS if "p_exists" in droplets else np.zeros(len(x), bool)
    )
    traces = []
    for label, colour, members in (("90 % bands", BAND_COLOUR, ~unsure), ("unsure droplets", UNSURE_COLOUR, unsure)):
        if not members.any():
            continue
        ex = x[members, None] + hx[members, None] * np.cos(angles)
        ey = y[members, None] + hy[members, None] * np.sin(angles)
        inner = circle_outlines(x[members], y[members], np.maximum(r - hr, 0.0)[members])
        outer = circle_outlines(x[members], y[members], (r + hr)[members])
        gap = np.full((int(members.sum()), 1), np.nan)
        ellipses = [np.hstack([e, gap]).reshape(-1).astype(np.float32) for e in (ex, ey)]
        traces.append(
            go.Scatter(
                # Every outline ends in a gap already: the three sets join without one.
                x=np.concatenate([inner[0], outer[0], ellipses[0]]),
                y=np.concatenate([inner[1], outer[1], ellipses[1]]),
                mode="lines",
                line=dict(color=colour, width=1.0, dash="dot"),
                name=label,
                hoverinfo="skip",
            )
        )
    return traces


def overlay_figure(
    image: np.ndarray,
    droplets: pd.DataFrame,
    placement: Placement = Placement(),
    colour_by_type: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    title: str | None = None,
    height: int = 620,
    show_uncertainty: bool = False,
    doubtful_below: float | None = None,
) -> go.Figure:
    """Detected droplets drawn over ``image`` (the uploaded image, or any placed image).

    The droplet centre markers are the last trace (for selections); an optional crop box
    is outlined. ``show_uncertainty`` adds each droplet's 90 % position ellipse and radius
    band (see ``uncertainty_traces``); ``doubtful_below`` draws droplets less likely than
    that to exist dashed in grey (see ``droplet_traces``).
    """
    fig = go.Figure()
    fig.add_trace(_image_trace(image, placement, "image"))
    if show_uncertainty:
        for trace in uncertainty_traces(droplets):
            fig.add_trace(trace)
    for trace in droplet_traces(droplets, colour_by_type=colour_by_type, doubtful_below=doubtful_below):
        fig.add_trace(trace)
    if crop is not None:
        x0, y0, x1, y1 = crop
        fig.add_shape(
            type="rect",
            x0=x0 - 0.5,
            y0=y0 - 0.5,
            x1=x1 - 0.5,
            y1=y1 - 0.5,
            line=dict(color="#ffd60a", width=2, dash="dash"),
        )
    _image_layout(fig, height)
    fig.update_layout(title=title, clickmode="event+select")
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showgrid=False, zeroline=False, scaleanchor="x", autorange="reversed")
    return fig


def panels_figure(
    panels: list[tuple[str, np.ndarray]],
    placement: Placement,
    droplets: pd.DataFrame | None = None,
    height: int = 430,
) -> go.Figure:
    """Images side by side with linked zoom/pan (shared axes), e.g. original /
    reconstruction / residual; droplet outlines over the first panel if given."""
    n = len(panels)
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_xaxes="all",
        shared_yaxes="all",
        subplot_titles=[title for title, _ in panels],
        horizontal_spacing=0.02,
    )
    for col, (title, image) in enumerate(panels, start=1):
        fig.add_trace(_image_trace(image, placement, title), row=1, col=col)
    if droplets is not None and not droplets.empty:
        for trace in droplet_traces(droplets, show_legend=False):
            fig.add_trace(trace, row=1, col=1)
    return _linked_image_panels(fig, n, height)


def _linked_image_panels(fig: go.Figure, n: int, height: int) -> go.Figure:
    """Lay out ``n`` side-by-side image panels with square pixels and no legend."""
    _image_layout(fig, height)
    fig.update_layout(showlegend=False)
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showgrid=False, zeroline=False, autorange="reversed")
    for col in range(1, n + 1):
        suffix = "" if col == 1 else str(col)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    return fig


def channels_figure(channels: dict[str, np.ndarray], labels: dict[str, str], wrap: int = 5) -> go.Figure:
    """Every single channel ``(h, w)`` as grey small multiples in one faceted figure."""
    names = list(channels)
    first = channels[names[0]]
    factor = display_factor(first.shape[0], first.shape[1], THUMB_SIDE)
    stack = np.stack([reduce_for_display(channels[n], factor) for n in names])
    stack8 = np.round(np.clip(stack, 0, 1) * 255).astype(np.uint8)
    wrap = min(wrap, len(names))
    fig = px.imshow(
        stack8, facet_col=0, facet_col_wrap=wrap, binary_string=True, facet_col_spacing=0.01, facet_row_spacing=0.06
    )
    for annotation in fig.layout.annotations:
        index = int(annotation.text.split("=")[-1])
        annotation.text = f"{names[index]}: {labels.get(names[index], names[index])}"
    rows = int(np.ceil(len(names) / wrap))
    aspect = stack.shape[1] / stack.shape[2]
    fig.update_layout(
        height=int(60 + rows * (1100 / wrap) * aspect + rows * 30),
        margin=dict(l=5, r=40, t=30, b=5),
        modebar=dict(orientation="v"),
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def image_figure(image: np.ndarray, crop: tuple[int, int, int, int] | None = None, height: int = 520) -> go.Figure:
    """The uploaded image alone (with the crop box, if any)."""
    return overlay_figure(image, pd.DataFrame(columns=["x", "y", "radius"]), crop=crop, height=height)


# -- curves and distributions -------------------------------------------------------------


def loss_figure(losses, steps=None, total_steps: int | None = None, height: int = 280) -> go.Figure:
    """The loss curve (per step, or per progress report when ``steps`` is given)."""
    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, losses.size + 1) if steps is None else np.asarray(steps)
    fig = go.Figure(go.Scatter(x=steps, y=losses, mode="lines", name="loss", line=dict(width=1.5)))
    positive = losses[np.isfinite(losses)]
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=40, t=30, b=10),
        modebar=dict(orientation="v"),
        xaxis_title="step",
        yaxis_title="loss",
        title="Loss",
        uirevision="loss",
    )
    if positive.size and positive.min() > 0 and positive.max() / positive.min() > 50:
        fig.update_yaxes(type="log")
    if total_steps:
        fig.update_layout(title=f"Loss (of {total_steps} steps)")
    return fig


def compare_radius_figure(tables: dict[str, pd.DataFrame], height: int = 320) -> go.Figure:
    """Radius distributions of several fits, overlaid."""
    frames = [pd.DataFrame({"radius": t["radius"].to_numpy(), "fit": label}) for label, t in tables.items()]
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"radius": [], "fit": []})
    fig = px.histogram(
        data,
        x="radius",
        color="fit",
        barmode="overlay",
        nbins=40,
        opacity=0.55,
        title="Radius distributions",
        color_discrete_sequence=TYPE_COLOURS,
    )
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, title=None))
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=40, t=40, b=10),
        modebar=dict(orientation="v"),
        xaxis_title="radius (px)",
        yaxis_title="droplets",
    )
    return fig


def compare_overlays_figure(panels: list[tuple[str, np.ndarray, pd.DataFrame]], height: int = 460) -> go.Figure:
    """Several fits' droplets over their images, side by side with linked zoom."""
    n = len(panels)
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_xaxes="all",
        shared_yaxes="all",
        subplot_titles=[t for t, _, _ in panels],
        horizontal_spacing=0.02,
    )
    for col, (title, image, droplets) in enumerate(panels, start=1):
        fig.add_trace(_image_trace(image, Placement(), title), row=1, col=col)
        for trace in droplet_traces(
            droplets, name=title, show_legend=False, ring_colour=TYPE_COLOURS[(col - 1) % len(TYPE_COLOURS)]
        ):
            fig.add_trace(trace, row=1, col=col)
    return _linked_image_panels(fig, n, height)


# -- gallery ------------------------------------------------------------------------------


def gallery_figure(
    images: np.ndarray,
    wrap: int = 6,
    types: np.ndarray | None = None,
    captions: list[str] | None = None,
    height_per_row: int = 190,
) -> go.Figure:
    """Learned masks ``(k, m, m)`` (signed values, one colour map) or rendered droplets
    ``(k, s, s, 3)`` in [0, 1], as one faceted image grid. Tile ``i`` shows droplet type
    ``types[i]`` (default ``i``) and is captioned ``captions[i]`` (default "type i")."""
    images = np.asarray(images, dtype=np.float32)
    k = images.shape[0]
    wrap = max(1, min(wrap, k))
    if images.ndim == 3:
        limit = float(np.max(np.abs(images))) or 1.0
        low = -limit if images.min() < 0 else 0.0
        fig = px.imshow(
            images,
            facet_col=0,
            facet_col_wrap=wrap,
            color_continuous_scale="Viridis",
            zmin=low,
            zmax=limit,
            facet_col_spacing=0.02,
            facet_row_spacing=0.08,
        )
    else:
        fig = px.imshow(
            np.clip(images, 0, 1),
            facet_col=0,
            facet_col_wrap=wrap,
            zmin=0,
            zmax=1,
            facet_col_spacing=0.02,
            facet_row_spacing=0.08,
        )
    types = np.arange(k) if types is None else np.asarray(types)
    for annotation in fig.layout.annotations:
        index = int(annotation.text.split("=")[-1])
        colour = TYPE_COLOURS[int(types[index]) % len(TYPE_COLOURS)]
        caption = captions[index] if captions is not None else f"type {index}"
        annotation.text = f"<span style='color:{colour}'>■</span> {caption}"
    rows = int(np.ceil(k / wrap))
    fig.update_layout(
        height=60 + rows * height_per_row, margin=dict(l=5, r=40, t=30, b=5), modebar=dict(orientation="v")
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig
