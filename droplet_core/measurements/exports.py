"""Exports to the tools labs use: a label image (TIFF) and an ImageJ / Fiji ROI set (zip).

Both number droplets by ``label``: label ``k`` is row ``k`` of the droplet table counted
from 1 (the last column, ``label``, of the exported ``droplets.csv``), and 0 is background.
Coordinates follow the project's convention (pixel centre at its integer index); ImageJ
puts a pixel's centre at index + 0.5, which the ROIs account for.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile

import numpy as np
import pandas as pd
import roifile
import tifffile

from droplet_core.imaging.units import PixelSize


def labelled(droplets: pd.DataFrame) -> pd.DataFrame:
    """``droplets`` with a last column ``label`` = 1, 2, ... (row order; ``x, y, radius`` stay first)."""
    table = droplets.reset_index(drop=True).drop(columns="label", errors="ignore")
    return table.assign(label=np.arange(1, len(table) + 1))


def label_image(droplets: pd.DataFrame, shape_hw: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` integer image: 0 = background, ``k`` = the disc of row ``k - 1`` of ``droplets``.

    A pixel belongs to a droplet when its centre lies within the droplet's fitted radius
    of the droplet's centre; where discs overlap, the droplet whose centre is nearer wins.
    The dtype is uint16 (what ImageJ reads) unless there are 65 535 droplets or more (uint32).
    """
    height, width = int(shape_hw[0]), int(shape_hw[1])
    x, y, radius = (droplets[c].to_numpy(float) for c in ("x", "y", "radius"))
    labels = np.zeros((height, width), np.uint16 if len(droplets) < 2**16 - 1 else np.uint32)
    nearest = np.full((height, width), np.inf)
    for index in range(len(droplets)):
        reach = radius[index]
        r0, r1 = max(int(np.floor(y[index] - reach)), 0), min(int(np.ceil(y[index] + reach)) + 1, height)
        c0, c1 = max(int(np.floor(x[index] - reach)), 0), min(int(np.ceil(x[index] + reach)) + 1, width)
        if r1 <= r0 or c1 <= c0:
            continue
        distance = np.hypot(np.arange(c0, c1)[None, :] - x[index], np.arange(r0, r1)[:, None] - y[index])
        wins = (distance <= radius[index]) & (distance < nearest[r0:r1, c0:c1])
        labels[r0:r1, c0:c1][wins] = index + 1
        nearest[r0:r1, c0:c1][wins] = distance[wins]
    return labels


def label_tiff_bytes(labels: np.ndarray, pixel_size: PixelSize = PixelSize()) -> bytes:
    """``labels`` ``(h, w)`` as a TIFF; an ImageJ TIFF with the pixel size (µm) when uint16."""
    buffer = io.BytesIO()
    if labels.dtype == np.uint16:
        resolution = (1.0 / pixel_size.x_um, 1.0 / pixel_size.y_um) if pixel_size.known else None
        tifffile.imwrite(
            buffer, labels, imagej=True, resolution=resolution, metadata={"unit": "um"} if pixel_size.known else {}
        )
    else:
        tifffile.imwrite(buffer, labels)
    return buffer.getvalue()


def oval_rois(droplets: pd.DataFrame) -> list[roifile.ImagejRoi]:
    """One ImageJ oval ROI per droplet (sub-pixel bounds), named by its label."""
    rois = []
    for label, (x, y, radius) in enumerate(droplets[["x", "y", "radius"]].to_numpy(float), start=1):
        left, top = x + 0.5 - radius, y + 0.5 - radius  # ImageJ's pixel centres are at index + 0.5
        rois.append(
            roifile.ImagejRoi(
                roitype=roifile.ROI_TYPE.OVAL,
                options=roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION,
                name=str(label),
                left=int(np.floor(left)),
                top=int(np.floor(top)),
                right=int(np.ceil(left + 2 * radius)),
                bottom=int(np.ceil(top + 2 * radius)),
                xd=left,
                yd=top,
                widthd=2 * radius,
                heightd=2 * radius,
            )
        )
    return rois


def roi_zip_bytes(droplets: pd.DataFrame) -> bytes:
    """The ROI set of ``droplets`` as a zip that Fiji's ROI manager opens (``label.roi`` members)."""
    rois = oval_rois(droplets)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "rois.zip")
        if rois:
            roifile.roiwrite(path, rois, name=[roi.name for roi in rois], mode="w")
        else:  # an empty, valid zip
            zipfile.ZipFile(path, "w").close()
        with open(path, "rb") as handle:
            return handle.read()
