"""One route for every fit request: serve it from the store, or fit it and store it.

Whoever asks for a fit (the command line, batches, time-lapses, the app's queue through
``fit_tasks.compute_fit``) asks ``load_or_fit``: a request is keyed once (``fit_ids.fit_key``),
an identical request is served from the store instead of fitted again, and every stored fit
records the same things (the file's pixel size included).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import NamedTuple

import numpy as np

from droplet_core.fit_ids import fit_key
from droplet_core.results import FitResult
from droplet_core.service.store import FitStore
from droplet_core.settings import FitProgress, FitSettings

FitFunction = Callable[..., FitResult]


class StoreSaveError(OSError):
    """A fit ran but the store cannot keep its result: a fault of the fit or the store, not
    of the request (unlike a ``ValueError`` or ``StoreError``, which the app shows the user
    as their problem). The error the store raised is its ``__cause__``; an ``OSError``, so
    the command line and batches report it as a failure to write, as before."""


class ServedFit(NamedTuple):
    """A fit as ``load_or_fit`` served it: the result, and whether the store held it already."""

    result: FitResult
    from_store: bool


def request_key(image_sha256: str, settings: FitSettings, parent: FitResult | None = None) -> str:
    """The fit id a complete fit of this request gets (its store key); ``parent`` is the fit
    it continues or starts from."""
    return fit_key(image_sha256, settings, parent.fit_id if parent is not None else None)


def load_or_fit(
    image: np.ndarray,
    image_sha256: str,
    settings: FitSettings,
    store: FitStore,
    *,
    image_bytes: bytes | None = None,
    warm_start: FitResult | None = None,
    appearance_source: FitResult | None = None,
    start_from: FitResult | None = None,
    progress: Callable[[FitProgress], None] | None = None,
    stop: threading.Event | None = None,
    fit_id: str | None = None,
    fit_fn: FitFunction | None = None,
) -> ServedFit:
    """The stored fit of this request, or a new fit of it, saved in ``store``.

    Parameters
    ----------
    image : (H, W, 3) float32 RGB in [0, 1], as uploaded.
    image_sha256 : sha256 hex of the uploaded bytes.
    settings : what to fit and how.
    store : where fits are looked up and saved.
    image_bytes : the uploaded file's bytes, when there is a file: the pixel size it
        carries is recorded with a new fit.
    warm_start : an earlier fit of the same image (or of a time-lapse's previous frame) to continue from.
    appearance_source : the fit named by ``settings.appearance_from``; loaded from
        ``store`` when not given.
    start_from : a fit of a similar image (a time-lapse's previous frame) whose droplets
        start this fit.
    progress, stop : as ``droplet_core.inference.engine.run_fit``.
    fit_id : ``request_key`` of this request, when the caller has computed it already.
    fit_fn : the fit function, called as ``fit_fn(image, settings, image_sha256=...,
        progress=..., stop=..., warm_start=...)``, with ``appearance_source=`` and
        ``start_from=`` only when the request has them;
        ``droplet_core.inference.engine.run_fit`` when None.

    Returns
    -------
    ServedFit
        The result and whether it came from the store. A fit stopped early is stored
        under its own id (a later identical request fits again).

    Raises
    ------
    StoreError
        The stored fit (or the appearance source) cannot be read.
    FitError
        The fit cannot run.
    StoreSaveError
        The fit ran but its result cannot be stored.
    RuntimeError
        The fit function returned a complete fit under another id than the request's.
    """
    key = fit_id or request_key(image_sha256, settings, warm_start if warm_start is not None else start_from)
    if store.has(key):
        return ServedFit(store.load(key), True)
    if fit_fn is None:
        from droplet_core.inference.engine import run_fit  # here: the fit engine loads JAX

        fit_fn = partial(run_fit, fit_id=key)
    if settings.appearance_from is not None and appearance_source is None:
        appearance_source = store.load(settings.appearance_from)
    optional = {"appearance_source": appearance_source, "start_from": start_from}
    result = fit_fn(
        image,
        settings,
        image_sha256=image_sha256,
        progress=progress,
        stop=stop,
        warm_start=warm_start,
        **{name: value for name, value in optional.items() if value is not None},
    )
    if result.status == "done" and result.fit_id != key:
        # The store would file it where no later request looks: a key bug, not a fit.
        raise RuntimeError(f"fit returned id {result.fit_id}, expected {key}")
    if image_bytes is not None:
        result = replace(result, report=result.report.with_file_pixel_size(image_bytes))
    try:
        store.save(result)
    except (ValueError, OSError) as exc:
        raise StoreSaveError(f"fit {result.fit_id} cannot be stored: {type(exc).__name__}: {exc}") from exc
    return ServedFit(result, False)
