"""Fit many images with the same settings, on any ``concurrent.futures`` executor.

The command line runs batches on Dask distributed (``dask_executor``: a ``LocalCluster``
of worker processes, or an existing scheduler); the app runs them in its fit queue
(``droplet_core.service.jobs``, one lane per batch). Each image is one task, ``fit_image``, which
goes through the fit store: a fit already stored is read back instead of recomputed (so
an interrupted batch resumes where it stopped),
and a new fit is saved. Workers and the caller must therefore see the same store folder
and the image files (one machine, or a shared file system). A fit's id and droplets
depend only on the image bytes and the settings, never on the worker or scheduler that
computed it.

Outputs of a batch (``write_batch_outputs``)::

    droplets.csv          every droplet of every fitted image, with an ``image`` column first
    summary.csv           one row per image (``SUMMARY_COLUMNS``), failures with their reason
    fits/<image>/         each image's files as ``python -m droplet_core fit`` writes them: droplets.csv
                          (with label and µm columns), statistics.csv, labels.tif, rois.zip,
                          reconstruction.png and fit.json

The pixel size is the one given for the whole batch, else each file's own (``droplet_core.imaging.units``);
``summary.csv`` records it and each image's size statistics with their 90 % intervals.
"""

from __future__ import annotations

import glob
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from droplet_core.imaging.images import archive_image_members
from droplet_core.imaging.units import (
    UNKNOWN,
    PixelSize,
    read_pixel_size,
    resolve_pixel_size,
)
from droplet_core.measurements.counting import count_of_table, doubtful_mask
from droplet_core.measurements.readout import (
    droplet_table,
    fit_statistics,
    write_fit_outputs,
)
from droplet_core.measurements.size_statistics import statistics_wide
from droplet_core.service.requests import load_or_fit
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings

FITTED, STORED, FAILED = "fitted", "stored", "failed"
SUMMARY_COLUMNS = (
    "image",
    "fit_id",
    "status",
    "droplet_count",
    "count_low_90",
    "count_high_90",
    "median_radius",
    "rmse",
    "fit_quality",
    "fit_problems",
    "seconds",
    "error",
    "pixel_size_um",
    "pixel_size_origin",
)
FITS_FOLDER = "fits"
IMAGE_COLUMN = "image"
# Limits on an uploaded zip archive (the app's Batch page), against zip bombs.
MAX_ARCHIVE_MEMBERS = 1000
MAX_ARCHIVE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class BatchImage:
    """One image file of a batch.

    Attributes
    ----------
    name : label, unique within the batch: the ``image`` column of the tables and the
        output subfolder ``fits/<name>/``.
    path : absolute path of the file, readable by the workers.
    """

    name: str
    path: str


@dataclass(frozen=True)
class ImageOutcome:
    """What a batch did with one image: one row of ``summary.csv``.

    Attributes
    ----------
    image : the image's name in the batch.
    fit_id : id of the stored fit; None if the image failed.
    status : ``"fitted"`` (computed now), ``"stored"`` (already in the store, not
        recomputed) or ``"failed"``.
    droplet_count : the fit's droplet count (``droplet_core.measurements.counting``: the expected
        number of droplets); None if failed.
    count_low_90, count_high_90 : the count's 90 % interval; None if failed.
    median_radius : median radius of the likely droplets (``p_exists`` >= 0.5) in pixels of
        the image as given; None if failed or no droplets.
    rmse : reconstruction RMSE over all fitted channels; None if failed.
    fit_quality : the fit's verdict on itself (``droplet_core.inference.verdict``): ``good``,
        ``partial`` or ``failed``; None if the image failed or the fit has no verdict.
    fit_problems : the verdict's problems in one line; None when there are none.
    seconds : wall time this batch spent on the image.
    error : one-line reason of a failure, else None.
    pixel_size_um : micrometres per pixel used for the image's read-out; None in pixels.
    pixel_size_origin : where that pixel size came from (``droplet_core.imaging.units``).
    """

    image: str
    fit_id: str | None
    status: str
    droplet_count: int | None
    count_low_90: int | None
    count_high_90: int | None
    median_radius: float | None
    rmse: float | None
    fit_quality: str | None
    fit_problems: str | None
    seconds: float
    error: str | None
    pixel_size_um: float | None = None
    pixel_size_origin: str = UNKNOWN

    @property
    def pixel_size(self) -> PixelSize:
        if self.pixel_size_um is None:
            return PixelSize()
        return PixelSize(self.pixel_size_um, self.pixel_size_um, self.pixel_size_origin)

    @property
    def succeeded(self) -> bool:
        return self.status != FAILED


def failed_outcome(name: str, error: BaseException, seconds: float = 0.0) -> ImageOutcome:
    """An ``ImageOutcome`` for an image that could not be fitted, with a one-line reason.

    The reason is the message of a user-facing error (ImageError, FitError, StoreError, an
    unreadable file), else the exception's type and message.
    """
    text = " ".join(str(error).split())
    if not (isinstance(error, ValueError | LookupError | OSError) and text):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return ImageOutcome(name, None, FAILED, None, None, None, None, None, None, None, float(seconds), text)


def find_images(patterns: Sequence[str]) -> list[BatchImage]:
    """The files matching any of ``patterns`` (glob syntax, ``**`` recursive), sorted.

    Each file is named by its path relative to the deepest folder holding all matches
    (``"a.tif"``, or ``"day1/a.tif"`` for a recursive pattern); folders are left out.
    """
    paths = sorted(
        {
            os.path.abspath(path)
            for pattern in patterns
            for path in glob.glob(pattern, recursive=True)
            if os.path.isfile(path)
        }
    )
    if not paths:
        return []
    common = os.path.commonpath([os.path.dirname(path) for path in paths])
    return [BatchImage(os.path.relpath(path, common).replace(os.sep, "/"), path) for path in paths]


def fit_image(
    image: BatchImage, settings: FitSettings, store_root: str, pixel_size_um: float | None = None
) -> ImageOutcome:
    """Worker task: the stored fit of ``image`` with ``settings``, computed and saved if missing.

    ``pixel_size_um`` (µm per pixel) overrides the pixel size the file carries.

    Errors a user can act on (unreadable or malformed image, settings the image cannot
    take, a missing appearance source) come back as a failed outcome, not an exception.
    """
    from droplet_core.imaging.images import load_image, read_image_bytes, sha256_bytes

    started = time.perf_counter()
    try:
        store = FitStore(store_root)
        data = read_image_bytes(image.path)
        result, from_store = load_or_fit(load_image(data), sha256_bytes(data), settings, store, image_bytes=data)
        status = STORED if from_store else FITTED
    except (ValueError, LookupError, OSError) as exc:  # ImageError, FitError, StoreError included
        return failed_outcome(image.name, exc, time.perf_counter() - started)
    radii = result.droplets["radius"].to_numpy(dtype=float)[~doubtful_mask(result.droplets)]
    count = result.report.count or count_of_table(result.droplets)
    verdict = result.report.verdict
    pixel_size = resolve_pixel_size(read_pixel_size(data), pixel_size_um)
    return ImageOutcome(
        image=image.name,
        fit_id=result.fit_id,
        status=status,
        droplet_count=count.count,
        count_low_90=count.low,
        count_high_90=count.high,
        median_radius=float(np.median(radii)) if radii.size else None,
        rmse=float(np.sqrt(np.mean(np.square(result.report.rmse)))),
        fit_quality=verdict.quality if verdict is not None else None,
        fit_problems=(" ".join(verdict.problems) or None) if verdict is not None else None,
        seconds=time.perf_counter() - started,
        error=None,
        pixel_size_um=pixel_size.length_um,
        pixel_size_origin=pixel_size.origin,
    )


@dataclass(frozen=True)
class SubmittedBatch:
    """A batch whose tasks have been handed to an executor; poll it from any thread.

    Attributes
    ----------
    images : the batch, in order.
    futures : one future per image, same order; each resolves to an ``ImageOutcome``.
    """

    images: tuple[BatchImage, ...]
    futures: tuple[Future, ...]

    def done(self) -> bool:
        """Whether every image has finished (fitted, read from the store, or failed)."""
        return all(future.done() for future in self.futures)

    def finished_outcomes(self) -> list[ImageOutcome]:
        """Outcomes of the images finished so far, in batch order."""
        return [_outcome_of(future, image) for image, future in zip(self.images, self.futures) if future.done()]


def submit_batch(
    images: Sequence[BatchImage],
    settings: FitSettings,
    executor: Executor,
    store_root: str | os.PathLike,
    pixel_size_um: float | None = None,
) -> SubmittedBatch:
    """Hand one ``fit_image`` task per image to ``executor`` and return at once.

    Parameters
    ----------
    images : the batch; names must be unique.
    settings : the same settings for every image.
    executor : where the tasks run (Dask's ``Client.get_executor()``, ``JobRegistry.executor``, ...).
    store_root : the fit store folder, as the workers see it.
    pixel_size_um : µm per pixel for every image; None uses each file's own (or pixels).
    """
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        raise ValueError("image names in a batch must be unique")
    root = str(Path(store_root).resolve())
    futures = tuple(executor.submit(fit_image, image, settings, root, pixel_size_um) for image in images)
    return SubmittedBatch(tuple(images), futures)


def run_batch(
    images: Sequence[BatchImage],
    settings: FitSettings,
    executor: Executor,
    store_root: str | os.PathLike,
    on_outcome: Callable[[ImageOutcome, int, int], None] | None = None,
    pixel_size_um: float | None = None,
) -> list[ImageOutcome]:
    """Fit every image on ``executor`` (``submit_batch``) and wait for all of them.

    Parameters
    ----------
    images, settings, executor, store_root, pixel_size_um : as for ``submit_batch``.
    on_outcome : called as ``on_outcome(outcome, finished, total)`` as each image finishes.

    Returns
    -------
    list of ImageOutcome, in the order of ``images``. A task that raised (a bug, a
    worker that died) is a failed outcome; the other images go on.
    """
    batch = submit_batch(images, settings, executor, store_root, pixel_size_um)
    image_of = dict(zip(batch.futures, batch.images))
    for finished, future in enumerate(as_completed(batch.futures), start=1):
        if on_outcome is not None:
            on_outcome(_outcome_of(future, image_of[future]), finished, len(batch.futures))
    return batch.finished_outcomes()


def _outcome_of(future: Future, image: BatchImage) -> ImageOutcome:
    """The outcome of a finished task; a task that raised becomes a failed outcome."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - one image's crash must not end the batch
        return failed_outcome(image.name, exc)


def summary_table(outcomes: Sequence[ImageOutcome]) -> pd.DataFrame:
    """One row per image with ``SUMMARY_COLUMNS``."""
    return pd.DataFrame([asdict(outcome) for outcome in outcomes], columns=list(SUMMARY_COLUMNS))


def write_batch_outputs(outcomes: Sequence[ImageOutcome], store: FitStore, out_dir: str | os.PathLike) -> Path:
    """Write ``droplets.csv``, ``summary.csv`` and ``fits/<image>/`` for a finished batch.

    Each image's files are those ``python -m droplet_core fit`` writes for it, read back
    from the store; ``summary.csv`` adds each image's size statistics (``<name>``,
    ``<name>_low_90``, ``<name>_high_90``; diameters in µm where the pixel size is known,
    else px: see ``pixel_size_um``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables, statistics = [], {}
    for outcome in outcomes:
        if not outcome.succeeded:
            continue
        result = store.load(outcome.fit_id)
        write_fit_outputs(result, out / FITS_FOLDER / outcome.image, outcome.pixel_size)
        statistics[outcome.image] = statistics_wide(fit_statistics(result.droplets, result.report, outcome.pixel_size))
        tables.append(droplet_table(result.droplets, outcome.pixel_size).assign(**{IMAGE_COLUMN: outcome.image}))
    columns = [IMAGE_COLUMN, *dict.fromkeys(c for t in tables for c in t.columns if c != IMAGE_COLUMN)]
    droplets = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    droplets.reindex(columns=columns).to_csv(out / "droplets.csv", index=False, float_format="%.6g")
    summary = summary_table(outcomes)
    if statistics:
        # The count and its interval are the fit's own (``droplet_count``), already in the summary.
        sizes = pd.DataFrame.from_dict(statistics, orient="index")
        summary = summary.join(sizes.drop(columns=[c for c in sizes if c.startswith("count")]), on=IMAGE_COLUMN)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    return out


def unpack_uploads(files: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Uploaded ``(name, bytes)`` files as single images: each zip archive is replaced by its
    image members (``images.archive_image_members``).

    Names are reduced to the file name and made unique (``a.png``, ``a (2).png``).

    Raises
    ------
    ValueError
        A zip archive that is corrupt, or holds more than ``MAX_ARCHIVE_MEMBERS`` images
        or ``MAX_ARCHIVE_BYTES`` of them uncompressed (a zip bomb).
    """
    unpacked: list[tuple[str, bytes]] = []
    for name, data in files:
        if not name.lower().endswith(".zip"):
            unpacked.append((name, data))
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = archive_image_members(archive)
                if len(members) > MAX_ARCHIVE_MEMBERS:
                    raise ValueError(f"{name} holds {len(members)} images; at most {MAX_ARCHIVE_MEMBERS} per archive")
                if sum(info.file_size for info in members) > MAX_ARCHIVE_BYTES:
                    raise ValueError(f"{name} unpacks to more than {MAX_ARCHIVE_BYTES // 2**20} MiB of images")
                unpacked.extend((info.filename, archive.read(info)) for info in members)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError) as exc:
            raise ValueError(f"{name} is not a readable zip archive: {' '.join(str(exc).split())}") from exc
    return _with_unique_names(unpacked)


def _with_unique_names(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    taken: set[str] = set()
    renamed = []
    for name, data in files:
        base = os.path.basename(name.replace("\\", "/")) or "image"
        stem, suffix = os.path.splitext(base)
        unique, copy = base, 1
        while unique in taken:
            copy += 1
            unique = f"{stem} ({copy}){suffix}"
        taken.add(unique)
        renamed.append((unique, data))
    return renamed


def write_images(files: Sequence[tuple[str, bytes]], folder: str | os.PathLike) -> list[BatchImage]:
    """Write ``(name, bytes)`` files with unique plain names into ``folder``; the batch of them."""
    target = Path(folder).resolve()
    target.mkdir(parents=True, exist_ok=True)
    images = []
    for name, data in files:
        path = target / name
        if path.parent != target:
            raise ValueError(f"{name!r} is not a plain file name")
        path.write_bytes(data)
        images.append(BatchImage(name, str(path)))
    return images


def zip_folder(folder: str | os.PathLike) -> bytes:
    """Every file under ``folder`` in one zip archive, with paths relative to ``folder``."""
    root = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


@contextmanager
def dask_executor(scheduler: str | None = None, workers: int = 2) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor on Dask distributed, closed on exit.

    Parameters
    ----------
    scheduler : address of a running Dask scheduler (``tcp://host:8786``); None starts a
        ``LocalCluster`` of worker processes on this machine. The scheduler and its workers
        must be able to import ``droplet_core`` (it unpickles the tasks).
    workers : worker processes of the local cluster, one task each at a time (a fit
        already uses every core through XLA). Ignored with ``scheduler``.
    """
    from distributed import Client, LocalCluster  # lazy: only batches need Dask

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client.get_executor(pure=False)
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client.get_executor(pure=False)
