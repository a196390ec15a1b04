"""Fuzzing the image loader and the command line with malformed files.

Loader: every file ends in a clear ImageError or a correct load. Command line
(``python -m droplet_core fit``): every file ends in exit status 0 with correct outputs
or exit status 2 with one line saying why, never a traceback or a hang, and every entry
the store holds afterwards loads. Most runs are in-process through ``cli.main`` with a
stand-in for the SVI engine (a real fit takes seconds; what is fuzzed here is the input
handling around it); a few go through a real ``python -m droplet_core fit`` subprocess
with the real engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from droplet_core.fit_ids import fit_key
from droplet_core.imaging.images import ImageError, load_image
from droplet_core.measurements.counting import DropletCount
from droplet_core.results import FitReport, FitResult, Timings
from droplet_core.service.cli import main
from droplet_core.service.store import FitStore
from droplet_core.synthetic.scenes import SceneSettings, make_scene

CASES_PER_FORMAT = 170  # three formats: a little over 500 malformed inputs in all


def encoded(fmt: str, rng: np.random.Generator) -> bytes:
    height, width = rng.integers(8, 64, size=2)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if fmt == "tiff":
        tifffile.imwrite(buffer, pixels.astype(np.uint16) * 257)
    else:
        Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncate, flip bits, overwrite a run of bytes or splice in garbage."""
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        return bytes(data[: rng.integers(0, len(data))])
    if kind == 1:
        for position in rng.integers(0, len(data), size=rng.integers(1, 16)):
            data[position] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == 2:
        start = int(rng.integers(0, len(data)))
        data[start : start + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        return bytes(data)
    start = int(rng.integers(0, len(data)))
    return bytes(data[:start]) + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_malformed_files_load_or_fail_clearly(fmt):
    rng = np.random.default_rng({"png": 1, "jpeg": 2, "tiff": 3}[fmt])
    loaded = refused = 0
    for _ in range(CASES_PER_FORMAT):
        data = mutate(encoded(fmt, rng), rng)
        started = time.monotonic()
        try:
            image = load_image(data)
        except ImageError as error:
            refused += 1
            message = str(error)
            assert message and "\n" not in message
        else:
            loaded += 1
            assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
            assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
        assert time.monotonic() - started < 5, "a malformed file must not hang the loader"
    assert refused > 0 and loaded + refused == CASES_PER_FORMAT


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 100_000), (100_000, 1), (7, 7)],
)
def test_degenerate_shapes_are_refused(shape):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ImageError, match="too small"):
        load_image(buffer.getvalue())


def test_huge_declared_size_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # The IHDR chunk's width and height (bytes 16..23) now claim 60000 x 60000 pixels,
    # with the chunk's checksum (bytes 29..32) to match.
    data[16:24] = (60000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    with pytest.raises(ImageError, match="too large"):
        load_image(bytes(data))


def test_nan_float_tiff_is_refused():
    buffer = io.BytesIO()
    values = np.full((16, 16), np.nan, np.float32)
    tifffile.imwrite(buffer, values)
    with pytest.raises(ImageError):
        load_image(buffer.getvalue())


# -- the command line ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
CLI_CASE_LIMIT_S = 10  # a malformed file must not hang the command line
CLI_FIT_ARGS = ["--model", "gaussian", "--steps", "2", "--downscale", "1", "--quiet"]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(values: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, values, **options)
    return buffer.getvalue()


def declared_size_tiff(width: int, height: int) -> bytes:
    """A baseline 8-bit greyscale TIFF header claiming ``width x height`` with almost no data."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 12 * 10 + 4),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, min(width * height, 2**32 - 1)),
        (284, 3, 1),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(64)


def declared_size_png(width: int, height: int) -> bytes:
    data = bytearray(png_bytes(np.zeros((16, 16), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def declared_size_jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def bomb_png(side: int) -> bytes:
    """A small file that decodes to ``side x side`` bytes: zeros compress about 1000:1."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def special_inputs() -> list[tuple[str, str, bytes]]:
    """(label, file name, bytes) of hand-made malformed inputs."""
    rng = np.random.default_rng(7)
    small_rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    nan_tiff = np.full((16, 16), np.nan, np.float32)
    one_nan = rng.random((16, 16)).astype(np.float32)
    one_nan[3, 4] = np.nan
    jpeg = io.BytesIO()
    Image.fromarray(small_rgb).save(jpeg, format="JPEG")
    return [
        ("zero-size png", "empty.png", b""),
        ("zero-size tiff", "empty.tif", b""),
        ("zero-size jpeg", "empty.jpg", b""),
        ("png signature only", "sig.png", b"\x89PNG\r\n\x1a\n"),
        ("tiff header only", "hdr.tif", b"II*\x00\x08\x00\x00\x00"),
        ("huge declared png", "huge.png", declared_size_png(60000, 60000)),
        ("huge declared jpeg", "huge.jpg", declared_size_jpeg(65000, 65000)),
        ("huge declared tiff", "huge.tif", declared_size_tiff(60000, 60000)),
        ("huge declared width png", "wide.png", declared_size_png(2**31 - 1, 1)),
        ("zero declared png", "zero.png", declared_size_png(0, 0)),
        ("png decompression bomb", "bomb.png", bomb_png(12_000)),
        ("tiff decompression bomb", "bomb.tif", tiff_bytes(np.zeros((8000, 8000), np.uint8), compression="zlib")),
        ("1x1 png", "one.png", png_bytes(np.zeros((1, 1), np.uint8))),
        ("1x1 tiff", "one.tif", tiff_bytes(np.zeros((1, 1), np.uint16))),
        ("1x100000 png", "row.png", png_bytes(np.zeros((1, 100_000), np.uint8))),
        ("100000x1 png", "column.png", png_bytes(np.zeros((100_000, 1), np.uint8))),
        ("1x100000 tiff", "row.tif", tiff_bytes(np.zeros((1, 100_000), np.uint8))),
        ("NaN float tiff", "nan.tif", tiff_bytes(nan_tiff)),
        ("one NaN float tiff", "one-nan.tif", tiff_bytes(one_nan)),
        ("inf float tiff", "inf.tif", tiff_bytes(np.full((16, 16), np.inf, np.float32))),
        ("stack of 5 tiff pages", "stack.tif", tiff_bytes(np.zeros((5, 16, 16), np.uint8))),
        ("4-d tiff", "volume.tif", tiff_bytes(np.zeros((2, 3, 16, 16), np.uint8))),
        ("text named png", "notes.png", b"these are my notes, not a picture\n"),
        ("html named tiff", "page.tiff", b"<html><body>404</body></html>"),
        ("zip named jpeg", "archive.jpg", b"PK\x03\x04" + bytes(40)),
        ("png named tif", "wrong.tif", png_bytes(small_rgb)),
        ("jpeg named png", "wrong.png", jpeg.getvalue()),
        ("tiff named jpg", "wrong.jpg", tiff_bytes(small_rgb)),
        ("png without extension", "noext", png_bytes(small_rgb)),
        ("constant grey png", "flat.png", png_bytes(np.full((16, 16), 128, np.uint8))),
        ("smallest accepted png", "eight.png", png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8))),
    ]


def malformed_inputs() -> list[tuple[str, str, bytes]]:
    """The special inputs and, per format, ``CASES_PER_FORMAT`` mutated encodings."""
    cases = special_inputs()
    suffix = {"png": "png", "jpeg": "jpg", "tiff": "tif"}
    for fmt, seed in (("png", 11), ("jpeg", 12), ("tiff", 13)):
        rng = np.random.default_rng(seed)
        for index in range(CASES_PER_FORMAT):
            cases.append((f"mutated {fmt} #{index}", f"m{index}.{suffix[fmt]}", mutate(encoded(fmt, rng), rng)))
    return cases


def stand_in_fit(image, settings, *, image_sha256, progress=None, appearance_source=None, **_):
    """A FitResult of the right shape, without SVI: the droplets are the image's corners."""
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    height, width = image.shape[:2]
    grey = image.mean(axis=2, keepdims=True)
    fit_id = fit_key(image_sha256, settings)
    droplets = pd.DataFrame({"x": [0.0, width - 1.0], "y": [0.0, height - 1.0], "radius": [1.0, 1.0]})
    report = FitReport(
        fit_id=fit_id,
        image_sha256=image_sha256,
        settings=settings,
        status="done",
        created=datetime.now(UTC).isoformat(),
        steps_done=settings.steps,
        total_steps_done=settings.steps,
        final_loss=0.0,
        rmse=(0.0,),
        device="stand-in",
        timings=Timings(total_s=0.0),
        count=DropletCount(len(droplets), len(droplets), len(droplets), len(droplets), 0),
        fit_shape=(height, width, 1),
    )
    return FitResult(report, droplets, grey, grey, np.zeros(settings.steps, np.float32), {}, None, {})


@contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_outputs(out: Path, store: FitStore) -> None:
    """``out`` holds a complete fit: droplets.csv, reconstruction.png, fit.json of a stored fit."""
    info = json.loads((out / "fit.json").read_text())
    droplets = pd.read_csv(out / "droplets.csv")
    assert list(droplets.columns[:3]) == ["x", "y", "radius"] and len(droplets) == info.get(
        "candidate_droplets", info["droplet_count"]
    )
    with Image.open(out / "reconstruction.png") as reconstruction:
        reconstruction.load()
    assert store.has(info["fit_id"])


def check_store_intact(store: FitStore) -> int:
    """Every entry of ``store`` loads and no work directory is left over; the entry count."""
    entries = [entry.name for entry in (store.root / "fits").iterdir()]
    for fit_id in entries:
        store.load(fit_id)
    assert not any((store.root / ".tmp").iterdir())
    return len(entries)


@pytest.mark.slow
def test_malformed_files_through_the_command_line(tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.WARNING)  # log records and warnings would be extra lines on stderr
    monkeypatch.setenv("DROPLET_STORE", str(tmp_path / "store"))
    monkeypatch.setattr("droplet_core.inference.engine.run_fit", stand_in_fit)
    cases = malformed_inputs()
    assert len(cases) >= 500
    store = FitStore(tmp_path / "store")
    fitted_images = set()
    for index, (label, name, data) in enumerate(cases):
        path = tmp_path / "in" / str(index) / name
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        out = tmp_path / "out" / str(index)
        with time_limit(CLI_CASE_LIMIT_S), warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            code = main(["fit", str(path), "--out", str(out), *CLI_FIT_ARGS])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, label
        assert not warned and not caplog.records, (label, [str(w.message) for w in warned], caplog.records)
        if code == 0:
            check_outputs(out, store)
            fitted_images.add(hashlib.sha256(data).hexdigest())
        else:
            assert code == 2, label
            assert captured.err.startswith("error: ") and len(captured.err.splitlines()) == 1, (label, captured.err)
            assert not out.exists(), label
    assert 0 < len(fitted_images) < len(cases)
    assert check_store_intact(store) == len(fitted_images)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "make", "expect"),
    [
        (
            "cut.png",
            lambda: png_bytes(np.random.default_rng(4).integers(0, 255, (24, 32, 3), dtype=np.uint8))[:600],
            "truncated",
        ),
        ("nan.tif", lambda: tiff_bytes(np.full((16, 16), np.nan, np.float32)), "NaN"),
        ("bomb.png", lambda: bomb_png(12_000), "too large"),
        ("row.png", lambda: png_bytes(np.zeros((1, 100_000), np.uint8)), "too small"),
        # A PNG named .tif, read by its content; droplets in it, so the fit has candidates (noise
        # alone has none: the detector keeps only what stands out of the pixel noise).
        ("wrong.tif", lambda: png_bytes(make_scene(3, SceneSettings(width_px=48, height_px=40, n_droplets=8))[0]), 0),
        ("flat.png", lambda: png_bytes(np.full((16, 16), 128, np.uint8)), None),  # fits, or "no droplets"
        ("offset.tif", lambda: b"II*\x00\x08\x00\x00\x00", "corrupt"),  # tifffile logs a warning
    ],
)
def test_malformed_files_through_a_real_subprocess(tmp_path, name, make, expect):
    """The real ``python -m droplet_core fit`` (real engine for files that decode).

    ``expect``: 0 for a file that must fit, the message of an exit-2 refusal, or None
    where either is right.
    """
    path = tmp_path / name
    path.write_bytes(make())
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "droplet_core", "fit", str(path), "--out", str(out), *CLI_FIT_ARGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, DROPLET_STORE=str(tmp_path / "store")),
    )
    assert "Traceback" not in done.stderr, done.stderr
    store = FitStore(tmp_path / "store")
    if expect == 0 or (expect is None and done.returncode == 0):
        assert done.returncode == 0, done.stderr
        check_outputs(out, store)
    else:
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
        if expect is not None:
            assert expect in done.stderr
    check_store_intact(store)
