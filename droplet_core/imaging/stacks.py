"""Reading time-lapse stacks: multi-page / OME-TIFF, image sequences (or a zip of them), videos.

Every reader returns a ``Stack``: the frames as float32 RGB ``(h, w, 3)`` in [0, 1] (decoded
and limited like single images, by ``droplet_core.imaging.images.load_image``), the frame interval
where the file carries one, and a one-line problem for every frame that was left out
(unreadable, truncated, another size, beyond the frame limit). Frames that were fine are
always kept; only a stack with no usable frame raises ``StackError``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from droplet_core.imaging import images
from droplet_core.imaging.images import IMAGE_SUFFIXES, ImageError, archive_image_members

DEFAULT_MAX_FRAMES = 1000
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
# Axes tifffile names that can hold frames over time, most specific first.
_FRAME_AXES = ("T", "I", "Z", "Q")
# Seconds per unit of an OME ``TimeIncrementUnit``.
_OME_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "min": 60.0, "h": 3600.0}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class StackError(ImageError):
    """A stack with no usable frame; the message is one line for the user."""


@dataclass(frozen=True, eq=False)
class Stack:
    """The usable frames of a time-lapse, in order.

    Attributes
    ----------
    frames : float32 ``(t, h, w, 3)`` RGB in [0, 1], every frame the size of the first usable one.
    names : ``t`` labels, e.g. ``"page 3"`` or a file name.
    frame_sha256 : ``t`` hex digests of each frame's pixels (the fit store's image keys).
    frame_interval_s : seconds between frames as the file records it, or None.
    problems : one line per frame left out (and why).
    """

    frames: np.ndarray
    names: tuple[str, ...]
    frame_sha256: tuple[str, ...]
    frame_interval_s: float | None
    problems: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def max_frames_limit() -> int:
    """The most frames a stack may have: ``DROPLET_MAX_FRAMES`` or ``DEFAULT_MAX_FRAMES``."""
    text = os.environ.get("DROPLET_MAX_FRAMES", "").strip()
    if not text:
        return DEFAULT_MAX_FRAMES
    if not text.isdigit() or int(text) < 1:
        raise StackError(f"DROPLET_MAX_FRAMES must be a positive integer, not {text!r}")
    return int(text)


def natural_key(name: str) -> list:
    """Sort key ordering ``frame2`` before ``frame10`` (digit runs compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def parse_frame_interval(text: str) -> float:
    """``"2s"``, ``"500 ms"``, ``"1.5min"``, ``"0.5h"`` or a bare number of seconds -> seconds.

    Raises ``ValueError`` with a one-line message for anything else or a non-positive value.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|min|h)?\s*", str(text))
    if match is None:
        raise ValueError(f"frame interval {text!r} not understood; give e.g. 2s, 500ms or 1.5min")
    seconds = float(match.group(1)) * _OME_TIME_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("the frame interval must be positive")
    return seconds


def read_stack(files: Sequence[tuple[str, bytes]], *, max_frames: int | None = None) -> Stack:
    """The stack held by uploaded ``(name, bytes)`` files.

    One file: a multi-page TIFF / OME-TIFF, a zip of image files, or a video; several
    files: one image each (a zip among them is unpacked), in natural order of their names.

    Raises
    ------
    StackError : no usable frame (the message says why for the first frames that failed).
    """
    limit = max_frames_limit() if max_frames is None else int(max_frames)
    if not files:
        raise StackError("no files given: upload a multi-page TIFF, a video, a zip or several images")
    if len(files) == 1:
        name, data = files[0]
        lower = name.lower()
        if not data:
            raise StackError(f"empty file {name!r}: no frames")
        if data[:4] in _TIFF_MAGIC:
            return _read_tiff(name, data, limit)
        if lower.endswith(".zip"):
            return _read_sequence(_zip_members(name, data), limit)
        if lower.endswith(VIDEO_SUFFIXES):
            return _read_video(name, data, limit)
    return _read_sequence(_unzipped(files), limit)


def read_stack_path(path: str | os.PathLike, *, max_frames: int | None = None) -> Stack:
    """``read_stack`` of a file (TIFF, zip, video, single image) or of a folder's image files."""
    folder = Path(path)
    if folder.is_dir():
        members = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: natural_key(p.name),
        )
        if not members:
            raise StackError(f"the folder {os.fspath(path)!r} holds no image files")
        return read_stack([(p.name, p.read_bytes()) for p in members], max_frames=max_frames)
    return read_stack([(folder.name, images.read_image_bytes(folder))], max_frames=max_frames)


def _unzipped(files: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = []
    for name, data in files:
        members.extend(_zip_members(name, data) if name.lower().endswith(".zip") else [(name, data)])
    return sorted(members, key=lambda member: natural_key(member[0]))


def _zip_members(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The image members of a zip archive, in natural order (folders and hidden files skipped)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive_image_members(archive)
            found = [(info.filename, archive.read(info)) for info in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise StackError(f"{name} is not a readable zip archive: {' '.join(str(exc).split())}") from exc
    if not found:
        raise StackError(f"{name} holds no image files")
    return sorted(found, key=lambda member: natural_key(member[0]))


def _read_sequence(members: list[tuple[str, bytes]], limit: int) -> Stack:
    """One frame per image file; a file that does not load is reported and left out."""
    frames: list[tuple[str, np.ndarray | str | None]] = []
    for index, (name, data) in enumerate(members):
        if index >= limit:
            frames.append((name, None))
            continue
        try:
            frames.append((name, images.load_image(data)))
        except ImageError as exc:
            frames.append((name, f"{name}: {exc}"))
    return _assembled(frames, None, limit)


def _read_tiff(name: str, data: bytes, limit: int) -> Stack:
    """Frames along the time (or page) axis of a TIFF's first series, read so that a damaged
    frame loses only itself: page by page, or, for uncompressed frames stored one after the
    other (ImageJ stacks, tifffile's own), frame by frame from the bytes."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            series = tiff.series[0]
            axes, shape = series.axes, tuple(series.shape)
            interval = _tiff_frame_interval(tiff)
            declared = int((tiff.imagej_metadata or {}).get("images", 0) or 0)
            frame_axis = next((axes.index(a) for a in _FRAME_AXES if a in axes and shape[axes.index(a)] > 1), None)
            page = tiff.pages[0]
            contiguous = page.is_contiguous and page.compression == 1 and page.dataoffsets
            if frame_axis is None and declared > 1 and contiguous:
                # A damaged ImageJ stack: tifffile sees only its first page, the rest follow it.
                shape, frame_axis = (declared, *page.shape), 0
            if frame_axis is None:
                return _assembled([(name, images.load_image(data))], interval, limit)
            n_frames = shape[frame_axis]
            per_page = len(series.pages) == n_frames and frame_axis == 0
            by_bytes = not per_page and frame_axis == 0 and contiguous
            values = None
            frames = []
            for index in range(n_frames):
                label = f"frame {index + 1}"
                if index >= limit:
                    frames.append((label, None))
                    continue
                try:
                    if per_page:
                        plane = series.pages[index].asarray()
                    elif by_bytes:
                        plane = _frame_from_bytes(
                            data, page.dataoffsets[0], page.dtype.newbyteorder(tiff.byteorder), shape[1:], index
                        )
                    else:
                        values = series.asarray() if values is None else values
                        plane = np.take(values, index, axis=frame_axis)
                    frames.append((label, _plane_rgb(plane, label)))
                except ImageError as exc:
                    frames.append((label, f"{label}: {exc}"))
                except Exception as exc:  # tifffile's own errors, struct/EOF on short files
                    frames.append((label, f"{label}: {_failure(exc)}"))
    except (ImageError, StackError):
        raise
    except Exception as exc:
        raise StackError(f"{name} is not a readable TIFF stack: {_failure(exc)}") from exc
    return _assembled(frames, interval, limit)


def _frame_from_bytes(data: bytes, offset: int, dtype: np.dtype, frame_shape: tuple, index: int) -> np.ndarray:
    """Frame ``index`` of uncompressed frames of ``frame_shape`` stored one after the other from ``offset``."""
    size = int(np.prod(frame_shape)) * dtype.itemsize
    start = offset + index * size
    if start + size > len(data):
        raise EOFError("truncated")
    return np.frombuffer(data, dtype, int(np.prod(frame_shape)), start).reshape(frame_shape)


def _failure(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "failed to read" in text or "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated: the data ends early"
    return text or type(exc).__name__


def _plane_rgb(plane: np.ndarray, label: str) -> np.ndarray:
    """One frame's array, decoded by ``images.load_image`` (same scaling, layouts and limits)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.squeeze(plane) if plane.ndim > 2 else plane)
    return images.load_image(buffer.getvalue())


def _tiff_frame_interval(tiff: tifffile.TiffFile) -> float | None:
    """Seconds between frames from ImageJ (``finterval``) or OME (``TimeIncrement``) metadata."""
    imagej = tiff.imagej_metadata or {}
    if imagej.get("finterval"):
        return float(imagej["finterval"])
    if tiff.ome_metadata:
        try:
            root = ElementTree.fromstring(tiff.ome_metadata)
        except ElementTree.ParseError:
            return None
        for element in root.iter():
            if element.tag.endswith("Pixels") and element.get("TimeIncrement"):
                unit = element.get("TimeIncrementUnit", "s")
                return float(element.get("TimeIncrement")) * _OME_TIME_UNITS.get(unit, 1.0)
    return None


def _read_video(name: str, data: bytes, limit: int) -> Stack:
    """Frames of a video through imageio's ffmpeg plugin (``imageio-ffmpeg``)."""
    import imageio.v3 as iio

    suffix = os.path.splitext(name)[1].lower()
    frames, interval = [], None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"video{suffix}")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            fps = iio.immeta(path, plugin="FFMPEG").get("fps")
            interval = 1.0 / float(fps) if fps else None
            for index, frame in enumerate(iio.imiter(path, plugin="FFMPEG")):
                label = f"frame {index + 1}"
                if index >= limit:
                    frames.append((label, None))
                    continue
                try:
                    frames.append((label, _plane_rgb(np.asarray(frame), label)))
                except ImageError as exc:
                    frames.append((label, f"{label}: {exc}"))
        except Exception as exc:  # ffmpeg reports broken or empty videos in many ways
            if not any(isinstance(frame, np.ndarray) for _, frame in frames):
                raise StackError(f"{name} is not a readable video: {_failure(exc).splitlines()[0][:200]}") from exc
            frames.append(("rest", f"{name}: the video could not be read past frame {len(frames)}"))
    if not frames:
        raise StackError(f"{name} is a video with no frames")
    return _assembled(frames, interval, limit)


def _assembled(frames: list[tuple[str, np.ndarray | str | None]], interval: float | None, limit: int) -> Stack:
    """The ``Stack`` of ``(label, frame)`` pairs: a frame is an array, a problem line, or None
    (beyond ``limit``). Frames of another size than the first usable one are left out."""
    kept, names, problems = [], [], []
    over = sum(frame is None for _, frame in frames)
    for label, frame in frames:
        if isinstance(frame, str):
            problems.append(frame)
        elif frame is None:
            continue
        elif kept and frame.shape != kept[0].shape:
            height, width = kept[0].shape[:2]
            problems.append(
                f"{label}: {frame.shape[1]}x{frame.shape[0]} pixels, not {width}x{height} "
                "like the first frame; left out"
            )
        elif len(kept) >= limit:
            over += 1
        else:
            kept.append(frame)
            names.append(label)
    if over:
        problems.append(f"{over} frames beyond the limit of {limit} left out (set DROPLET_MAX_FRAMES)")
    if not kept:
        reason = problems[0] if problems else "no frames"
        raise StackError(f"no usable frame in this stack: {reason}")
    stacked = np.stack(kept)
    digests = tuple(hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest() for frame in kept)
    return Stack(stacked, tuple(names), digests, interval, tuple(problems))
