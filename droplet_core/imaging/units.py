"""Physical pixel size: read from the image file, set by the user, or unknown (pixels).

Units are applied only when results are read out (tables, statistics, exports): a fit
and its id never depend on the pixel size, so changing it never refits.

Where a pixel size comes from, in the words the app and ``fit.json`` use:

- ``"from the file"``: an OME-TIFF's ``PhysicalSizeX/Y`` (and their units), or an ImageJ
  TIFF's resolution tags (pixels per ``unit``), or a TIFF whose resolution unit is the
  centimetre;
- ``"set by you"``: the app's pixel-size field or the command line's ``--pixel-size``;
- ``"unknown: pixels"``: neither; results stay in pixels.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tifffile

FROM_FILE = "from the file"
SET_BY_USER = "set by you"
UNKNOWN = "unknown: pixels"

# Micrometres per unit, for the length units microscopy files and users write.
_UM_PER_UNIT = {
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,  # how ImageJ writes "µm" into its ASCII description
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}
_PIXEL_SIZE_TEXT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([^\s0-9.]*)\s*")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class PixelSize:
    """The physical size of one pixel of the image as given.

    Attributes
    ----------
    x_um, y_um : width and height of a pixel in micrometres; None when unknown.
    origin : ``FROM_FILE``, ``SET_BY_USER`` or ``UNKNOWN``.
    """

    x_um: float | None = None
    y_um: float | None = None
    origin: str = UNKNOWN

    def __post_init__(self) -> None:
        if (self.x_um is None) != (self.y_um is None):
            raise ValueError("give both pixel sides or neither")
        if self.x_um is not None and not (
            np.isfinite(self.x_um) and np.isfinite(self.y_um) and self.x_um > 0 and self.y_um > 0
        ):
            raise ValueError(f"a pixel size must be a positive number, not {self.x_um} x {self.y_um} um")
        if self.origin not in (FROM_FILE, SET_BY_USER, UNKNOWN):
            raise ValueError(f"unknown pixel-size origin {self.origin!r}")

    @property
    def known(self) -> bool:
        return self.x_um is not None

    @property
    def length_um(self) -> float | None:
        """The scale for lengths in any direction (diameters): the geometric mean of the sides."""
        return float(np.sqrt(self.x_um * self.y_um)) if self.known else None

    def describe(self) -> str:
        """One line for people, e.g. ``0.65 µm per pixel (from the file)``."""
        if not self.known:
            return "unknown: results in pixels"
        sides = f"{self.x_um:.4g}" if np.isclose(self.x_um, self.y_um) else f"{self.x_um:.4g} × {self.y_um:.4g}"
        return f"{sides} µm per pixel ({self.origin})"

    def to_dict(self) -> dict:
        """The ``pixel_size`` record of ``fit.json``."""
        return {"x_um": self.x_um, "y_um": self.y_um, "origin": self.origin}

    @classmethod
    def from_dict(cls, record: dict | None) -> PixelSize:
        if not record:
            return cls()
        return cls(record.get("x_um"), record.get("y_um"), record.get("origin", UNKNOWN))


def user_pixel_size(um_per_px: float) -> PixelSize:
    """A square pixel of ``um_per_px`` micrometres, set by the user."""
    return PixelSize(float(um_per_px), float(um_per_px), SET_BY_USER)


def parse_pixel_size(text: str) -> float:
    """``"0.65um"``, ``"650 nm"``, ``"0.65"`` (micrometres) -> micrometres per pixel.

    Raises ``ValueError`` with one line for anything else.
    """
    match = _PIXEL_SIZE_TEXT.fullmatch(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _UM_PER_UNIT):
        raise ValueError(f"pixel size {text!r} is not a number with a length unit such as 0.65um or 650nm")
    value = float(match.group(1)) * _UM_PER_UNIT[unit or "um"]
    if value <= 0:
        raise ValueError(f"pixel size {text!r} must be positive")
    return value


def read_pixel_size(data: bytes) -> PixelSize:
    """The pixel size an image file records, or ``PixelSize()`` (unknown) when it records none.

    Parameters
    ----------
    data : the image file's bytes. Only TIFFs carry a physical pixel size; PNG and JPEG
        "dots per inch" describe printing, not the microscope, and are ignored.
    """
    if data[:4] not in _TIFF_MAGIC:
        return PixelSize()
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            sides = _ome_pixel_size(tiff) or _resolution_pixel_size(tiff)
    except Exception:  # noqa: BLE001 - a file we cannot read metadata from simply has none
        return PixelSize()
    if sides is None:
        return PixelSize()
    return PixelSize(sides[0], sides[1], FROM_FILE)


def _ome_pixel_size(tiff: tifffile.TiffFile) -> tuple[float, float] | None:
    """``PhysicalSizeX/Y`` of the first OME ``Pixels`` element in micrometres (OME's default unit)."""
    if not tiff.is_ome or not tiff.ome_metadata:
        return None
    root = ElementTree.fromstring(tiff.ome_metadata)
    pixels = next(
        (element for element in root.iter() if element.tag.endswith("}Pixels") or element.tag == "Pixels"), None
    )
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sides = []
    for axis in ("X", "Y"):
        value = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"])
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm").lower()
        if unit not in _UM_PER_UNIT:
            return None
        sides.append(float(value) * _UM_PER_UNIT[unit])
    return _positive(sides)


def _resolution_pixel_size(tiff: tifffile.TiffFile) -> tuple[float, float] | None:
    """Pixel sides from the resolution tags: in ImageJ's ``unit``, or in centimetres."""
    page = tiff.pages[0]
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if tiff.is_imagej:
        unit = str((tiff.imagej_metadata or {}).get("unit", "")).lower()
    elif int(tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2) == 3:
        unit = "cm"
    else:
        unit = ""  # inches (a print resolution) or none
    if unit not in _UM_PER_UNIT:
        return None
    sides = []
    for name in ("XResolution", "YResolution"):
        numerator, denominator = tags[name].value
        if numerator <= 0 or denominator <= 0:
            return None
        sides.append(_UM_PER_UNIT[unit] * denominator / numerator)  # the tag is pixels per unit
    return _positive(sides)


def _positive(sides: list[float]) -> tuple[float, float] | None:
    return (sides[0], sides[1]) if all(np.isfinite(s) and s > 0 for s in sides) else None


def resolve_pixel_size(from_file: PixelSize, user_um_per_px: float | None = None) -> PixelSize:
    """The pixel size to use: the user's when set (it overrides the file's), else the file's."""
    return user_pixel_size(user_um_per_px) if user_um_per_px else from_file


def with_units(droplets: pd.DataFrame, pixel_size: PixelSize) -> pd.DataFrame:
    """``droplets`` with ``x_um``, ``y_um``, ``diameter_um`` and their sds when the pixel size is known.

    ``x`` scales by the pixel's width, ``y`` by its height and the diameter (twice the
    radius) by ``pixel_size.length_um``; the table in pixels is returned unchanged when the
    pixel size is unknown. The pixel columns are kept.
    """
    if not pixel_size.known:
        return droplets
    table = droplets.copy()
    table["x_um"] = table["x"] * pixel_size.x_um
    table["y_um"] = table["y"] * pixel_size.y_um
    table["diameter_um"] = 2.0 * table["radius"] * pixel_size.length_um
    if "sd_x" in table:
        table["sd_x_um"] = table["sd_x"] * pixel_size.x_um
    if "sd_y" in table:
        table["sd_y_um"] = table["sd_y"] * pixel_size.y_um
    if "sd_radius" in table:
        table["sd_diameter_um"] = 2.0 * table["sd_radius"] * pixel_size.length_um
    return table
