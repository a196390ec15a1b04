"""Plotly figures of droplet size distributions and their statistics (no Streamlit here).

Diameters come in the unit of the read-out (µm when the pixel size is known, else px);
statistics tables are ``droplet_core.measurements.size_statistics.size_statistics`` tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

NUMBER_COLOUR = "#1f77b4"
VOLUME_COLOUR = "#d62728"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MARKED = (("d50", "D50"), ("d32", "D[3,2]"))
LENGTH_STATISTICS = ("mean_diameter", "d10", "d50", "d90", "dv10", "dv50", "dv90", "d32", "d43")


def _bins(diameters: np.ndarray, log_axis: bool, count: int = 40) -> np.ndarray:
    """Bin edges over the diameters' range, even in log or linear diameter."""
    positive = diameters[diameters > 0]
    if positive.size == 0:
        return np.array([0.0, 1.0])
    low, high = positive.min(), positive.max()
    if high <= low:
        low, high = 0.9 * low, 1.1 * high
    return np.geomspace(low, high, count + 1) if log_axis else np.linspace(low, high, count + 1)


def _cumulative(diameters: np.ndarray, weights: np.ndarray) -> tuple[list, list]:
    """Sorted diameters and the cumulative % of ``weights`` up to each (lists: plain JSON in the figure)."""
    order = np.argsort(diameters)
    total = weights.sum()
    return diameters[order].tolist(), (100.0 * np.cumsum(weights[order]) / (total if total > 0 else 1.0)).tolist()


def size_distribution_figure(
    diameters: np.ndarray, statistics: pd.DataFrame, unit: str, log_axis: bool = False, height: int = 380
) -> go.Figure:
    """Number- and volume-weighted histogram (left) and cumulative distribution (right) of
    diameters ``(n,)``, with D50 and D[3,2] as lines and their 90 % intervals as bands."""
    diameters = np.asarray(diameters, float)
    volume = diameters**3
    edges = _bins(diameters, log_axis)
    number_share = np.histogram(diameters, edges)[0] / max(len(diameters), 1) * 100.0
    volume_share = np.histogram(diameters, edges, weights=volume)[0] / max(volume.sum(), 1e-300) * 100.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Histogram", "Cumulative distribution"), horizontal_spacing=0.1)
    for name, share, colour in (("number", number_share, NUMBER_COLOUR), ("volume", volume_share, VOLUME_COLOUR)):
        # A filled step line rather than bars: Plotly sizes bars in linear units, wrong on a log axis.
        fig.add_trace(
            go.Scatter(
                x=edges.tolist(),
                y=np.r_[share, share[-1]].tolist(),
                mode="lines",
                line=dict(color=colour, width=1.5, shape="hv"),
                fill="tozeroy",
                opacity=0.55,
                name=f"{name}-weighted",
                legendgroup=name,
                hovertemplate=f"from %{{x:.3g}} {unit}: %{{y:.1f}} % of {name}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        x, y = _cumulative(diameters, np.ones_like(diameters) if name == "number" else volume)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line=dict(color=colour, width=2, shape="hv"),
                name=f"{name}-weighted (cumulative)",
                legendgroup=name,
                showlegend=False,
                hovertemplate=f"%{{y:.1f}} % of {name} below %{{x:.3g}} {unit}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    by_name = statistics.set_index("statistic")
    for name, label in MARKED:
        if name not in by_name.index or not np.isfinite(by_name.loc[name, "value"]):
            continue
        row = by_name.loc[name]
        for col in (1, 2):
            fig.add_vrect(
                x0=row["low_90"], x1=row["high_90"], fillcolor="grey", opacity=0.18, line_width=0, row=1, col=col
            )
            fig.add_vline(
                x=row["value"],
                line=dict(color="black", dash="dash" if name == "d32" else "dot", width=1),
                row=1,
                col=col,
            )
        fig.add_annotation(
            x=np.log10(row["value"]) if log_axis else row["value"],
            y=0.99,
            yref="y domain",
            text=label,
            showarrow=False,
            yanchor="top",
            xanchor="left",
            font=dict(size=11),
            row=1,
            col=1,
        )
    axis = dict(type="log" if log_axis else "linear", title_text=f"diameter ({unit})")
    fig.update_xaxes(**axis)
    fig.update_yaxes(title_text="% of droplets / of volume", row=1, col=1)
    fig.update_yaxes(title_text="cumulative %", range=[0, 101], row=1, col=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def statistics_interval_figure(statistics: pd.DataFrame, height: int = 300) -> go.Figure:
    """The diameter statistics as points with their 90 % intervals as error bars."""
    rows = statistics[statistics["statistic"].isin(LENGTH_STATISTICS)]
    unit = rows["unit"].iloc[0] if len(rows) else ""
    fig = go.Figure(
        go.Scatter(
            x=rows["value"],
            y=rows["label"],
            mode="markers",
            marker=dict(color="black", size=8),
            error_x=dict(
                type="data",
                symmetric=False,
                array=rows["high_90"] - rows["value"],
                arrayminus=rows["value"] - rows["low_90"],
                color="#555",
                thickness=1.5,
            ),
            hovertemplate=f"%{{y}}: %{{x:.4g}} {unit}<extra></extra>",
        )
    )
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=30, b=10),
        title="Diameters with 90 % intervals",
        xaxis_title=f"diameter ({unit})",
        yaxis=dict(autorange="reversed"),
    )
    return fig


def statistics_display_table(statistics: pd.DataFrame) -> pd.DataFrame:
    """The statistics as people read them: label, value, 90 % interval, unit."""

    def number(value: float) -> str:
        return "—" if not np.isfinite(value) else (f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}")

    return pd.DataFrame(
        {
            "statistic": statistics["label"],
            "value": [number(v) for v in statistics["value"]],
            "90 % interval": [
                f"{number(lo)} – {number(hi)}" for lo, hi in zip(statistics["low_90"], statistics["high_90"])
            ],
            "unit": statistics["unit"],
        }
    )


def compare_distributions_figure(
    diameters: dict[str, np.ndarray], unit: str, log_axis: bool = False, height: int = 360
) -> go.Figure:
    """Cumulative number- (left) and volume-weighted (right) diameter distributions of several fits."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Number-weighted", "Volume-weighted"), horizontal_spacing=0.1)
    for index, (label, values) in enumerate(diameters.items()):
        values = np.asarray(values, float)
        colour = PALETTE[index % len(PALETTE)]
        for col, weights in ((1, np.ones_like(values)), (2, values**3)):
            x, y = _cumulative(values, weights)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines",
                    line=dict(color=colour, width=2, shape="hv"),
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    hovertemplate=f"{label}: %{{y:.1f}} % below %{{x:.3g}} {unit}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log" if log_axis else "linear", title_text=f"diameter ({unit})")
    fig.update_yaxes(title_text="cumulative %", range=[0, 101])
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
        title="Diameter distributions",
    )
    return fig


def batch_statistics_figure(summary: pd.DataFrame, height: int = 340) -> go.Figure:
    """Per image: D50 and D[3,2] with their 90 % intervals (from a batch's ``summary.csv``)."""
    fitted = summary.dropna(subset=["d50"]) if "d50" in summary else summary.iloc[0:0]
    fig = go.Figure()
    for name, label, colour in (("d50", "D50", NUMBER_COLOUR), ("d32", "D[3,2]", VOLUME_COLOUR)):
        if name not in fitted:
            continue
        fig.add_trace(
            go.Scatter(
                x=fitted["image"],
                y=fitted[name],
                mode="markers",
                name=label,
                marker=dict(color=colour, size=9),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=fitted[f"{name}_high_90"] - fitted[name],
                    arrayminus=fitted[name] - fitted[f"{name}_low_90"],
                    color=colour,
                ),
            )
        )
    units = sorted({"µm" if pd.notna(size) else "px" for size in fitted.get("pixel_size_um", pd.Series(dtype=float))})
    fig.update_layout(
        title="Diameter per image, with 90 % intervals",
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        yaxis_title=f"diameter ({' / '.join(units) or 'px'})",
    )
    return fig
