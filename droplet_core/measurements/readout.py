"""Reading a fit out in the units and formats a chemist uses: µm tables, size statistics, exports.

Everything here is applied to a finished fit (its droplet table and ``fit.json`` record);
nothing refits, and the fit id never depends on the pixel size. Files a read-out adds to
a fit's output folder or zip (``readout_files``):

- ``droplets.csv``: the droplet table with a ``label`` column (last) and, when the pixel
  size is known, ``x_um``, ``y_um``, ``diameter_um`` and their sds;
- ``statistics.csv``: ``droplet_core.measurements.size_statistics`` with 90 % intervals;
- ``labels.tif``: the label image (``droplet_core.measurements.exports``);
- ``rois.zip``: the ImageJ / Fiji ROI set;
- ``fit.json``: the fit's record plus ``pixel_size`` (sides in µm and where they came from).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from droplet_core.imaging.units import PixelSize, read_pixel_size, with_units
from droplet_core.measurements import exports
from droplet_core.measurements.size_statistics import (
    StatisticsSettings,
    size_statistics,
)

if TYPE_CHECKING:
    from droplet_core.results import FitReport

# Written by ``python -m bench.statistics --calibrate``: per model and statistic, the
# relative error of the statistic beyond what the per-droplet uncertainty explains.
SIZE_CALIBRATION_FILE = Path(__file__).with_name("size_calibration.json")
FILE_PIXEL_SIZE_KEY = "pixel_size_in_file"


def field_of_view(report: FitReport) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the pixels of the image as given that the fit saw, ends exclusive.

    The crop's origin plus the fit's shape times its downscale (block averaging drops the
    remainder rows and columns).
    """
    x0, y0 = report.crop_origin
    fit_h, fit_w = (report.fit_shape or report.image_shape)[:2]
    return x0, y0, x0 + fit_w * report.downscale, y0 + fit_h * report.downscale


def image_shape_hw(report: FitReport) -> tuple[int, int]:
    """``(h, w)`` of the image as given: recorded by every fit, else the field of view's extent."""
    if report.image_shape:
        return report.image_shape[0], report.image_shape[1]
    _, _, x1, y1 = field_of_view(report)
    return y1, x1


def statistics_discrepancy(model: str) -> dict[str, float]:
    """The calibrated relative discrepancy of each size statistic of ``model`` (empty when not calibrated)."""
    if not SIZE_CALIBRATION_FILE.exists():
        return {}
    return dict(json.loads(SIZE_CALIBRATION_FILE.read_text())["discrepancy"].get(model, {}))


def fit_statistics(
    droplets: pd.DataFrame,
    report: FitReport,
    pixel_size: PixelSize = PixelSize(),
    settings: StatisticsSettings = StatisticsSettings(),
) -> pd.DataFrame:
    """``size_statistics`` of a fit's droplet table, with the uncertainty its record holds.

    Parameters
    ----------
    droplets : the fit's table (``x``, ``y``, ``radius`` in px; ``sd_radius`` and
        ``p_exists`` where the fit has them).
    report : the fit's report (field of view, model, count discrepancy).
    pixel_size : diameters in µm when known, else in px.
    settings : border handling, draws, level.
    """
    return size_statistics(
        droplets["x"].to_numpy(float),
        droplets["y"].to_numpy(float),
        droplets["radius"].to_numpy(float),
        field_of_view(report),
        sd_radius_px=droplets["sd_radius"].to_numpy(float) if "sd_radius" in droplets else None,
        p_exists=droplets["p_exists"].to_numpy(float) if "p_exists" in droplets else None,
        count_discrepancy=float(report.uncertainty.count_discrepancy),
        discrepancy=statistics_discrepancy(report.model),
        um_per_px=pixel_size.length_um,
        settings=settings,
    )


def droplet_table(droplets: pd.DataFrame, pixel_size: PixelSize = PixelSize()) -> pd.DataFrame:
    """The table as exported: µm columns when the pixel size is known, then ``label``."""
    return exports.labelled(with_units(droplets, pixel_size))


def readout_files(droplets: pd.DataFrame, report: FitReport, pixel_size: PixelSize = PixelSize()) -> dict[str, bytes]:
    """File name -> bytes of every read-out file (see the module docstring)."""
    height, width = image_shape_hw(report)
    labels = exports.label_image(droplets, (height, width))
    record = {
        **report.to_dict(),
        "pixel_size": pixel_size.to_dict(),
        "statistics": dataclasses.asdict(StatisticsSettings()),
    }
    return {
        "droplets.csv": droplet_table(droplets, pixel_size).to_csv(index=False, float_format="%.6g").encode(),
        "statistics.csv": fit_statistics(droplets, report, pixel_size)
        .to_csv(index=False, float_format="%.6g")
        .encode(),
        "labels.tif": exports.label_tiff_bytes(labels, pixel_size),
        "rois.zip": exports.roi_zip_bytes(droplets),
        "fit.json": json.dumps(record, indent=2, sort_keys=True).encode(),
    }


def write_fit_outputs(result, out_dir: str | Path, pixel_size: PixelSize = PixelSize()) -> Path:
    """Write a fit's files (``droplet_core.results.write_outputs``) with its read-out files over
    them into ``out_dir``. Everything is computed before the first file is written, so a fit
    that cannot be read out leaves no folder behind."""
    from droplet_core.results import write_outputs  # here: results imports this module

    files = readout_files(result.droplets, result.report, pixel_size)
    out = write_outputs(result, out_dir)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def stored_pixel_size(record: dict, image_bytes: bytes | None = None) -> PixelSize:
    """The pixel size a fit's ``fit.json`` record holds (a read-out's, else the file's), else
    the one the image bytes carry, else unknown."""
    for key in ("pixel_size", FILE_PIXEL_SIZE_KEY):
        recorded = PixelSize.from_dict(record.get(key))
        if recorded.known:
            return recorded
    return read_pixel_size(image_bytes) if image_bytes is not None else PixelSize()
