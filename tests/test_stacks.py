"""Reading stacks: TIFF / OME-TIFF time axes and intervals, sequences and zips in natural
order, videos, and bad frames reported with the good ones kept."""

import io
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from droplet_core.imaging.stacks import (
    StackError,
    natural_key,
    parse_frame_interval,
    read_stack,
)


def _frames(n, height=40, width=50, seed=0):
    """``n`` uint16 frames, each with its index written into a corner (to check the order)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(1000, 20000, size=(n, height, width)).astype(np.uint16)
    frames[:, 0, 0] = np.arange(n) * 1000
    return frames


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_imagej_tiff_frames_and_interval():
    frames = _frames(5)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, frames, imagej=True, metadata={"axes": "TYX", "finterval": 2.0})
    stack = read_stack([("movie.tif", buffer.getvalue())])
    assert stack.n_frames == 5 and stack.frames.shape == (5, 40, 50, 3)
    assert stack.frame_interval_s == pytest.approx(2.0)
    np.testing.assert_allclose(stack.frames[:, 0, 0, 0], np.arange(5) * 1000 / 65535, atol=1e-6)
    assert stack.problems == ()
    assert len(set(stack.frame_sha256)) == 5


def test_ome_tiff_interval_in_milliseconds():
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, _frames(3), ome=True, metadata={"axes": "TYX", "TimeIncrement": 250.0, "TimeIncrementUnit": "ms"}
    )
    stack = read_stack([("movie.ome.tif", buffer.getvalue())])
    assert stack.n_frames == 3
    assert stack.frame_interval_s == pytest.approx(0.25)


def test_truncated_tiff_keeps_the_frames_before_the_damage():
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, _frames(4), metadata={"axes": "TYX"})
    data = buffer.getvalue()
    # One page per frame, the pixel data last: cutting into the end damages the last frame.
    stack = read_stack([("cut.tif", data[: len(data) - 40 * 50])])
    assert stack.n_frames == 3
    assert len(stack.problems) == 1 and stack.problems[0].startswith("frame 4: truncated")


def test_truncated_imagej_tiff_keeps_the_frames_before_the_damage():
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, _frames(4), imagej=True, metadata={"axes": "TYX"})
    data = buffer.getvalue()
    stack = read_stack([("cut.tif", data[: len(data) - 40 * 50])])
    assert stack.n_frames == 3
    np.testing.assert_allclose(stack.frames[:, 0, 0, 0], np.arange(3) * 1000 / 65535, atol=1e-6)
    assert len(stack.problems) == 1 and stack.problems[0].startswith("frame 4: truncated")


def test_zip_sequence_in_natural_order_with_bad_frames_reported():
    frames = (_frames(11) // 257).astype(np.uint8)
    members = [(f"t{i}.png", _png(frames[i])) for i in range(11)]
    members[3] = ("t3.png", b"not an image at all")
    members[5] = ("t5.png", _png(np.zeros((30, 50), np.uint8)))
    stack = read_stack([("frames.zip", _zip(members[::-1]))])
    assert stack.names == tuple(f"t{i}.png" for i in range(11) if i not in (3, 5))
    np.testing.assert_allclose(
        stack.frames[:, 0, 0, 0] * 255, [frames[i, 0, 0] for i in range(11) if i not in (3, 5)], atol=1e-3
    )
    assert len(stack.problems) == 2
    assert stack.problems[0].startswith("t3.png: not an image")
    assert "50x30 pixels, not 50x40" in stack.problems[1]


def test_frame_limit_keeps_the_first_frames():
    files = [(f"f{i}.png", _png(np.full((20, 20), i * 10, np.uint8))) for i in range(6)]
    stack = read_stack(files, max_frames=4)
    assert stack.n_frames == 4
    assert stack.problems == ("2 frames beyond the limit of 4 left out (set DROPLET_MAX_FRAMES)",)


def test_nothing_usable_is_one_clear_error():
    with pytest.raises(StackError, match="no usable frame in this stack: a.png: not an image"):
        read_stack([("a.png", b"garbage"), ("b.png", b"")])
    with pytest.raises(StackError, match="is not a readable zip archive"):
        read_stack([("frames.zip", b"PK\x03\x04 broken")])


def test_video_frames_and_rate(tmp_path):
    import imageio.v3 as iio

    frames = np.zeros((6, 64, 80, 3), np.uint8)
    for index in range(6):
        frames[index, 16:48, 10 + 8 * index : 30 + 8 * index] = 200
    path = tmp_path / "movie.mp4"
    iio.imwrite(path, frames, plugin="FFMPEG", fps=5, codec="libx264", macro_block_size=16)
    stack = read_stack([("movie.mp4", path.read_bytes())])
    assert stack.n_frames == 6
    assert stack.frame_interval_s == pytest.approx(0.2)
    # The bright bar moves right by 8 px a frame.
    columns = [np.flatnonzero(frame[32, :, 0] > 0.5) for frame in stack.frames]
    assert [c.min() for c in columns] == pytest.approx([10 + 8 * i for i in range(6)], abs=2)


def test_video_with_no_frames_is_refused():
    with pytest.raises(StackError, match="movie.mp4"):
        read_stack([("movie.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)])


def test_natural_key_and_frame_interval():
    assert sorted(["f10", "f2", "F1"], key=natural_key) == ["F1", "f2", "f10"]
    assert parse_frame_interval("2s") == 2.0
    assert parse_frame_interval("500 ms") == pytest.approx(0.5)
    assert parse_frame_interval("1.5min") == pytest.approx(90.0)
    assert parse_frame_interval("3") == 3.0
    with pytest.raises(ValueError, match="not understood"):
        parse_frame_interval("soon")
