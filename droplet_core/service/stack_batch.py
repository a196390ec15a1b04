"""Fit many or long time-lapse stacks on any ``concurrent.futures`` executor (Dask on the command line).

A stack is fitted frame after frame (``droplet_core.service.timelapse.fit_stack``): each later
frame reuses the appearance learned on the frame before, so frames of one stack are fitted in
order, by one worker. What runs side by side is whole stacks, and parts of a long stack
(``--chunk-frames``): each part is a stack of its own whose first frame gets a full fit, so
the parts can run on different workers at the price of one full fit each. Tracks are then
linked over the whole stack at once (``analyse_stack``), across the parts' seams.

Each task reads its stack from the file (workers and the caller must see the same files and
fit store, as for ``droplet_core.service.batch``) and puts every frame's fit in the store, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, as_completed
from pathlib import Path

from droplet_core.imaging.stacks import Stack, read_stack_path
from droplet_core.service.store import FitStore
from droplet_core.service.timelapse import (
    FrameFit,
    TimelapseSettings,
    TimelapseTables,
    analyse_stack,
    fit_stack,
)


def stack_parts(n_frames: int, chunk_frames: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` frame ranges of a stack of ``n_frames`` cut into parts of at most
    ``chunk_frames`` (the whole stack when None); a last part of one frame joins the one before."""
    if chunk_frames is None or chunk_frames >= n_frames:
        return [(0, n_frames)]
    if chunk_frames < 2:
        raise ValueError("a part of a stack needs at least 2 frames (--chunk-frames)")
    starts = list(range(0, n_frames, chunk_frames))
    if n_frames - starts[-1] < 2:
        starts.pop()
    return [(start, stop) for start, stop in zip(starts, [*starts[1:], n_frames])]


def sub_stack(stack: Stack, start: int, stop: int) -> Stack:
    """Frames ``start:stop`` of ``stack`` as a stack of their own."""
    return dataclasses.replace(
        stack,
        frames=stack.frames[start:stop],
        names=stack.names[start:stop],
        frame_sha256=stack.frame_sha256[start:stop],
    )


def fit_stack_part(path: str, start: int, stop: int, settings: TimelapseSettings, store_root: str) -> list[FrameFit]:
    """Fit frames ``start:stop`` of the stack at ``path`` (a task); frame numbers are the whole stack's."""
    stack = read_stack_path(path)
    part = sub_stack(stack, start, min(stop, stack.n_frames))
    fits = fit_stack(part, settings, FitStore(store_root))
    return [dataclasses.replace(fit, frame=fit.frame + start) for fit in fits]


@dataclasses.dataclass(frozen=True)
class StackOutcome:
    """One stack's fitted frames and tables, or why it failed (one line)."""

    path: str
    n_frames: int
    parts: int
    tables: TimelapseTables | None
    error: str | None = None


def track_stacks(
    paths: Sequence[str | os.PathLike],
    settings: TimelapseSettings,
    executor: Executor,
    store: FitStore,
    *,
    chunk_frames: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[StackOutcome]:
    """Fit and analyse every stack of ``paths`` on ``executor``, parts of all stacks side by side.

    Parameters
    ----------
    paths : stack files or folders (anything ``read_stack_path`` reads).
    settings : how to fit and link; with ``chunk_frames`` the first frame of every part is
        fitted in full, so ``settings.first_frame`` must be the first.
    executor : runs one task per part (``fit_stack_part``); parts run side by side only on
        separate processes (numpyro traces a model on one handler stack per process).
    store : the fit store every worker shares.
    chunk_frames : frames per part (None: each stack in one part).
    progress : called after every part with (parts done, parts in all, the stack's path).

    Returns
    -------
    One ``StackOutcome`` per path, in the order given; a stack that cannot be read or fitted
    fails alone.
    """
    if chunk_frames is not None and settings.first_frame != 0:
        raise ValueError("parts of a stack each start at their own first frame: leave --first-frame at 1")
    stacks: dict[str, Stack] = {}
    failed: dict[str, str] = {}
    futures = {}
    for path in map(os.fspath, paths):
        try:
            stack = stacks[path] = read_stack_path(path)
            for start, stop in stack_parts(stack.n_frames, chunk_frames):
                future = executor.submit(fit_stack_part, path, start, stop, settings, os.fspath(store.root))
                futures[future] = path
        except (ValueError, OSError) as error:
            failed[path] = _one_line(error)
    fits: dict[str, list[FrameFit]] = {path: [] for path in stacks}
    for done, future in enumerate(as_completed(futures), start=1):
        path = futures[future]
        try:
            fits[path].extend(future.result())
        except Exception as error:  # noqa: BLE001 - one stack's crash must not end the others
            failed.setdefault(path, _one_line(error))
        if progress is not None:
            progress(done, len(futures), path)
    outcomes = []
    for path in map(os.fspath, paths):
        stack = stacks.get(path)
        n_frames = stack.n_frames if stack is not None else 0
        parts = len(stack_parts(n_frames, chunk_frames)) if stack is not None else 0
        if path in failed:
            outcomes.append(StackOutcome(path, n_frames, parts, None, failed[path]))
            continue
        frame_fits = sorted(fits[path], key=lambda fit: fit.frame)
        outcomes.append(StackOutcome(path, n_frames, parts, analyse_stack(stack, settings, frame_fits, store)))
    return outcomes


def output_folders(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Each stack's output folder under ``out_dir``: its file or folder name, made unique."""
    folders, used = [], set()
    for path in paths:
        name = Path(path).name or "stack"
        stem = name if Path(path).is_dir() else Path(name).stem
        unique, n = stem, 2
        while unique in used:
            unique, n = f"{stem}-{n}", n + 1
        used.add(unique)
        folders.append(Path(out_dir) / unique)
    return folders


def _one_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
