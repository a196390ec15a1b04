"""The result of a fit, and the files a fit writes (droplets.csv, reconstruction.png, fit.json)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from droplet_core.imaging.images import crop_origin, encode_png, to_uint8
from droplet_core.imaging.units import PixelSize, read_pixel_size
from droplet_core.inference.verdict import FitVerdict
from droplet_core.measurements.counting import DropletCount
from droplet_core.measurements.readout import FILE_PIXEL_SIZE_KEY, readout_files
from droplet_core.settings import FitSettings

BASE_COLUMNS = ("x", "y", "radius")


class WarmStartState(NamedTuple):
    """The droplet slots a fit ended with, which a continued fit starts from.

    ``anchors`` ``(n, 3)`` are each slot's detector x, y, radius (fit px), ``active``
    ``(n,)`` 1.0 for a droplet in the model and 0.0 for a switched-off or spare slot,
    ``polarity`` +1.0 when droplets are brighter than the background, -1.0 when darker,
    ``drawn_ratio`` ``(n,)`` each active slot's outline radius in the droplet table over its
    model radius (NaN for other slots; None for fits stored before it was kept), which a
    continued fit's droplet switching starts from instead of reading every outline again.
    """

    anchors: np.ndarray
    active: np.ndarray
    polarity: float
    drawn_ratio: np.ndarray | None = None


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


@dataclass(frozen=True)
class Timings:
    """Seconds a fit spent: finding candidates, compiling (its first chunk of steps),
    optimising, the uncertainty, and in all."""

    detect_s: float | None = None
    compile_s: float | None = None
    fit_s: float | None = None
    uncertainty_s: float | None = None
    total_s: float | None = None


@dataclass(frozen=True)
class UncertaintyMethod:
    """How a fit's uncertainties were computed: the method and the calibrated model
    discrepancy added to it (sd per px of radius of ``x``, ``y``, ``radius`` at
    ``uncertainty.DISCREPANCY_REFERENCE_RADIUS_PX``, the count's relative sd, and the power of
    the radius each sd grows with: 1 where missing, as in fits before it was recorded)."""

    method: str = "laplace"
    discrepancy_per_radius: dict | None = None
    count_discrepancy: float = 0.0
    discrepancy_radius_power: dict | None = None


# fit.json keys of the count, which ``FitReport`` holds as one ``DropletCount``.
_COUNT_KEYS = ("droplet_count", "droplet_count_interval_90", "candidate_droplets", "doubtful_droplets")


@dataclass(frozen=True)
class FitReport:
    """What a fit reports about itself; ``fit.json`` is its ``to_dict``.

    Attributes
    ----------
    fit_id : store key, 32 lowercase hex characters.
    image_sha256 : sha256 of the image bytes as uploaded.
    settings : the settings that made it.
    status : ``"done"`` or ``"stopped"``.
    created : ISO time (UTC) the fit finished.
    steps_done : steps (or Levenberg-Marquardt iterations) of this fit.
    total_steps_done : steps including those of the fits it continued.
    final_loss : loss where the run ended, None when no step ran.
    rmse : reconstruction RMSE per channel (channel units).
    device : the JAX device it ran on, in words.
    versions : library name -> version.
    timings : where the time went.
    count : the expected droplet count and its 90 % interval (None for fits made before
        Droplet counted that way).
    verdict : how well the fit explains the image (None for fits made before verdicts).
    uncertainty : how the uncertainties were computed.
    candidate_count : droplet slots of the fit (active or not).
    downscale : the block-mean downscale factor the fit ran at.
    downscale_choice : ``droplet_core.detection.scale.ScaleChoice.to_dict()`` of an automatic
        downscale, None when the user set it.
    crop_origin : ``(x0, y0)`` of the crop, px of the uploaded image.
    fit_shape : ``(h, w, c)`` of the fitted channel(s).
    image_shape : shape of the uploaded image.
    parent_fit_id : the fit it continued, if any.
    file_pixel_size : ``PixelSize.to_dict()`` of the pixel size the image file carries,
        recorded when the image was read from a file (None else).
    """

    fit_id: str
    image_sha256: str
    settings: FitSettings
    status: str
    created: str
    steps_done: int
    total_steps_done: int
    final_loss: float | None = None
    rmse: tuple[float, ...] = ()
    device: str = "?"
    versions: dict | None = None
    timings: Timings = Timings()
    count: DropletCount | None = None
    verdict: FitVerdict | None = None
    uncertainty: UncertaintyMethod = UncertaintyMethod()
    candidate_count: int | None = None
    downscale: int = 1
    downscale_choice: dict | None = None
    crop_origin: tuple[int, int] = (0, 0)
    fit_shape: tuple[int, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    parent_fit_id: str | None = None
    file_pixel_size: dict | None = None

    @property
    def channel(self) -> str:
        return self.settings.channel

    @property
    def appearance_from(self) -> str | None:
        return self.settings.appearance_from

    @property
    def model(self) -> str:
        return self.settings.model

    def with_file_pixel_size(self, image_bytes: bytes) -> FitReport:
        """This report recording the pixel size the image file carries (a property of the
        image, so storing it with the fit keeps equal fit ids equal)."""
        return replace(self, file_pixel_size=read_pixel_size(image_bytes).to_dict())

    def to_dict(self) -> dict:
        """The ``fit.json`` record (plain JSON types)."""
        record = {
            "fit_id": self.fit_id,
            "image_sha256": self.image_sha256,
            "parent_fit_id": self.parent_fit_id,
            "appearance_from": self.appearance_from,
            "settings": self.settings.to_dict(),
            "status": self.status,
            "created": self.created,
            "steps_done": self.steps_done,
            "total_steps_done": self.total_steps_done,
            "final_loss": self.final_loss,
            "rmse": list(self.rmse),
            "channel": self.channel,
            "device": self.device,
            "versions": self.versions,
            "timings": asdict(self.timings),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "uncertainty": asdict(self.uncertainty),
            "candidate_count": self.candidate_count,
            "downscale": self.downscale,
            "downscale_choice": self.downscale_choice,
            "crop_origin": list(self.crop_origin),
            "fit_shape": None if self.fit_shape is None else list(self.fit_shape),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
        }
        if self.count is not None:
            record.update(
                {
                    "droplet_count": self.count.count,
                    "droplet_count_interval_90": [self.count.low, self.count.high],
                    "candidate_droplets": self.count.candidates,
                    "doubtful_droplets": self.count.doubtful,
                }
            )
        if self.file_pixel_size is not None:
            record[FILE_PIXEL_SIZE_KEY] = self.file_pixel_size
        return record

    @classmethod
    def from_dict(cls, record: dict) -> FitReport:
        """The report of a ``fit.json`` record, also of fits made by older code (missing
        entries take their defaults; entries this code does not know are ignored).

        Raises KeyError or ValueError for a record without id, image, settings or status.
        """
        count = None
        if all(key in record for key in _COUNT_KEYS):
            low, high = record["droplet_count_interval_90"]
            count = DropletCount(
                int(record["droplet_count"]),
                int(low),
                int(high),
                int(record["candidate_droplets"]),
                int(record["doubtful_droplets"]),
            )
        known = {f.name for f in fields(Timings)}
        timings = Timings(**{k: v for k, v in (record.get("timings") or {}).items() if k in known})
        known = {f.name for f in fields(UncertaintyMethod)}
        uncertainty = UncertaintyMethod(**{k: v for k, v in (record.get("uncertainty") or {}).items() if k in known})
        steps_done = int(record["steps_done"])
        shapes = {
            name: None if record.get(name) is None else tuple(int(v) for v in record[name])
            for name in ("fit_shape", "image_shape")
        }
        settings = FitSettings.from_dict(record["settings"])
        return cls(
            fit_id=record["fit_id"],
            image_sha256=record["image_sha256"],
            settings=settings,
            status=record["status"],
            created=record["created"],
            steps_done=steps_done,
            total_steps_done=int(record.get("total_steps_done", steps_done)),
            final_loss=record.get("final_loss"),
            rmse=tuple(float(v) for v in record.get("rmse") or ()),
            device=record.get("device", "?"),
            versions=record.get("versions"),
            timings=timings,
            count=count,
            verdict=FitVerdict.from_dict(record["verdict"]) if record.get("verdict") else None,
            uncertainty=uncertainty,
            candidate_count=record.get("candidate_count"),
            downscale=int(record.get("downscale") or 1),
            downscale_choice=record.get("downscale_choice"),
            crop_origin=tuple(int(v) for v in record["crop_origin"][:2])
            if record.get("crop_origin") is not None
            else crop_origin(settings.crop)
            if settings.crop is not None
            else (0, 0),
            parent_fit_id=record.get("parent_fit_id"),
            file_pixel_size=record.get(FILE_PIXEL_SIZE_KEY),
            **shapes,
        )


@dataclass(frozen=True, eq=False)
class FitResult:
    """A finished (or stopped) fit.

    Attributes
    ----------
    report : what the fit reports about itself (id, settings, status, count, verdict,
        timings, ...; ``fit.json``).
    droplets : one row per droplet; ``x`` (column), ``y`` (row) and ``radius`` in pixels
        of the image as uploaded, then the variant's own columns.
    observed : ``(h, w, c)`` float32, the fitted channel(s) at fit resolution.
    reconstruction : ``(h, w, c)`` float32, the model's rendering at fit resolution.
    losses : float32, the ELBO loss of every step, those of the fit it continued first.
    params : guide parameters (numpy): ``<site>_auto_loc`` and ``<site>_auto_scale``.
    warm_start : the droplet slots the fit ended with, for a further fit to continue from
        (None for a fit stored without them).
    appearance : the learned droplet appearance (``masks`` ``(types, m, m)`` for templates;
        the optics network's weights for neural), for the gallery and for reuse.
    """

    report: FitReport
    droplets: pd.DataFrame
    observed: np.ndarray
    reconstruction: np.ndarray
    losses: np.ndarray
    params: dict
    warm_start: WarmStartState | None
    appearance: dict

    @property
    def fit_id(self) -> str:
        return self.report.fit_id

    @property
    def image_sha256(self) -> str:
        return self.report.image_sha256

    @property
    def settings(self) -> FitSettings:
        return self.report.settings

    @property
    def residual(self) -> np.ndarray:
        """``(h, w, c)`` observed minus reconstruction."""
        return self.observed - self.reconstruction

    @property
    def status(self) -> str:
        return self.report.status


def rmse_per_channel(observed: np.ndarray, reconstruction: np.ndarray) -> list[float]:
    """Root-mean-square error of ``(h, w, c)`` arrays, one value per channel."""
    diff = np.asarray(observed, np.float64) - np.asarray(reconstruction, np.float64)
    return [float(v) for v in np.sqrt(np.mean(diff**2, axis=(0, 1)))]


def write_outputs(result: FitResult, out_dir: str | Path) -> Path:
    """Write droplets.csv, reconstruction.png and fit.json for ``result`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.droplets.to_csv(out / "droplets.csv", index=False, float_format="%.6g")
    (out / "reconstruction.png").write_bytes(encode_png(to_uint8(result.reconstruction)))
    (out / "fit.json").write_text(json.dumps(result.report.to_dict(), indent=2, sort_keys=True))
    return out


def zip_outputs(result: FitResult, pixel_size: PixelSize = PixelSize()) -> bytes:
    """The whole fit in one zip archive (for downloads): ``reconstruction.png`` and the
    read-out files (``droplet_core.measurements.readout``: droplets.csv with label and µm columns,
    statistics.csv, labels.tif, rois.zip, fit.json with the pixel size)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("reconstruction.png", encode_png(to_uint8(result.reconstruction)))
        for name, data in readout_files(result.droplets, result.report, pixel_size).items():
            archive.writestr(name, data)
    return buffer.getvalue()
