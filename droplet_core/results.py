"""The result of a fit, and the files a fit writes (droplets.csv, reconstruction.png, fit.json)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from droplet_core.readout import readout_files
from droplet_core.settings import FitSettings
from droplet_core.units import PixelSize

BASE_COLUMNS = ("x", "y", "radius")


class OptimiserRun(NamedTuple):
    """What a fit's optimiser (SVI, or Levenberg-Marquardt for a reused appearance) reached.

    ``params`` are the guide parameters (numpy); ``anchors`` ``(n, 3)`` and ``active``
    ``(n,)`` the droplet slots as the run left them; ``losses`` one value per step or
    iteration run; ``status`` ``"done"`` or ``"stopped"``; ``first_chunk_s`` the time of
    the first chunk of steps (compilation included, where there was any); ``final_loss``
    the loss where the run ended (SVI: the mean of its last chunk, whose single steps are
    noisy), or None when no step ran.
    """

    params: dict
    anchors: np.ndarray
    active: np.ndarray
    losses: np.ndarray
    steps_done: int
    status: str
    first_chunk_s: float
    final_loss: float | None


@dataclass(frozen=True, eq=False)
class FitResult:
    """A finished (or stopped) fit.

    Attributes
    ----------
    fit_id : store key, 32 lowercase hex characters.
    image_sha256 : sha256 of the image bytes as uploaded.
    settings : the settings that made it.
    droplets : one row per droplet; ``x`` (column), ``y`` (row) and ``radius`` in pixels
        of the image as uploaded, then the variant's own columns.
    observed : ``(h, w, c)`` float32, the fitted channel(s) at fit resolution.
    reconstruction : ``(h, w, c)`` float32, the model's rendering at fit resolution.
    losses : float32, the ELBO loss of every step, those of the fit it continued first.
    params : guide parameters (numpy), enough to warm start a further fit.
    appearance : the learned droplet appearance (``masks`` ``(types, m, m)`` for templates;
        the optics network's weights for neural), for the gallery and for reuse.
    info : everything ``fit.json`` records: settings, versions, device, timings,
        final loss, RMSE per channel, status.
    """

    fit_id: str
    image_sha256: str
    settings: FitSettings
    droplets: pd.DataFrame
    observed: np.ndarray
    reconstruction: np.ndarray
    losses: np.ndarray
    params: dict
    appearance: dict
    info: dict

    @property
    def residual(self) -> np.ndarray:
        """``(h, w, c)`` observed minus reconstruction."""
        return self.observed - self.reconstruction

    @property
    def status(self) -> str:
        return self.info["status"]


def rmse_per_channel(observed: np.ndarray, reconstruction: np.ndarray) -> list[float]:
    """Root-mean-square error of ``(h, w, c)`` arrays, one value per channel."""
    diff = np.asarray(observed, np.float64) - np.asarray(reconstruction, np.float64)
    return [float(v) for v in np.sqrt(np.mean(diff**2, axis=(0, 1)))]


def to_png_bytes(image: np.ndarray) -> bytes:
    """Encode a ``(h, w, c)`` float image in [0, 1] (c = 1 or 3) as an 8-bit PNG."""
    array = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(result: FitResult, out_dir: str | Path) -> Path:
    """Write droplets.csv, reconstruction.png and fit.json for ``result`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.droplets.to_csv(out / "droplets.csv", index=False, float_format="%.6g")
    (out / "reconstruction.png").write_bytes(to_png_bytes(result.reconstruction))
    (out / "fit.json").write_text(json.dumps(result.info, indent=2, sort_keys=True))
    return out


def zip_outputs(result: FitResult, pixel_size: PixelSize = PixelSize()) -> bytes:
    """The whole fit in one zip archive (for downloads): ``reconstruction.png`` and the
    read-out files (``droplet_core.readout``: droplets.csv with label and µm columns,
    statistics.csv, labels.tif, rois.zip, fit.json with the pixel size)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("reconstruction.png", to_png_bytes(result.reconstruction))
        for name, data in readout_files(result.droplets, result.info, pixel_size).items():
            archive.writestr(name, data)
    return buffer.getvalue()
