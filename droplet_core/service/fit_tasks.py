"""What runs a fit wherever it runs: in a thread of the app, or as a task on a Dask worker.

``compute_fit`` takes a fit from the store or computes and stores it (``requests.load_or_fit``),
and turns every failure into a ``FitOutcome`` with a one-line message. ``fit_on_worker`` wraps it for a
cluster: the worker reads the uploaded image from the shared store, reports progress and
learns about Stop through ``JobFiles`` (``<store>/jobs/<token>/progress.json`` and ``stop``),
stores the result itself (atomically, ``droplet_core.service.store``) and sends back only the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from droplet_core.results import FitResult
from droplet_core.service.requests import FitFunction, StoreSaveError, load_or_fit, request_key
from droplet_core.service.store import FitStore, StoreError
from droplet_core.settings import FitProgress, FitSettings

logger = logging.getLogger(__name__)

# Progress and stop files of fits running on a cluster, under the store root.
JOBS_FOLDER = "jobs"
PROGRESS_FILE = "progress.json"
STOP_FILE = "stop"

# A running fit rewrites its progress file after every chunk; a job folder untouched this
# long belongs to a fit whose app went away (its worker finished, nobody removed the files).
STALE_JOB_FILES_S = 3600.0

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"


@dataclass(frozen=True)
class FitOutcome:
    """How a computed (or looked-up) fit ended; what a cluster worker sends back.

    Attributes
    ----------
    status : ``"done"``, ``"stopped"`` or ``"failed"``.
    fit_id : id of the stored result; None without one (failed, or stopped before a step).
    error : one-line message of a failure, else None.
    """

    status: str
    fit_id: str | None
    error: str | None


class JobFiles:
    """The progress and stop files of one fit run on a cluster: ``<store>/jobs/<token>/``."""

    def __init__(self, store_root: str | os.PathLike, token: str) -> None:
        self.folder = Path(store_root) / JOBS_FOLDER / token
        self._losses: list[float] = []

    def write_progress(self, progress: FitProgress) -> None:
        """Replace ``progress.json`` (atomically: readers never see half a file)."""
        self._losses.append(float(progress.loss))
        record = {
            "step": int(progress.step),
            "loss": float(progress.loss),
            "elapsed_s": float(progress.elapsed_s),
            "droplets": int(progress.droplets),
            "losses": self._losses,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, work = tempfile.mkstemp(prefix=".progress-", dir=self.folder)
        with os.fdopen(handle, "w") as file:
            json.dump(record, file)
        os.replace(work, self.folder / PROGRESS_FILE)

    def read_progress(self) -> dict | None:
        """The last progress record, or None before the first (or if unreadable)."""
        try:
            return json.loads((self.folder / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def request_stop(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / STOP_FILE).touch()

    def is_set(self) -> bool:
        """Whether a stop was requested (``run_fit``'s ``stop`` only calls ``is_set``)."""
        return (self.folder / STOP_FILE).exists()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_stale_job_files(store_root: str | os.PathLike, max_age_s: float = STALE_JOB_FILES_S) -> int:
    """Remove the ``jobs/<token>/`` folders not written to for ``max_age_s``; how many went."""
    cutoff = time.time() - max_age_s
    removed = 0
    for folder in (Path(store_root) / JOBS_FOLDER).glob("*"):
        try:
            stale = folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff
        except OSError:
            continue  # removed meanwhile by another app process
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def compute_fit(
    image: np.ndarray,
    image_sha256: str,
    settings: FitSettings,
    store: FitStore,
    fit_fn: FitFunction | None,
    *,
    progress: Callable[[FitProgress], None],
    stop,
    warm_start: FitResult | None = None,
) -> tuple[FitOutcome, FitResult | None]:
    """Compute and store one fit (or take it from the store); failures become outcomes.

    Parameters
    ----------
    image : float32 ``(H, W, 3)`` in [0, 1], as uploaded.
    image_sha256, settings, warm_start : the request.
    store : where the result is looked up first and saved.
    fit_fn : the fit function (``droplet_core.inference.engine.run_fit`` when None).
    progress, stop : handed to the fit function (``stop`` needs only ``is_set()``).

    Returns
    -------
    The outcome, and the result when there is one. A bad request (``ValueError``, which
    includes ``FitError``, or ``StoreError``) fails with its own message for the user; any
    other error, a result the store cannot keep included, fails as ``"fit failed: ..."``.
    """
    key = request_key(image_sha256, settings, warm_start)
    try:
        # The store may hold this fit by now: another session or process stored it while
        # the request was queued.
        result = load_or_fit(
            image,
            image_sha256,
            settings,
            store,
            warm_start=warm_start,
            progress=progress,
            stop=stop,
            fit_id=key,
            fit_fn=fit_fn,
        ).result
    except (ValueError, StoreError) as exc:  # FitError, bad settings, a missing source: a message for the user
        return FitOutcome(FAILED, None, one_line(str(exc)) or type(exc).__name__), None
    except Exception as exc:
        logger.exception("fit %s failed", key)
        failure = exc.__cause__ if isinstance(exc, StoreSaveError) else exc
        return FitOutcome(FAILED, None, one_line(f"fit failed: {type(failure).__name__}: {failure}")), None
    return FitOutcome(result.status, result.fit_id, None), result


def fit_on_worker(
    image: np.ndarray | None,
    image_sha256: str,
    settings: FitSettings,
    parent_fit_id: str | None,
    store_root: str,
    token: str,
    fit_fn: FitFunction | None = None,
) -> FitOutcome:
    """Cluster task: one fit, stored by the worker; progress and stop through ``JobFiles``.

    ``image`` None: decode the stored upload ``image_sha256`` as the app does. Returns only
    the outcome (the result stays in the shared store), so nothing large travels back.
    """
    store = FitStore(store_root)
    files = JobFiles(store.root, token)
    try:
        if image is None:
            from droplet_core.imaging.images import load_image, max_pixels_limit

            image = load_image(store.image_bytes(image_sha256), max_pixels=max_pixels_limit())
        warm_start = store.load(parent_fit_id) if parent_fit_id else None
    except (StoreError, ValueError) as exc:  # ImageError is a ValueError
        return FitOutcome(FAILED, None, one_line(str(exc)))
    if files.is_set():
        return FitOutcome(STOPPED, None, None)
    outcome, _ = compute_fit(
        image, image_sha256, settings, store, fit_fn, progress=files.write_progress, stop=files, warm_start=warm_start
    )
    return outcome


def one_line(text: str) -> str:
    return " ".join(text.split())
