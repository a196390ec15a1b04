"""Content-addressed fit store on disk: image hash + settings -> saved fit, kept across restarts.

Layout under the store root::

    fits/<fit_id>/    droplets.csv, reconstruction.png, fit.json, arrays.npz (one finished entry)
    images/<sha256>   the uploaded image bytes, so a share link can show the original image
    image-names/<sha256>.txt   the file name the image was first uploaded under
    .tmp/             work area; entries are built here and renamed into place

An entry appears in ``fits/`` only through one ``os.rename`` of a complete directory, so
readers (threads or other processes) never see a half-written fit, and a process killed
mid-write leaves at most a stray directory in ``.tmp/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from droplet_core.fit_ids import is_valid_fit_id, is_valid_sha256
from droplet_core.results import FitReport, FitResult, WarmStartState, write_outputs

STORE_ENV_VAR = "DROPLET_STORE"
ARRAYS_FILE = "arrays.npz"
INFO_FILE = "fit.json"
DROPLETS_FILE = "droplets.csv"

# Prefixes of the flat ``params`` / ``appearance`` / ``warm_start`` dicts inside arrays.npz.
_PARAMS_PREFIX = "params/"
_APPEARANCE_PREFIX = "appearance/"
_WARM_START_PREFIX = "warm_start/"
# Fits stored before the warm-start state had its own record kept it among the params.
_LEGACY_WARM_START_PARAMS = {"anchors": "_anchors", "active": "_active", "polarity": "_polarity"}

MAX_IMAGE_NAME_CHARS = 120

# A save takes seconds; a work directory this old was left by a killed process.
_STALE_TMP_AGE_S = 3600.0


class StoreError(LookupError):
    """A fit id or image hash that is malformed, unknown, or whose entry cannot be read."""


def default_store_root() -> Path:
    """``$DROPLET_STORE`` if set, else ``./.droplet-store`` relative to the working directory."""
    return Path(os.environ.get(STORE_ENV_VAR) or ".droplet-store")


def _parse_created(value: object) -> datetime:
    """The ``created`` ISO time of a fit.json as an aware datetime (naive times are UTC)."""
    if not isinstance(value, str):
        raise ValueError("created is not an ISO time string")
    created = datetime.fromisoformat(value)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _as_plain_array(name: str, value: object) -> np.ndarray:
    """``value`` as a numpy array that loads without pickle (``allow_pickle=False``)."""
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise ValueError(f"{name} is not a numeric array and cannot be stored")
    return array


class FitStore:
    """Saved fits and uploaded images under one root folder.

    Safe to share between threads and processes: there is no in-memory state, every new
    file or entry is built aside and moved into place with an atomic rename, and an entry,
    once present, is never modified.

    Parameters
    ----------
    root : store folder; ``default_store_root()`` when None. Resolved once, so a later
        change of working directory does not move the store.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else default_store_root()).resolve()
        self._fits = self.root / "fits"
        self._images = self.root / "images"
        self._image_names = self.root / "image-names"
        self._tmp = self.root / ".tmp"
        for folder in (self._fits, self._images, self._image_names, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_work_dirs()

    # -- fits -------------------------------------------------------------------------

    def has(self, fit_id: str) -> bool:
        """Whether a fit with this id is stored. Raises StoreError for a malformed id."""
        return (self._entry_path(fit_id) / INFO_FILE).is_file()

    def fit_dir(self, fit_id: str) -> Path:
        """The folder holding a stored fit's files (droplets.csv, reconstruction.png, ...).

        Raises
        ------
        StoreError
            The id is malformed or no such fit is stored.
        """
        entry = self._entry_path(fit_id)
        if not (entry / INFO_FILE).is_file():
            raise StoreError(f"no stored fit with id {fit_id}")
        return entry

    def load(self, fit_id: str) -> FitResult:
        """Rebuild the stored fit ``fit_id``.

        Raises
        ------
        StoreError
            The id is malformed, no such fit is stored, or its files cannot be read.
        """
        entry = self.fit_dir(fit_id)
        try:
            report = FitReport.from_dict(json.loads((entry / INFO_FILE).read_text()))
            if report.fit_id != fit_id:
                raise ValueError(f"its fit.json names fit {report.fit_id}")
            droplets = pd.read_csv(entry / DROPLETS_FILE)
            with np.load(entry / ARRAYS_FILE, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            params = _take_prefixed(arrays, _PARAMS_PREFIX)
            return FitResult(
                report=report,
                droplets=droplets,
                observed=arrays.pop("observed"),
                reconstruction=arrays.pop("reconstruction"),
                losses=arrays.pop("losses"),
                params=params,
                warm_start=_warm_start(_take_prefixed(arrays, _WARM_START_PREFIX), params),
                appearance=_take_prefixed(arrays, _APPEARANCE_PREFIX),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # json, csv, npz and zip decoding errors are all ValueError/OSError subclasses.
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"stored fit {fit_id} is unreadable: {reason}") from exc

    def save(self, result: FitResult) -> Path:
        """Store ``result`` under ``result.fit_id`` and return its folder.

        The entry is written in full under ``.tmp/`` and renamed into ``fits/``. If the
        entry exists already (saved earlier, or by another thread or process that won the
        race), the existing one is kept and ours is discarded: equal keys mean equal fits.

        Raises
        ------
        ValueError
            ``result`` cannot be stored and loaded back faithfully: a malformed fit id,
            a non-ISO ``report.created``, or non-numeric arrays.
        """
        _check_storable(result)
        target = self._fits / result.fit_id
        if (target / INFO_FILE).is_file():
            return target
        work = Path(tempfile.mkdtemp(prefix=f"{result.fit_id}-", dir=self._tmp))
        try:
            write_outputs(result, work)
            arrays = {
                "observed": _as_plain_array("observed", result.observed),
                "reconstruction": _as_plain_array("reconstruction", result.reconstruction),
                "losses": _as_plain_array("losses", result.losses),
            }
            warm_start = {} if result.warm_start is None else result.warm_start._asdict()
            warm_start = {name: value for name, value in warm_start.items() if value is not None}
            for prefix, values in (
                (_PARAMS_PREFIX, result.params),
                (_APPEARANCE_PREFIX, result.appearance),
                (_WARM_START_PREFIX, warm_start),
            ):
                for name, value in values.items():
                    arrays[prefix + name] = _as_plain_array(prefix + name, value)
            np.savez(work / ARRAYS_FILE, allow_pickle=False, **arrays)
            try:
                os.rename(work, target)
            except OSError:
                if not (target / INFO_FILE).is_file():
                    raise
                # Another writer renamed its complete copy into place first; keep that one.
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def list_fits(self) -> list[FitReport]:
        """The reports of all readable stored fits, newest ``created`` first."""
        found = []
        for entry in self._fits.iterdir():
            if not is_valid_fit_id(entry.name):
                continue
            try:
                report = FitReport.from_dict(json.loads((entry / INFO_FILE).read_text()))
                if report.fit_id != entry.name:
                    continue
                found.append((_parse_created(report.created), entry.name, report))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [report for _, _, report in found]

    # -- images -----------------------------------------------------------------------

    def save_image(self, data: bytes) -> str:
        """Keep uploaded image bytes; returns their sha256 hex (idempotent)."""
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        target = self._images / sha
        if target.is_file():
            return sha
        handle, work = tempfile.mkstemp(prefix=f"{sha}-", dir=self._tmp)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            # Same name means same bytes, so replacing a concurrent writer's copy is harmless.
            os.replace(work, target)
        finally:
            if os.path.exists(work):
                os.unlink(work)
        return sha

    def name_image(self, sha256: str, name: str) -> None:
        """Remember ``name`` (a file name; folders are dropped) for a stored image, unless it
        has one already: fits are then labelled by the name the image was first given."""
        if not is_valid_sha256(sha256):
            raise StoreError("malformed image sha256")
        name = " ".join(str(name).replace("\\", "/").split("/")[-1].split())[:MAX_IMAGE_NAME_CHARS]
        target = self._inside(self._image_names, f"{sha256}.txt")
        if not name or target.is_file():
            return
        handle, work = tempfile.mkstemp(prefix=f"{sha256}-", dir=self._tmp)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(name)
            os.replace(work, target)
        finally:
            if os.path.exists(work):
                os.unlink(work)

    def image_name(self, sha256: str) -> str | None:
        """The name a stored image was first given, or None."""
        if not is_valid_sha256(sha256):
            return None
        try:
            return self._inside(self._image_names, f"{sha256}.txt").read_text(encoding="utf-8") or None
        except (OSError, StoreError, UnicodeDecodeError):
            return None

    def fit_report(self, fit_id: str) -> FitReport:
        """The report of a stored fit (without loading its arrays).

        Raises StoreError for a malformed, unknown or unreadable id."""
        try:
            return FitReport.from_dict(json.loads((self.fit_dir(fit_id) / INFO_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"stored fit {fit_id} is unreadable: {exc}") from exc

    def has_image(self, sha256: str) -> bool:
        """Whether the image ``sha256`` is stored (False for a malformed hash)."""
        return is_valid_sha256(sha256) and (self._images / sha256).is_file()

    def image_bytes(self, sha256: str) -> bytes:
        """The bytes of a stored image. Raises StoreError for a malformed or unknown hash."""
        if not is_valid_sha256(sha256):
            raise StoreError("malformed image sha256")
        path = self._inside(self._images, sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no stored image with sha256 {sha256}") from None
        except OSError as exc:
            raise StoreError(f"stored image {sha256} is unreadable: {exc.strerror}") from exc

    # -- internals --------------------------------------------------------------------

    def _entry_path(self, fit_id: str) -> Path:
        # Validate before building any path: ids come from URLs.
        if not is_valid_fit_id(fit_id):
            raise StoreError("malformed fit id")
        return self._inside(self._fits, fit_id)

    def _inside(self, folder: Path, name: str) -> Path:
        """``folder / name``, refused if it resolves outside ``folder`` (e.g. via a symlink)."""
        path = (folder / name).resolve()
        if path.parent != folder:
            raise StoreError(f"store entry {name} points outside the store")
        return path

    def _remove_stale_work_dirs(self) -> None:
        cutoff = time.time() - _STALE_TMP_AGE_S
        for leftover in self._tmp.iterdir():
            try:
                if leftover.lstat().st_mtime < cutoff:
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink()
            except OSError:
                continue  # another process is cleaning up the same leftover


def _take_prefixed(arrays: dict, prefix: str) -> dict:
    """The entries of ``arrays`` whose name starts with ``prefix``, with the prefix removed."""
    return {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}


def _warm_start(stored: dict, params: dict) -> WarmStartState | None:
    """The warm-start state of an entry's arrays (taken out of ``params`` for older entries)."""
    if not stored and all(name in params for name in _LEGACY_WARM_START_PARAMS.values()):
        stored = {field: params.pop(name) for field, name in _LEGACY_WARM_START_PARAMS.items()}
    if not stored:
        return None
    return WarmStartState(stored["anchors"], stored["active"], float(stored["polarity"]), stored.get("drawn_ratio"))


def _check_storable(result: FitResult) -> None:
    """Refuse results that would be stored under a wrong key or could not be loaded back."""
    if not is_valid_fit_id(result.fit_id):
        raise ValueError(f"cannot store a fit with malformed id {result.fit_id!r}")
    _parse_created(result.report.created)
