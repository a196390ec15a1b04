"""The droplet table as a chemist reads it: plain column names with units, doubtful rows flagged.

Display only: the CSV downloads keep the raw column names of ``droplets.csv``.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from droplet_core.measurements.counting import DOUBTFUL_BELOW

LIKELY_COLUMN = "likely"
# Raw column -> (label with unit, help).
COLUMN_TEXT = {
    "x": ("x (px)", "Centre, column in pixels of the image as uploaded"),
    "y": ("y (px)", "Centre, row in pixels of the image as uploaded"),
    "radius": ("radius (px)", "Radius of the droplet's edge, in pixels of the image as uploaded"),
    "amplitude": ("brightness", "How strongly the droplet stands out from the background (fitted channel units)"),
    "sd_x": ("± x (px, sd)", "Standard deviation of x: the 90 % interval is about ±1.64 of it"),
    "sd_y": ("± y (px, sd)", "Standard deviation of y: the 90 % interval is about ±1.64 of it"),
    "sd_radius": ("± radius (px, sd)", "Standard deviation of the radius: the 90 % interval is about ±1.64 of it"),
    "p_exists": (
        "P(droplet)",
        "Probability that this candidate is a real droplet, from how much of the image it "
        "explains against what its extra parameters cost",
    ),
}


def droplet_table_view(droplets: pd.DataFrame) -> pd.DataFrame:
    """``droplets`` with a ``likely`` column first (``p_exists`` >= 0.5) when it has ``p_exists``."""
    view = droplets.copy()
    if "p_exists" in view.columns:
        view.insert(0, LIKELY_COLUMN, view["p_exists"].to_numpy(float) >= DOUBTFUL_BELOW)
    return view


def droplet_column_config(droplets: pd.DataFrame) -> dict:
    """``st.dataframe`` column settings: labels with units, help, number formats."""
    config: dict = {
        LIKELY_COLUMN: st.column_config.CheckboxColumn(
            "likely droplet",
            help=f"P(droplet) at least {DOUBTFUL_BELOW:g}; unticked rows are doubtful candidates, drawn dashed in grey",
        ),
    }
    for column in droplets.columns:
        if column in COLUMN_TEXT:
            label, text = COLUMN_TEXT[column]
            config[column] = st.column_config.NumberColumn(
                label, help=text, format="%.2f" if column != "p_exists" else "%.3f"
            )
        elif column.startswith("composition_"):
            config[column] = st.column_config.NumberColumn(
                f"type {column[12:]} share",
                format="%.2f",
                help=f"Share of learned droplet look {column[12:]} in this droplet (see the Mask gallery)",
            )
    return config
