"""Fuzzing the image loader: malformed files end in a clear ImageError or a correct load."""

from __future__ import annotations

import io
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from droplet_core.images import ImageError, load_image

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
