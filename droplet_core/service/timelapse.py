"""Time-lapse: fit every frame of a stack, follow each droplet, and find coalescence and the rest.

``fit_stack`` fits the first (or a chosen) frame in full and every later frame with that
fit's appearance held fixed (``droplet_core.inference.reuse_fit``'s Levenberg-Marquardt), starting from
the previous frame's fit itself (``droplet_core.inference.moved_start``: every droplet's own
parameters) moved by the whole field's shift between the two frames (phase correlation),
with the detector's droplets that appeared or grew at once (``new_detections``) switched on;
droplets are added and removed as the residual demands, as in any reuse fit. A frame the
reused appearance draws badly (RMSE over ``refit_rmse_ratio`` times the full fit's: focus,
illumination or the droplets' look changed) gets a full fit of its own, whose appearance the
following frames then reuse. Frames are fitted outwards from the first
one, so frames before it are fitted backwards. Every frame's fit is a stored fit with the
usual per-droplet uncertainty, keyed by its frame and the fit it started from: an interrupted
stack resumes where it stopped.

``link_droplets`` removes the field's drift and links droplets into tracks with trackpy;
``find_events`` reads coalescence (tracks ending where one larger droplet starts or grows,
volume conserved within the uncertainty), splitting (the reverse), appearance and
disappearance (and droplets entering or leaving the field) from the tracks. Outputs are
DataFrames with units in their column names: ``tracks.csv``, ``events.csv``, ``frames.csv``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import filters
from skimage.registration import phase_cross_correlation
from threadpoolctl import threadpool_limits

from droplet_core.fit_ids import is_valid_fit_id
from droplet_core.imaging.stacks import Stack
from droplet_core.measurements.counting import count_of_table
from droplet_core.measurements.readout import fit_statistics
from droplet_core.measurements.size_statistics import statistics_wide
from droplet_core.results import FitResult
from droplet_core.service.requests import StoreSaveError, load_or_fit
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings

FULL, REUSE, REFIT = "full", "reuse", "refit"
# Threads of numpy's BLAS while a stack is fitted. A reuse frame's algebra is many small
# products and solves, and the next frame's look runs in a thread beside it: a second BLAS
# thread only waits for a core. On a 500x400 frame of ~1500 droplets, with the machine's 2 cores
# also busy, one product of the residual sizing (10 x 5041 @ 5041 x 51) took 130-170 ms with
# OpenBLAS's 2 threads and 0.4-0.7 ms with one; the whole reuse fit 2.1-2.4 s against 1.5-1.8 s.
STACK_BLAS_THREADS = 1
# Droplets less likely than this to exist are not linked (they are the fit's doubtful candidates).
LINK_MIN_P_EXISTS = 0.5
# Coalescence / splitting: parts within this many radii (summed) of the droplet they become,
# and volumes that agree within this many standard deviations or this fraction.
EVENT_REACH = 1.5
VOLUME_Z = 3.0
VOLUME_TOLERANCE = 0.2
# A droplet that takes in (or sheds) others changes by their volume within this fraction of it.
CHANGE_TOLERANCE = 0.5
# Parts below this fraction of the volume involved are within the volumes' jitter: a droplet
# that small found or lost beside a large one is an appearance or disappearance.
MIN_PART_FRACTION = 0.1
# Frames after a coalescence's product first appears that the fit may still draw a part that
# overlaps it: on an unscored movie (seed 5 of ``bench.timelapse``'s, 6 coalescences) one part
# of two 4 px droplets was drawn two frames more, and the product's growth when it went was
# taken for a coalescence two frames late.
LINGER_FRAMES = 2
MIN_VOLUME_JITTER = 0.02
# Droplets that coalesce (or split off) leave the image: where the frame is given, the frame must
# have changed over each part's disk (and a pixel) by this many robust sds of the frame's change
# (``field_change_sds``, as for grown detections). A fit that loses, splits or re-draws a droplet
# changes no pixel. On unscored movies (seeds 3-7 of ``bench.timelapse``'s, 6 coalescences) the
# parts of the 24 true coalescences found changed by 6.2-14.1 sds, those of the two false ones
# (small droplets of 1-2 px the fit drew as two and then as one) by 1.1-2.0.
EVENT_MIN_CHANGE_SDS = 5.0
JITTER_RADIUS_RATIO = 1.5
MIN_JITTER_STEPS = 20
TRACK_COLUMNS = (
    "frame",
    "time_s",
    "track",
    "x_px",
    "y_px",
    "radius_px",
    "sd_x_px",
    "sd_y_px",
    "sd_radius_px",
    "p_exists",
    "volume_px3",
    "sd_volume_px3",
)
EVENT_COLUMNS = (
    "frame",
    "time_s",
    "kind",
    "tracks_before",
    "tracks_after",
    "x_px",
    "y_px",
    "volume_before_px3",
    "volume_after_px3",
    "sd_volume_px3",
)
EVENT_KINDS = ("coalescence", "splitting", "appearance", "disappearance", "entered_field", "left_field")
RECORDS_FOLDER = "timelapses"
SHIFT_HIGHPASS_SIGMA_PX = 8.0
# Detections added to a reuse frame's start: confident ones, of a droplet larger by this ratio than
# those it covers or of one where there was none.
NEW_RADIUS_RATIO = 1.15
NEW_MIN_P_EXISTS = 0.9
# A coalescence grows the larger part by less than NEW_RADIUS_RATIO when the smaller part is under
# 0.83 of its radius (0.72 of it: by 1.11). A detection larger by this ratio only is grown where
# the frame changed over its disk (``GROWN_MIN_CHANGE_SDS``): its size alone is within what the
# detector's sizing spreads.
CHANGED_RADIUS_RATIO = 1.08
# A less sure grown detection (the detector's p_exists at least this) is taken where the frame
# changed over its disk (``GROWN_MIN_CHANGE_SDS``): on unscored movies (seeds 3-7 of
# ``bench.timelapse``'s, 6 coalescences each, 45 later frames) the detector read 3 coalescences'
# products at p_exists 0.54-0.77 (at one the fit then kept drawing both parts for the rest of the
# movie); those were the only such detections whose disk changed by 5 sds (the ~30 others, over
# clusters of small droplets, by at most 3.1).
GROWN_CHANGED_MIN_P_EXISTS = 0.5
# Two droplets of the largest size coalesce into one cbrt(2) = 1.26 times as large: a detection far
# larger than every droplet so far is a texture or a cluster taken for one droplet.
NEW_MAX_RADIUS_RATIO = 1.4
# A droplet grown at once changed the frame where it is: the root mean square, over its disk (and a
# pixel), of the frame less the previous frame moved with the field, in robust sds of that
# difference over the whole frame. Where it is not, the detector took touching droplets for one
# (blurred small droplets look so): on an unscored movie (seed 3 of ``bench.timelapse``'s, 10
# frames) the three true coalescences changed their disks by 8-9 sds, the 266 other grown
# detections by at most 3.4 (motion and noise), and the three false coalescences came from these.
GROWN_MIN_CHANGE_SDS = 5.0
# The detector reads touching droplets as one droplet of about their joint volume: the test applies
# where the detection's volume is at most this many times that of the droplets it covers. A
# detection far larger than those is a droplet the fit drew too small or in pieces (one cut by
# the border, say), which it mends: without this, counts on the small movie of
# tests/test_timelapse.py crept up by 1-2 droplets a frame at the border.
GROWN_CLUSTER_VOLUME_RATIO = 2.0
# A detection grew from the droplets it overlaps by more than this fraction of their own radius
# (droplets do not overlap, so those cannot stay beside it), not only from those whose centre it
# covers: coalescing droplets a gap apart put the product's centre beyond both parts' radii, and
# on unscored movies (seeds 3 and 5 of ``bench.timelapse``'s, 6 coalescences) two such products
# (5.0 px over parts of 4 px, 6.9 px over parts of 4.8 px) were taken for new droplets; the
# parts stayed on beside them and the fit drew each product as three droplets, missing both
# coalescences. The same fraction as ``moved_start.OVERLAP_FRACTION``, which switches them off.
GROWN_OVERLAP_FRACTION = 0.5


@dataclass(frozen=True)
class TimelapseSettings:
    """How a stack is fitted and linked.

    Attributes
    ----------
    fit : the full fit's settings (later frames reuse its appearance at its downscale).
    first_frame : the frame fitted in full first (0-based).
    reuse_iterations : most Levenberg-Marquardt iterations of a reuse frame. Started from the
        previous frame's own fit, 5 followed as many tracks as 8 on an unscored movie (seed 3
        of ``bench.timelapse``'s, 6 frames) in about 20 % less time.
    refit_rmse_ratio : a reuse frame whose RMSE exceeds this times the full fit's gets a full fit.
    search_range_px : farthest a droplet moves between frames once drift is removed; 0 picks
        it from the droplets' median radius.
    memory_frames : frames a droplet may be missed and still keep its track.
    frame_interval_s : seconds between frames (None: times are frame numbers).
    """

    fit: FitSettings = FitSettings()
    first_frame: int = 0
    reuse_iterations: int = 5
    refit_rmse_ratio: float = 1.5
    search_range_px: float = 0.0
    memory_frames: int = 1
    frame_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.first_frame < 0 or self.reuse_iterations < 1 or self.memory_frames < 0:
            raise ValueError("first_frame and memory_frames must not be negative, reuse_iterations at least 1")
        if not self.refit_rmse_ratio > 1.0:
            raise ValueError("refit_rmse_ratio must be above 1")
        if self.search_range_px < 0:
            raise ValueError("search_range_px must not be negative")
        if self.frame_interval_s is not None and not self.frame_interval_s > 0:
            raise ValueError("the frame interval must be positive")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fit": self.fit.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> TimelapseSettings:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in fields}
        return cls(**{**values, "fit": FitSettings.from_dict(values.get("fit", {}))})


@dataclass(frozen=True)
class FrameFit:
    """One frame's fit: its index, stored fit id, kind (``full``, ``reuse``, ``refit``),
    seconds taken (0 when it came from the store), the field's shift from the frame
    fitted before it (px), and where a fitted frame's seconds went (``steps_s``: the
    registration, the detector and the image's part of the verdict, taken in a thread while
    the frame before was fitted (``LOOK_STEPS``), the wait for them, the fit, its uncertainty,
    table and verdict, the rest)."""

    frame: int
    fit_id: str
    kind: str
    seconds: float
    shift_x_px: float
    shift_y_px: float
    from_store: bool
    steps_s: dict = dataclasses.field(default_factory=dict)


def stack_id(stack: Stack, settings: TimelapseSettings) -> str:
    """32 hex characters naming a stack fit: the frames' digests and the settings."""
    payload = json.dumps({"frames": list(stack.frame_sha256), "settings": settings.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def field_shift_px(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """How far the field moved from ``reference`` to ``moving`` (``(h, w, 3)`` frames): ``(dx, dy)`` px,
    by phase correlation of their grey values to 0.05 px.

    The uneven illumination, which stays with the camera, is taken out by a high-pass
    (``SHIFT_HIGHPASS_SIGMA_PX``) and the edges, where droplets enter and leave, by a Hann window;
    either would pull the estimate towards no shift.
    """
    window = filters.window("hann", reference.shape[:2])

    def prepared(frame):
        grey = frame.mean(axis=2, dtype=np.float64)
        return (grey - ndimage.gaussian_filter(grey, SHIFT_HIGHPASS_SIGMA_PX)) * window

    shift, _, _ = phase_cross_correlation(prepared(reference), prepared(moving), upsample_factor=20)
    return float(-shift[1]), float(-shift[0])


def frame_order(n_frames: int, first_frame: int) -> list[tuple[int, int | None]]:
    """``(frame, frame it starts from)`` in fitting order: outwards from ``first_frame``."""
    if not 0 <= first_frame < n_frames:
        raise ValueError(f"first frame {first_frame + 1} is not in a stack of {n_frames} frames")
    forward = [(index, index - 1) for index in range(first_frame + 1, n_frames)]
    backward = [(index, index + 1) for index in range(first_frame - 1, -1, -1)]
    return [(first_frame, None), *forward, *backward]


def fit_stack(
    stack: Stack,
    settings: TimelapseSettings,
    store: FitStore,
    *,
    progress: Callable[[int, int, FrameFit], None] | None = None,
    stop: threading.Event | None = None,
) -> list[FrameFit]:
    """Fit every frame of ``stack`` (see the module docstring); each fit goes into ``store``
    (saved in a thread while the next frame is fitted; all are saved when this returns).

    Parameters
    ----------
    stack : the frames ``(t, h, w, 3)``.
    settings : how to fit.
    store : where fits are kept and found again (a rerun fits only what is missing).
    progress : called after every frame with (frames done, frames in all, that frame's fit).
    stop : when set, no further frame is started.

    Returns
    -------
    The frames fitted, in frame order (all of them unless stopped).
    """
    fitted: dict[int, tuple[FrameFit, FitResult]] = {}
    sources: dict[int, FitResult] = {}
    order = frame_order(stack.n_frames, settings.first_frame)
    saving = _SavedAside(store)
    # A frame's look (registration, detector, change of the frame) needs only the frames, so the
    # next frame's is taken in a thread while this one is fitted: the fit's host-side algebra
    # leaves a core idle much of the time.
    ahead = ThreadPoolExecutor(max_workers=1)
    looks: dict[int, tuple[float, Future]] = {}

    def look_ahead(position: int, downscale: float) -> None:
        if position < len(order) and order[position][1] is not None:
            index, previous_index = order[position]
            looks[index] = (
                downscale,
                ahead.submit(
                    _frame_look,
                    stack.frames,
                    index,
                    previous_index,
                    dataclasses.replace(settings.fit, downscale=downscale),
                ),
            )

    try:
        with threadpool_limits(limits=STACK_BLAS_THREADS, user_api="blas"):
            for done, (index, previous_index) in enumerate(order):
                if stop is not None and stop.is_set():
                    break
                record, result, steps_s, started = _fitted_frame(
                    stack, settings, saving, index, previous_index, fitted, sources, looks, look_ahead, done
                )
                seconds = 0.0 if record.from_store else time.perf_counter() - started
                if not record.from_store:
                    timings = result.report.timings
                    steps_s.update({"fit": timings.fit_s, "uncertainty": timings.uncertainty_s})
                    steps_s["other"] = seconds - sum(v for k, v in steps_s.items() if k not in LOOK_STEPS)
                record = dataclasses.replace(
                    record, seconds=seconds, steps_s={k: round(v, 3) for k, v in steps_s.items()}
                )
                fitted[index] = (record, result)
                if progress is not None:
                    progress(done + 1, len(order), record)
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
        saving.close()
    return [fitted[index][0] for index in sorted(fitted)]


class _SavedAside:
    """``store`` as ``fit_stack`` uses it: each fit is saved in a thread (``save`` returns at once)
    while the next frame is fitted, since writing a frame's files took 0.04-0.09 s of its
    critical path. A fit being saved counts as stored (``has``) and is loaded once saved;
    ``close`` waits for every save. A save that failed raises ``StoreSaveError`` at the next
    save, load or close."""

    def __init__(self, store: FitStore):
        self._store = store
        self._saver = ThreadPoolExecutor(max_workers=1)
        self._saving: dict[str, Future] = {}

    def has(self, fit_id: str) -> bool:
        return fit_id in self._saving or self._store.has(fit_id)

    def load(self, fit_id: str) -> FitResult:
        self._saved(fit_id)
        return self._store.load(fit_id)

    def save(self, result: FitResult) -> None:
        for fit_id in [fit_id for fit_id, future in self._saving.items() if future.done()]:
            self._saved(fit_id)
        self._saving[result.fit_id] = self._saver.submit(self._store.save, result)

    def close(self) -> None:
        try:
            for fit_id in list(self._saving):
                self._saved(fit_id)
        finally:
            self._saver.shutdown(wait=True)

    def _saved(self, fit_id: str) -> None:
        """Wait for the save of ``fit_id`` (if under way), raising ``StoreSaveError`` where it failed."""
        future = self._saving.pop(fit_id, None)
        if future is None:
            return
        try:
            future.result()
        except (ValueError, OSError) as exc:
            raise StoreSaveError(f"fit {fit_id} cannot be stored: {type(exc).__name__}: {exc}") from exc


# Steps of a frame's look, taken in a thread (``FrameFit.steps_s``): their seconds overlap the
# fit of the frame before; ``waited`` is how long the frame's fit waited for them.
LOOK_STEPS = ("registration", "detection", "verdict")


@dataclass(frozen=True, eq=False)
class _Look:
    """A later frame seen against the one it starts from: the field's shift (dx, dy) px, the
    detector's droplets, ``field_change_sds`` ``(h, w)``, and the seconds each step took
    (``LOOK_STEPS``)."""

    shift_px: tuple[float, float]
    detections: pd.DataFrame
    change_sds: np.ndarray
    steps_s: dict


def _frame_look(frames: np.ndarray, index: int, previous_index: int, fit: FitSettings) -> _Look:
    """``_Look`` of frame ``index`` of ``frames`` ``(t, h, w, 3)`` from frame ``previous_index``,
    the detector run at the downscale of ``fit`` (the reuse fit's settings). The image's part
    of the frame's verdict is worked out too (``engine.ready_judgement``): the fit's host work
    holds the main thread, and this thread has time to spare."""
    # The detector and the fit engine load JAX; linking tables needs none of it.
    from droplet_core.detection.in_image import detect_droplets
    from droplet_core.inference.engine import ready_judgement

    started = time.perf_counter()
    shift = field_shift_px(frames[previous_index], frames[index])
    change = field_change_sds(frames[previous_index], frames[index], shift)
    registered = time.perf_counter()
    detections = detect_droplets(frames[index], downscale=fit.downscale, crop=fit.crop)
    detected = time.perf_counter()
    ready_judgement(frames[index], fit)
    seconds = (registered - started, detected - registered, time.perf_counter() - detected)
    return _Look(shift, detections, change, dict(zip(LOOK_STEPS, seconds)))


def _fitted_frame(stack, settings, store, index, previous_index, fitted, sources, looks, look_ahead, done):
    """One frame of ``fit_stack``: ``(FrameFit, FitResult, steps_s, started)``; the next frame's
    look is started (``look_ahead``) before this frame's fit."""
    from droplet_core.inference.moved_start import moved_warm_start

    started = time.perf_counter()
    frame, sha = stack.frames[index], stack.frame_sha256[index]
    steps_s = {}
    if previous_index is None:
        result, from_store = load_or_fit(frame, sha, settings.fit, store)
        record = FrameFit(index, result.fit_id, FULL, 0.0, 0.0, 0.0, from_store)
        sources[index] = result
        look_ahead(done + 1, result.report.downscale)
    else:
        previous = fitted[previous_index][1]
        source = sources[previous_index]
        downscale = source.report.downscale
        if index not in looks or looks[index][0] != downscale:
            look_ahead(done, downscale)
        look = looks.pop(index)[1].result()
        waited = time.perf_counter() - started
        look_ahead(done + 1, downscale)
        shift_x, shift_y = look.shift_px
        moved_droplets = previous.droplets.assign(
            x=previous.droplets["x"] + shift_x, y=previous.droplets["y"] + shift_y
        )
        new = new_detections(moved_droplets, look.detections, look.change_sds)
        reuse = dataclasses.replace(
            settings.fit, appearance_from=source.fit_id, downscale=downscale, steps=settings.reuse_iterations
        )
        warm = moved_warm_start(previous, (shift_x, shift_y), new, look.detections)
        start = (
            {"warm_start": warm}
            if warm is not None
            else {
                "start_from": dataclasses.replace(
                    previous, droplets=pd.concat([moved_droplets, new], ignore_index=True)
                )
            }
        )
        steps_s = {**look.steps_s, "waited": waited}
        result, from_store = load_or_fit(frame, sha, reuse, store, appearance_source=source, **start)
        kind = REUSE
        if max(result.report.rmse) > settings.refit_rmse_ratio * max(source.report.rmse):
            result, from_store = load_or_fit(frame, sha, settings.fit, store)
            kind = REFIT
        sources[index] = result if kind == REFIT else source
        record = FrameFit(index, result.fit_id, kind, 0.0, shift_x, shift_y, from_store)
    return record, result, steps_s, started


def field_change_sds(reference: np.ndarray, moving: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """``(h, w)`` how ``moving`` differs from ``reference`` (``(h, w, 3)`` frames) moved by the
    field's ``shift_px`` ``(dx, dy)``: their grey difference in robust sds of itself (1.4826
    median absolute deviation over the frame, i.e. the noise and the droplets' own motion)."""
    moved = ndimage.shift(reference.mean(axis=2, dtype=np.float64), (shift_px[1], shift_px[0]), order=3, mode="nearest")
    difference = moving.mean(axis=2, dtype=np.float64) - moved
    spread = 1.4826 * float(np.median(np.abs(difference - np.median(difference))))
    return difference / max(spread, 1e-9)


def frame_changes(frames: np.ndarray, shifts_px: np.ndarray) -> Callable[[int], np.ndarray]:
    """``frame_change(f)``: ``field_change_sds`` of frame ``f`` of ``frames`` ``(t, h, w, 3)``
    against frame ``f - 1`` moved by ``shifts_px[f]`` ``(t, 2)`` (the field's shift (dx, dy)
    from each frame's predecessor), for ``find_events``."""

    def frame_change(frame: int) -> np.ndarray:
        return field_change_sds(
            frames[frame - 1], frames[frame], (float(shifts_px[frame, 0]), float(shifts_px[frame, 1]))
        )

    return frame_change


def new_detections(
    droplets: pd.DataFrame, detections: pd.DataFrame, change_sds: np.ndarray | None = None
) -> pd.DataFrame:
    """The ``detections`` (x, y, radius px, ``p_exists``) that show a droplet grown at once beside
    ``droplets`` (``grown``: larger by over ``NEW_RADIUS_RATIO`` than every droplet it overlaps
    by more than ``GROWN_OVERLAP_FRACTION`` of that droplet's radius, as a coalescence's product
    is) or a new one (none overlapped so), with
    ``p_exists`` >= ``NEW_MIN_P_EXISTS`` (a less sure detection over a few small droplets is
    often their cluster taken for one droplet) and at most ``NEW_MAX_RADIUS_RATIO`` times as
    large as the largest droplet. Started from the previous frame alone, such a droplet takes a frame or two
    to be reached.

    ``change_sds`` ``(h, w)`` (``field_change_sds`` since the previous frame), where given, must
    show a grown droplet's disk changed by ``GROWN_MIN_CHANGE_SDS`` where its volume is within
    ``GROWN_CLUSTER_VOLUME_RATIO`` of the droplets it covers: a grown detection switches off
    the droplets it covers, and where the frame did not change there, they are still there (the
    detector took touching droplets for one). Where it is given, a grown detection as sure as
    ``GROWN_CHANGED_MIN_P_EXISTS`` is taken too where its disk changed so."""
    columns = ["x", "y", "radius", "p_exists", "grown"]
    if droplets.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    largest = NEW_MAX_RADIUS_RATIO * float(droplets["radius"].max())
    least_sure = NEW_MIN_P_EXISTS if change_sds is None else GROWN_CHANGED_MIN_P_EXISTS
    detections = detections[(detections["p_exists"] >= least_sure) & (detections["radius"] <= largest)]
    if detections.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    positions, radii = droplets[["x", "y"]].to_numpy(float), droplets["radius"].to_numpy(float)
    centres, radius = detections[["x", "y"]].to_numpy(float), detections["radius"].to_numpy(float)
    p_exists = detections["p_exists"].to_numpy(float)
    # Every (detection, droplet it overlaps) pair at once: a loop over the ~1500 detections of a
    # frame took 0.1-0.2 s.
    reach = (1.0 - GROWN_OVERLAP_FRACTION) * float(radii.max())
    found = cKDTree(positions).query_ball_point(centres, radius + reach, return_sorted=True)
    counts = np.fromiter(map(len, found), int, len(found))
    row = np.repeat(np.arange(len(centres)), counts)
    near = np.fromiter(itertools.chain.from_iterable(found), int, int(counts.sum()))
    distance = np.hypot(*(positions[near] - centres[row]).T)
    overlapped = distance < radius[row] + (1.0 - GROWN_OVERLAP_FRACTION) * radii[near]
    row, near = row[overlapped], near[overlapped]
    covers = np.bincount(row, minlength=len(centres)) > 0
    ratio = np.full(len(centres), np.inf)
    np.minimum.at(ratio, row, radius[row] / radii[near])
    ratio[~covers] = 0.0
    changed = np.zeros(len(centres), bool)
    if change_sds is not None:
        for index in np.flatnonzero(ratio > CHANGED_RADIUS_RATIO):
            changed[index] = (
                _disk_rms(change_sds, centres[index, 0], centres[index, 1], radius[index] + 1.0) >= GROWN_MIN_CHANGE_SDS
            )
    grown = (ratio > NEW_RADIUS_RATIO) | changed
    sure = p_exists >= NEW_MIN_P_EXISTS
    taken = (grown | sure) & (grown | ~covers)
    if change_sds is not None:
        covered_volume = np.bincount(row, weights=radii[near] ** 3, minlength=len(centres))
        cluster = radius**3 <= GROWN_CLUSTER_VOLUME_RATIO * covered_volume
        taken &= ~(grown & ~changed & (cluster | ~sure))
    new = pd.DataFrame(
        {"x": centres[:, 0], "y": centres[:, 1], "radius": radius, "p_exists": p_exists, "grown": grown}
    )[taken]
    return new.reset_index(drop=True).astype({name: float for name in columns[:4]} | {"grown": bool})


def _disk_rms(image: np.ndarray, x: float, y: float, radius_px: float) -> float:
    """Root mean square of ``image`` ``(h, w)`` over the pixels within ``radius_px`` of ``(x, y)``
    (0 where none is in the image)."""
    height, width = image.shape
    rows = slice(max(int(np.floor(y - radius_px)), 0), min(int(np.ceil(y + radius_px)) + 1, height))
    columns = slice(max(int(np.floor(x - radius_px)), 0), min(int(np.ceil(x + radius_px)) + 1, width))
    yy, xx = np.mgrid[rows, columns]
    inside = np.hypot(xx - x, yy - y) <= radius_px
    return float(np.sqrt(np.mean(image[rows, columns][inside] ** 2))) if inside.any() else 0.0


def frame_times_s(n_frames: int, frame_interval_s: float | None) -> np.ndarray:
    """``(t,)`` each frame's time in seconds (frame numbers when the interval is unknown)."""
    return np.arange(n_frames, dtype=float) * (1.0 if frame_interval_s is None else frame_interval_s)


def droplets_of_frames(results: Sequence[FitResult], frames: Sequence[int]) -> pd.DataFrame:
    """All frames' droplets in one table: ``frame``, ``x_px``, ``y_px``, ``radius_px``, their
    ``sd_*_px``, ``p_exists`` (pixels of the frames as read)."""
    tables = []
    for frame, result in zip(frames, results):
        droplets = result.droplets
        table = pd.DataFrame(
            {
                "frame": frame,
                "x_px": droplets["x"].to_numpy(float),
                "y_px": droplets["y"].to_numpy(float),
                "radius_px": droplets["radius"].to_numpy(float),
            }
        )
        for name in ("sd_x", "sd_y", "sd_radius"):
            table[f"{name}_px"] = droplets[name].to_numpy(float) if name in droplets else np.nan
        table["p_exists"] = droplets["p_exists"].to_numpy(float) if "p_exists" in droplets else 1.0
        tables.append(table)
    return (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=TRACK_COLUMNS[:1] + TRACK_COLUMNS[3:10])
    )


def link_droplets(
    droplets: pd.DataFrame,
    shifts_px: np.ndarray,
    *,
    search_range_px: float = 0.0,
    memory_frames: int = 1,
    frame_interval_s: float | None = None,
    shape_hw: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Follow droplets across frames.

    Parameters
    ----------
    droplets : ``droplets_of_frames``'s table.
    shifts_px : ``(t, 2)`` the field's shift (dx, dy) from each frame's predecessor (row 0 zeros).
    search_range_px : farthest move between frames once drift is removed; 0: 0.6 median
        radii, at least 2 px.
    memory_frames : frames a droplet may be missed.
    frame_interval_s : for ``time_s``.
    shape_hw : the frames' size; where given, droplets within a radius and a pixel of the
        border do not count in the drift (cut by the edge, they are placed and sized poorly,
        and one the field carries out of view can stay put for a frame: in the tests' movie
        such droplets took 0.25 px off 7 frames' drift of 7 px).

    Returns
    -------
    tracks : ``TRACK_COLUMNS`` plus ``x_aligned_px``, ``y_aligned_px`` (drift removed), one row
        per linked droplet (``p_exists`` >= ``LINK_MIN_P_EXISTS``), ``track`` from 0.
    drift : ``frame``, ``drift_x_px``, ``drift_y_px``: the field's position relative to frame 0.

    The field's shift from image registration is removed first; trackpy links, then
    ``compute_drift`` measures what drift is left in the tracks, which is removed before
    linking again.
    """
    import trackpy

    trackpy.quiet()
    table = droplets[droplets["p_exists"] >= LINK_MIN_P_EXISTS].reset_index(drop=True)
    drift = np.cumsum(np.asarray(shifts_px, float).reshape(-1, 2), axis=0)
    frames = table["frame"].to_numpy(int)
    # trackpy sorts by frame (not stably): ``row`` brings its answers back to the table's order.
    features = pd.DataFrame(
        {
            "row": np.arange(len(table)),
            "frame": frames,
            "x": table["x_px"] - drift[frames, 0],
            "y": table["y_px"] - drift[frames, 1],
        }
    )
    reach = search_range_px or max(2.0, 0.6 * float(np.median(table["radius_px"])) if len(table) else 2.0)
    options = dict(search_range=reach, memory=memory_frames, adaptive_stop=0.2 * reach, adaptive_step=0.9)
    n_frames = len(drift)
    left = pd.DataFrame({"x": np.zeros(n_frames), "y": np.zeros(n_frames)})
    if len(table):
        linked = trackpy.link(features, **options)
        if shape_hw is not None:
            at_border = _within_border(table["x_px"], table["y_px"], table["radius_px"], *shape_hw).to_numpy()
            linked = linked[~at_border[linked["row"].to_numpy()]]
        # compute_drift starts at the first frame with a step; frame 0 is where the drift is 0.
        left = trackpy.compute_drift(linked).reindex(range(n_frames))
        left.iloc[0] = left.iloc[0].fillna(0.0)
        left = left.interpolate(limit_direction="both").fillna(0.0)
        features = trackpy.subtract_drift(features.set_index("frame", drop=False), left).reset_index(drop=True)
        features = trackpy.link(features, **options).sort_values("row")
    else:
        features["particle"] = np.zeros(0, int)
    field_drift = pd.DataFrame(
        {
            "frame": np.arange(n_frames),
            "drift_x_px": drift[:, 0] + left["x"].to_numpy(),
            "drift_y_px": drift[:, 1] + left["y"].to_numpy(),
        }
    )
    tracks = table.assign(
        track=_renumbered(features["particle"].to_numpy(int), frames),
        x_aligned_px=features["x"].to_numpy(float),
        y_aligned_px=features["y"].to_numpy(float),
    )
    tracks["time_s"] = frame_times_s(int(frames.max(initial=0)) + 1, frame_interval_s)[frames]
    tracks["volume_px3"] = 4.0 / 3.0 * np.pi * tracks["radius_px"] ** 3
    tracks["sd_volume_px3"] = 4.0 * np.pi * tracks["radius_px"] ** 2 * tracks["sd_radius_px"].fillna(0.0)
    columns = [*TRACK_COLUMNS, "x_aligned_px", "y_aligned_px"]
    return tracks[columns].sort_values(["frame", "track"], kind="stable").reset_index(drop=True), field_drift


def _renumbered(particles: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Track ids 0, 1, ... in order of each track's first appearance."""
    order = np.lexsort((particles, frames))
    first_seen = dict.fromkeys(particles[order])
    mapping = {particle: number for number, particle in enumerate(first_seen)}
    return np.array([mapping[p] for p in particles], dtype=int)


def find_events(
    tracks: pd.DataFrame,
    n_frames: int,
    shape_hw: tuple[int, int],
    frame_interval_s: float | None = None,
    frame_change: Callable[[int], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Coalescence, splitting, appearance and disappearance read from ``link_droplets``'s tracks.

    At every frame ``f``: droplets whose track ended at ``f - 1`` and lie within
    ``EVENT_REACH`` summed radii of one droplet at ``f`` (a new track, or one that goes on
    and takes them in), nearer to it than to any other larger droplet at ``f`` (in summed radii),
    coalesced into it when the volumes agree (within ``VOLUME_Z``
    standard deviations of the fits' radii or ``VOLUME_TOLERANCE`` of the volume); splitting
    is the same backwards in time. Other track ends are disappearances (``left_field`` within
    a radius and a pixel of the border) and other starts appearances (``entered_field``).
    The one droplet must be larger than each part, and away from the border (droplets cut
    by the edge are measured too poorly to weigh volumes); where its track goes on through
    the event, its own volume must change by the parts' volume (within ``CHANGE_TOLERANCE``),
    both change and parts' volume must exceed ``VOLUME_Z`` times the frame-to-frame jitter of
    droplets of its size (``volume_jitter``), it must lie nearer the members' common centre of
    volume than where it was (``_at_common_centre``), and it must have been drawn for more
    than the one frame before the event (unless that is the stack's first or last frame),
    so that a small droplet found or lost beside a large one is not taken for an event. Where
    ``frame_change`` is given (``frame_change(f)``: ``(h, w)`` how frame ``f`` changed since
    ``f - 1``, ``field_change_sds``, in frame ``f``'s px), the image must have changed over
    every part's disk (``EVENT_MIN_CHANGE_SDS``): then the parts are known to be gone (or new)
    and the tests against the volumes' jitter (``MIN_PART_FRACTION``, ``volume_jitter``), which
    stand in for that knowledge, are not needed: a droplet of 4 px that a 10 px one takes in is
    within the larger one's jitter. A part
    the fit still draws in the first frames of a new droplet it overlaps (its track ends there
    or within ``LINGER_FRAMES`` after) is one of that droplet's parts too, with its volume before.

    Returns
    -------
    ``EVENT_COLUMNS``: ``frame`` (the first frame after the event), ``time_s``, ``kind``,
    ``tracks_before`` / ``tracks_after`` (track ids joined by ``;``), the place (drift
    included, px of the frame), volumes before and after (px³) and the sd of their difference.
    """
    height, width = shape_hw
    times = frame_times_s(n_frames, frame_interval_s)
    spans = tracks.groupby("track")["frame"].agg(["min", "max"])
    by_frame = {frame: group for frame, group in tracks.groupby("frame")}
    empty = tracks.iloc[:0]
    steps = volume_steps(tracks)
    changes: dict[int, np.ndarray] = {}
    events, used_ends, used_starts = [], set(), set()
    for frame in range(1, n_frames):
        now, before = by_frame.get(frame, empty), by_frame.get(frame - 1, empty)
        ended = before[before["track"].map(spans["max"]) == frame - 1]
        started = now[now["track"].map(spans["min"]) == frame]
        # Tracks seen for the last time now or within ``LINGER_FRAMES`` after: one that overlaps a
        # droplet new now was taken in by it, though the fit still draws it for a frame or two
        # (droplets do not overlap).
        last_seen = now[now["track"].map(spans["max"]).between(frame, frame + LINGER_FRAMES)]
        # (kind, the one droplet, the tracks that end / start around it, its own track on the other side)
        for kind, ones, others, other_side in (
            ("coalescence", now, ended, before),
            ("splitting", before, started, now),
        ):
            used, used_one = (used_ends, used_starts) if kind == "coalescence" else (used_starts, used_ends)
            # A droplet joins (or leaves) the larger droplet it lies nearest, in summed radii: a
            # small droplet lost in a cluster is not taken for a coalescence with a neighbour
            # that grew beside it.
            joins = _nearest_tracks(others, ones)
            # Only a droplet that some part joins, or (coalescence) one new now, which lingering
            # droplets may have joined, can have parts: a pass over every droplet of every frame
            # took most of a 100-frame stack's analysis.
            may_have_parts = ones["track"].isin(joins)
            if kind == "coalescence":
                may_have_parts |= ~ones["track"].isin(other_side["track"])
            for row in ones[may_have_parts].itertuples(index=False):
                candidates = others[~others["track"].isin(used) & (joins == row.track)]
                parts = _nearby(candidates, row)
                own = other_side[other_side["track"] == row.track]
                if kind == "coalescence" and own.empty:
                    lingering = _overlapping(last_seen[~last_seen["track"].isin(used)], row)
                    parts = pd.concat([parts, before[before["track"].isin(lingering["track"])]])
                members = pd.concat([parts, own])
                if parts.empty or len(members) < 2 or _at_border(row, height, width, EVENT_REACH):
                    continue
                volume_one, volume_parts = float(row.volume_px3), float(members["volume_px3"].sum())
                if volume_one <= members["volume_px3"].max():  # the one droplet is larger than each part
                    continue
                sd = float(np.sqrt(row.sd_volume_px3**2 + (members["sd_volume_px3"] ** 2).sum()))
                if abs(volume_one - volume_parts) > max(VOLUME_Z * sd, VOLUME_TOLERANCE * volume_one):
                    continue
                # A droplet that goes on through the event must change by the parts' volume (a
                # droplet's error is much the same in two frames, so this is the sharper test).
                taken = float(parts["volume_px3"].sum())
                # Where the frame is given, it shows whether the parts really went (or came).
                seen = frame_change is not None
                if seen:
                    if frame not in changes:
                        changes.clear()
                        changes[frame] = frame_change(frame)
                    if _least_change_sds(changes[frame], parts, now) < EVENT_MIN_CHANGE_SDS:
                        continue
                elif parts["volume_px3"].min() < MIN_PART_FRACTION * max(volume_one, volume_parts):
                    continue
                if not own.empty:
                    # A droplet first drawn in the frame before (switched on at a residual peak;
                    # for splitting, last drawn in the frame after) has no settled volume to
                    # change from. (A stack's first and last frames cut every track.)
                    own_frame = int(own["frame"].iloc[0])
                    if (
                        own_frame not in (0, n_frames - 1)
                        and own_frame == (spans.loc[row.track, "min" if kind == "coalescence" else "max"])
                    ):
                        continue
                    change = abs(volume_one - float(own["volume_px3"].iloc[0]))
                    # The parts' volume must stand above the jitter too, not only the change: a
                    # droplet pressed by a neighbour (its outline stops at the contact,
                    # ``droplet_core.models.outline``) grows by the cap it lost when the fit loses
                    # that neighbour, whatever the neighbour's volume. On an unscored movie (seed 7
                    # of ``bench.timelapse``'s, 6 coalescences) a 4.3 px droplet grew by 20 % when
                    # its 1.1 px neighbour (fitted at 2.2 px) was lost: a false coalescence.
                    if (
                        (not seen and min(change, taken) < VOLUME_Z * volume_jitter(steps, row.radius_px) * volume_one)
                        or abs(change - taken) > CHANGE_TOLERANCE * taken
                        or not _at_common_centre(row, own.iloc[0], members)
                    ):
                        continue
                used.update(parts["track"].tolist())
                if own.empty:
                    used_one.add(row.track)
                ids = ";".join(str(t) for t in sorted(members["track"].unique()))
                if kind == "coalescence":
                    events.append(
                        (
                            frame,
                            times[frame],
                            kind,
                            ids,
                            str(row.track),
                            row.x_px,
                            row.y_px,
                            volume_parts,
                            volume_one,
                            sd,
                        )
                    )
                else:
                    events.append(
                        (
                            frame,
                            times[frame],
                            kind,
                            str(row.track),
                            ids,
                            row.x_px,
                            row.y_px,
                            volume_one,
                            volume_parts,
                            sd,
                        )
                    )
        for row in ended.itertuples(index=False):
            if row.track not in used_ends:
                kind = "left_field" if _at_border(row, height, width) else "disappearance"
                events.append(
                    (
                        frame,
                        times[frame],
                        kind,
                        str(row.track),
                        "",
                        row.x_px,
                        row.y_px,
                        row.volume_px3,
                        0.0,
                        row.sd_volume_px3,
                    )
                )
        for row in started.itertuples(index=False):
            if row.track not in used_starts:
                kind = "entered_field" if _at_border(row, height, width) else "appearance"
                events.append(
                    (
                        frame,
                        times[frame],
                        kind,
                        "",
                        str(row.track),
                        row.x_px,
                        row.y_px,
                        0.0,
                        row.volume_px3,
                        row.sd_volume_px3,
                    )
                )
    table = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    return table.astype({"frame": int}).sort_values(["frame", "kind"], kind="stable").reset_index(drop=True)


def volume_steps(tracks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every frame-to-frame step of every track: ``(k,)`` mean radius (px) and change of log volume."""
    ordered = tracks.sort_values(["track", "frame"], kind="stable")
    same = ordered["track"].to_numpy()[1:] == ordered["track"].to_numpy()[:-1]
    radius = ordered["radius_px"].to_numpy(float)
    changes = np.diff(np.log(ordered["volume_px3"].to_numpy(float)))[same]
    return 0.5 * (radius[1:] + radius[:-1])[same], changes


def volume_jitter(steps: tuple[np.ndarray, np.ndarray], radius_px: float) -> float:
    """The relative sd of the volume of a droplet of about ``radius_px`` from one frame to the
    next, measured on the tracks' ``volume_steps`` of droplets within ``JITTER_RADIUS_RATIO``
    of that radius (all, where fewer than ``MIN_JITTER_STEPS``): 1.4826 median absolute change
    of log volume, at least ``MIN_VOLUME_JITTER``.

    The fits' own radius sds hold the model's calibrated error, which is much the same for one
    droplet in two frames; changes are judged against this jitter instead.
    """
    radius, changes = steps
    alike = np.abs(np.log(radius / radius_px)) <= np.log(JITTER_RADIUS_RATIO)
    chosen = changes[alike] if alike.sum() >= MIN_JITTER_STEPS else changes
    if chosen.size == 0:
        return MIN_VOLUME_JITTER
    return max(float(1.4826 * np.median(np.abs(chosen))), MIN_VOLUME_JITTER)


def _least_change_sds(change_sds: np.ndarray, parts: pd.DataFrame, now: pd.DataFrame) -> float:
    """The least root mean square of ``change_sds`` ``(h, w)`` (a frame's ``field_change_sds``)
    over the disk (and a pixel) of each of ``parts``, placed in that frame's px by their
    drift-removed positions and the drift of the frame's droplets ``now``."""
    offset_x = float((now["x_px"] - now["x_aligned_px"]).median())
    offset_y = float((now["y_px"] - now["y_aligned_px"]).median())
    return min(
        _disk_rms(change_sds, part.x_aligned_px + offset_x, part.y_aligned_px + offset_y, part.radius_px + 1.0)
        for part in parts.itertuples(index=False)
    )


def _nearest_tracks(parts: pd.DataFrame, droplets: pd.DataFrame) -> np.ndarray:
    """``(len(parts),)`` the track of the droplet in ``droplets``, larger than the part (as what
    a droplet joins is), nearest each of ``parts`` in units of their summed radii (drift-removed
    positions); -1 where none is larger."""
    if parts.empty or droplets.empty:
        return np.full(len(parts), -1)
    dx = parts["x_aligned_px"].to_numpy(float)[:, None] - droplets["x_aligned_px"].to_numpy(float)[None, :]
    dy = parts["y_aligned_px"].to_numpy(float)[:, None] - droplets["y_aligned_px"].to_numpy(float)[None, :]
    part_radius, radius = parts["radius_px"].to_numpy(float)[:, None], droplets["radius_px"].to_numpy(float)[None, :]
    distance = np.where(radius > part_radius, np.hypot(dx, dy) / (part_radius + radius), np.inf)
    nearest = droplets["track"].to_numpy()[np.argmin(distance, axis=1)]
    return np.where(np.isfinite(distance.min(axis=1)), nearest, -1)


def _overlapping(candidates: pd.DataFrame, row) -> pd.DataFrame:
    """``candidates`` smaller than ``row``'s droplet that overlap it (nearer than their summed radii)."""
    distance = np.hypot(candidates["x_aligned_px"] - row.x_aligned_px, candidates["y_aligned_px"] - row.y_aligned_px)
    return candidates[(distance < candidates["radius_px"] + row.radius_px) & (candidates["radius_px"] < row.radius_px)]


def _at_common_centre(one, own, members: pd.DataFrame) -> bool:
    """Whether droplet ``one`` lies nearer the volume-weighted centre of ``members`` (the droplets
    it became or came from, in the other frame; drift-removed positions) than to ``own``, the
    one of them on its own track. Coalescing droplets keep their common centre of volume, so a
    droplet that takes in a neighbour moves towards it; one that only grew over a neighbour
    the fit lost stays where it was (in clusters of small droplets, a fit's error)."""
    weights = members["volume_px3"].to_numpy(float)
    centre_x = float(np.average(members["x_aligned_px"], weights=weights))
    centre_y = float(np.average(members["y_aligned_px"], weights=weights))
    to_centre = np.hypot(one.x_aligned_px - centre_x, one.y_aligned_px - centre_y)
    return bool(to_centre < np.hypot(one.x_aligned_px - own["x_aligned_px"], one.y_aligned_px - own["y_aligned_px"]))


def _nearby(candidates: pd.DataFrame, row) -> pd.DataFrame:
    """``candidates`` within ``EVENT_REACH`` summed radii of ``row`` (drift-removed positions)."""
    distance = np.hypot(candidates["x_aligned_px"] - row.x_aligned_px, candidates["y_aligned_px"] - row.y_aligned_px)
    return candidates[distance <= EVENT_REACH * (candidates["radius_px"] + row.radius_px)]


def _at_border(row, height: int, width: int, radii: float = 1.0) -> bool:
    """Whether ``row``'s droplet lies within ``radii`` of its radii and a pixel of the field's edge."""
    return bool(_within_border(row.x_px, row.y_px, row.radius_px, height, width, radii))


def _within_border(x_px, y_px, radius_px, height: int, width: int, radii: float = 1.0):
    """Whether droplets at ``x_px``, ``y_px`` (numbers or arrays alike) lie within ``radii`` of their
    ``radius_px`` and a pixel of the field's edge."""
    margin = radii * radius_px + 1.0
    return (x_px < margin) | (y_px < margin) | (x_px > width - 1 - margin) | (y_px > height - 1 - margin)


def representative_track(tracks: pd.DataFrame, height: int, width: int) -> int:
    """The track a person would look at first: seen in the most frames, never within a radius of
    the field's edge (where only part of a droplet is drawn, its size is poorly known), and the
    largest by median radius among those (``tracks`` of ``link_droplets``; frames ``(height,
    width)`` px). Where every track touches the edge, the edge is not held against any."""
    inside = ~_within_border(tracks["x_px"], tracks["y_px"], tracks["radius_px"], height, width)
    per_track = (
        tracks.assign(inside=inside)
        .groupby("track")
        .agg(frames=("frame", "nunique"), inside=("inside", "all"), radius=("radius_px", "median"))
    )
    if per_track["inside"].any():
        per_track = per_track[per_track["inside"]]
    return int(per_track.sort_values(["frames", "radius"], ascending=False, kind="stable").index[0])


def frame_table(
    results: Sequence[FitResult],
    fits: Sequence[FrameFit],
    drift: pd.DataFrame,
    frame_interval_s: float | None,
    n_frames: int,
) -> pd.DataFrame:
    """Per-frame statistics: ``frame``, ``time_s``, ``fit_id``, ``fit_kind``, ``seconds``,
    the field's shift from the previous frame (image registration) and its drift from frame 0
    (``link_droplets``), px, the count with its 90 % interval, mean and median radius (px),
    RMSE, and the size statistics of ``droplet_core.measurements.size_statistics`` (``<statistic>``,
    ``_low_90``, ``_high_90``, in px)."""
    times = frame_times_s(n_frames, frame_interval_s)
    drift = drift.set_index("frame")
    rows = []
    for fit, result in zip(fits, results):
        drift_x, drift_y = drift.loc[fit.frame, "drift_x_px"], drift.loc[fit.frame, "drift_y_px"]
        droplets = result.droplets
        count = count_of_table(
            droplets, result.report.uncertainty.count_discrepancy if result.report.uncertainty else 0.0
        )
        weights = droplets["p_exists"].to_numpy(float) if "p_exists" in droplets else np.ones(len(droplets))
        radius = droplets["radius"].to_numpy(float)
        row = {
            "frame": fit.frame,
            "time_s": times[fit.frame],
            "fit_id": fit.fit_id,
            "fit_kind": fit.kind,
            "seconds": round(fit.seconds, 3),
            "shift_x_px": fit.shift_x_px,
            "shift_y_px": fit.shift_y_px,
            "drift_x_px": drift_x,
            "drift_y_px": drift_y,
            "droplet_count": count.count,
            "count_low_90": count.low,
            "count_high_90": count.high,
            "mean_radius_px": float(np.average(radius, weights=weights)) if weights.sum() > 0 else np.nan,
            "median_radius_px": float(np.median(radius[weights >= 0.5])) if (weights >= 0.5).any() else np.nan,
            "rmse": max(result.report.rmse),
        }
        row.update(
            {
                f"{name}": value
                for name, value in statistics_wide(fit_statistics(droplets, result.report)).items()
                if not name.startswith("count")
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class TimelapseTables:
    """A fitted stack's three tables (``tracks``, ``events``, ``frames``)."""

    tracks: pd.DataFrame
    events: pd.DataFrame
    frames: pd.DataFrame


def analyse_stack(
    stack: Stack, settings: TimelapseSettings, fits: Sequence[FrameFit], store: FitStore
) -> TimelapseTables:
    """Tracks, events and per-frame statistics of a stack whose frames ``fit_stack`` fitted."""
    results = [store.load(fit.fit_id) for fit in fits]
    frames = [fit.frame for fit in fits]
    interval = settings.frame_interval_s if settings.frame_interval_s is not None else stack.frame_interval_s
    # Shifts are from the frame fitted before; in frame order, each is from its predecessor
    # (frames before the first were fitted backwards: their shift is to the frame after).
    shifts = np.zeros((stack.n_frames, 2))
    for fit in fits:
        sign = 1.0 if fit.frame > settings.first_frame else -1.0
        row = fit.frame if fit.frame > settings.first_frame else fit.frame + 1
        if fit.frame != settings.first_frame and row < stack.n_frames:
            shifts[row] = sign * np.array([fit.shift_x_px, fit.shift_y_px])
    in_order = [
        dataclasses.replace(fit, shift_x_px=shifts[fit.frame, 0], shift_y_px=shifts[fit.frame, 1]) for fit in fits
    ]
    tracks, drift = link_droplets(
        droplets_of_frames(results, frames),
        shifts,
        search_range_px=settings.search_range_px,
        memory_frames=settings.memory_frames,
        frame_interval_s=interval,
        shape_hw=stack.frames.shape[1:3],
    )
    events = find_events(tracks, stack.n_frames, stack.frames.shape[1:3], interval, frame_changes(stack.frames, shifts))
    return TimelapseTables(tracks, events, frame_table(results, in_order, drift, interval, stack.n_frames))


def write_tables(tables: TimelapseTables, out_dir: str | Path) -> Path:
    """Write ``tracks.csv``, ``events.csv`` and ``frames.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables.tracks.drop(columns=["x_aligned_px", "y_aligned_px"]).to_csv(
        out / "tracks.csv", index=False, float_format="%.6g"
    )
    tables.events.to_csv(out / "events.csv", index=False, float_format="%.6g")
    tables.frames.to_csv(out / "frames.csv", index=False, float_format="%.6g")
    return out


def record_folder(store: FitStore, record_id: str) -> Path:
    """Where a stack fit's record and tables live: ``<store>/timelapses/<record_id>/``.
    ``LookupError`` for an id that is not 32 lowercase hexadecimal characters."""
    if not is_valid_fit_id(record_id):
        raise LookupError(f"{record_id!r} is not a time-lapse id (32 lowercase hexadecimal characters)")
    return store.root / RECORDS_FOLDER / record_id


def run_timelapse(
    stack: Stack,
    settings: TimelapseSettings,
    store: FitStore,
    *,
    stack_sha256: str,
    progress: Callable[[int, int, FrameFit], None] | None = None,
    stop: threading.Event | None = None,
) -> str | None:
    """Fit, link and analyse a stack, and keep its tables and record in ``store``.

    ``stack_sha256`` names the stack's file(s) in the store's images (for share links).
    Returns the record id (``stack_id``), or None when stopped before the last frame (the
    frames fitted so far stay in the store, and a rerun continues from them).
    """
    record_id = stack_id(stack, settings)
    fits = fit_stack(stack, settings, store, progress=progress, stop=stop)
    if len(fits) < stack.n_frames:
        return None
    folder = record_folder(store, record_id)
    write_tables(analyse_stack(stack, settings, fits, store), folder)
    record = {
        "stack_sha256": stack_sha256,
        "settings": settings.to_dict(),
        "problems": list(stack.problems),
        "names": list(stack.names),
        "frames": [dataclasses.asdict(fit) for fit in fits],
    }
    (folder / "record.json").write_text(json.dumps(record, indent=1))
    return record_id


def load_timelapse(store: FitStore, record_id: str) -> tuple[dict, TimelapseTables]:
    """A finished stack fit: its record (``stack_sha256``, ``settings``, ``problems``, ``names``,
    ``frames``) and tables. ``LookupError`` if there is none with this id."""
    folder = record_folder(store, record_id)
    if not (folder / "record.json").is_file():
        raise LookupError(f"no stored time-lapse with id {record_id}")
    record = json.loads((folder / "record.json").read_text())
    tables = TimelapseTables(
        pd.read_csv(folder / "tracks.csv"),
        pd.read_csv(folder / "events.csv", dtype={"tracks_before": str, "tracks_after": str}).fillna(
            {"tracks_before": "", "tracks_after": ""}
        ),
        pd.read_csv(folder / "frames.csv"),
    )
    return record, tables
