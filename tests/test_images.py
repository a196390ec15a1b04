"""Image loading edge cases (files written into tmp_path), cropping, downscaling, coordinates."""

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from droplet_core.imaging.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    auto_downscale_factor,
    crop,
    downscale,
    load_image,
    max_pixels_limit,
    read_image_bytes,
    sha256_bytes,
    to_fit_px,
    to_original_px,
)


def save_pil(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def png_header_only(width, height):
    """A PNG declaring ``width x height`` RGB with (almost) no pixel data: a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def refused(source, *fragments, **kwargs):
    """Assert ``load_image`` raises a one-line ImageError containing every fragment."""
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- loads that succeed -------------------------------------------------------------


def test_rgb_png_from_path_and_bytes(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = save_pil(tmp_path / "a.png", array)
    image = load_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, array / 255.0, atol=1e-6)
    np.testing.assert_array_equal(load_image(read_image_bytes(path)), image)
    np.testing.assert_array_equal(load_image(str(path)), image)


def test_16_bit_png(tmp_path):
    array = np.zeros((10, 12), np.uint16)
    array[:, :6], array[:, 6:] = 65535, 32768
    image = load_image(save_pil(tmp_path / "deep.png", array))
    assert image.shape == (10, 12, 3)
    assert image[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert image[0, 11, 0] == pytest.approx(0.5, abs=1e-4)


def test_16_bit_rgb_tiff_keeps_precision(tmp_path):
    array = np.zeros((10, 12, 3), np.uint16)
    array[..., 0], array[..., 1], array[..., 2] = 65535, 32768, 257
    tifffile.imwrite(tmp_path / "deep.tif", array)
    image = load_image(tmp_path / "deep.tif")
    assert image.shape == (10, 12, 3)
    assert image[0, 0].tolist() == pytest.approx([1.0, 32768 / 65535, 257 / 65535], abs=1e-6)


def test_float_tiff(tmp_path):
    array = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    tifffile.imwrite(tmp_path / "f.tif", array)
    np.testing.assert_allclose(load_image(tmp_path / "f.tif")[..., 1], array, atol=1e-7)
    # Out of [0, 1] (e.g. raw counts): stretched linearly from min..max.
    tifffile.imwrite(tmp_path / "counts.tif", array * 400.0 - 100.0)
    np.testing.assert_allclose(load_image(tmp_path / "counts.tif")[..., 0], array, atol=1e-6)


def test_planar_rgb_tiff_and_lzw_tiff(tmp_path):
    planar = np.zeros((3, 9, 10), np.uint8)
    planar[2] = 255
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert load_image(tmp_path / "planar.tif")[0, 0].tolist() == [0.0, 0.0, 1.0]
    # LZW needs the optional imagecodecs package in tifffile; Pillow reads it instead.
    array = np.full((9, 10, 3), (255, 0, 0), np.uint8)
    save_pil(tmp_path / "lzw.tif", array, compression="tiff_lzw")
    assert load_image(tmp_path / "lzw.tif")[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_rgba_composited_over_white(tmp_path):
    array = np.zeros((8, 8, 4), np.uint8)
    array[0, 0] = (255, 0, 0, 255)  # opaque red
    array[0, 1] = (0, 0, 0, 0)  # transparent -> white
    array[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    image = load_image(save_pil(tmp_path / "alpha.png", array))
    assert image.shape == (8, 8, 3)
    assert image[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert image[0, 1].tolist() == [1.0, 1.0, 1.0]
    assert image[0, 2] == pytest.approx([127 / 255] * 3, abs=1e-6)


def test_greyscale_and_palette(tmp_path):
    grey = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (9, 1))
    image = load_image(save_pil(tmp_path / "grey.png", grey))
    assert image.shape == (9, 10, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert image[0, 1, 0] == pytest.approx(25 / 255)
    palette = Image.fromarray(np.full((9, 10, 3), (0, 0, 255), np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[0, 0].tolist() == [0.0, 0.0, 1.0]


def test_exif_orientation_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    array[:6, :6] = (255, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise for display
    path = save_pil(tmp_path / "rotated.jpg", array, exif=exif, quality=95)
    image = load_image(path)
    assert image.shape == (40, 20, 3)
    # Clockwise rotation takes the top-left corner to the top-right.
    assert image[:5, -5:, 0].mean() > 0.8 and image[:5, -5:, 1].mean() < 0.2
    assert image[:5, :5, 0].mean() < 0.2


# --- refusals: one helpful line each -----------------------------------------------


def test_truncated_jpeg_and_png(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for suffix, kind in (("jpg", "JPEG"), ("png", "PNG")):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=kind)
        path = tmp_path / f"cut.{suffix}"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        refused(path, "truncated image file", f"cut.{suffix}")


def test_truncated_tiff(tmp_path):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 16, 3), np.uint16))
    refused(buffer.getvalue()[:-100], "truncated image file")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my lab notes, not a picture\n" * 3)
    refused(path, "not an image", "cannot identify image file", "notes.png")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    refused(path, "empty file", "empty.png")


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.png", "no such file", "nope.png")
    refused(tmp_path, "no such file")
    with pytest.raises(ImageError, match="no such file"):
        read_image_bytes(tmp_path / "nope.png")


def test_declared_size_checked_before_decoding():
    refused(png_header_only(10_000, 6_000), "image too large", "10000x6000 pixels", "50,000,000", "DROPLET_MAX_PIXELS")
    # Far beyond Pillow's own limit: its DecompressionBombError becomes an ImageError too.
    refused(png_header_only(30_000, 30_000), "image too large", "900,000,000 pixels")


def test_max_pixels_argument_and_environment(tmp_path, monkeypatch):
    path = save_pil(tmp_path / "a.png", np.zeros((100, 100, 3), np.uint8))
    refused(path, "image too large", "100x100 pixels", "5,000", max_pixels=5_000)
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS
    monkeypatch.setenv("DROPLET_MAX_PIXELS", "9999")
    assert max_pixels_limit() == 9_999
    refused(path, "image too large", "9,999")
    assert load_image(path, max_pixels=10_000).shape == (100, 100, 3)
    monkeypatch.setenv("DROPLET_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="DROPLET_MAX_PIXELS must be a positive integer"):
        max_pixels_limit()


def test_nan_tiff(tmp_path):
    array = np.full((16, 16), 0.5, np.float32)
    array[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", array)
    refused(tmp_path / "nan.tif", "NaN", "nan.tif")


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
def test_tiny_and_empty_images(tmp_path):
    refused(save_pil(tmp_path / "tiny.png", np.zeros((5, 20, 3), np.uint8)), "image too small", "20x5", "8x8")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((0, 16), np.uint8))
    refused(tmp_path / "empty.tif", "empty")


def test_stack_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 16, 16, 3), np.uint8))
    refused(tmp_path / "stack.tif", "unsupported image layout", "(5, 16, 16, 3)")


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- crop, downscale, coordinates --------------------------------------------------


def test_crop():
    image = np.arange(10 * 12).reshape(10, 12)
    np.testing.assert_array_equal(crop(image, (2, 3, 5, 7)), image[3:7, 2:5])
    assert crop(image, (-5, -5, 100, 100)).shape == (10, 12)  # clipped to the image
    for box in [(5, 5, 5, 8), (20, 0, 30, 5), (4, 6, 2, 9)]:
        with pytest.raises(ImageError, match="leaves nothing"):
            crop(image, box)


def test_auto_downscale_factor():
    assert auto_downscale_factor(380, 507, 400_000) == 1
    assert auto_downscale_factor(1520, 2028, 400_000) == 3
    for height, width, target in [(1520, 2028, 200_000), (1000, 1000, 1), (17, 33, 40), (999, 1001, 250_000)]:
        k = auto_downscale_factor(height, width, target)
        assert (height // k) * (width // k) <= target
        assert k == 1 or (height // (k - 1)) * (width // (k - 1)) > target


def test_downscale_block_mean_and_trim():
    image = np.random.default_rng(0).uniform(size=(37, 66, 3)).astype(np.float32)
    small = downscale(image, 4)
    assert small.shape == (9, 16, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small[1, 2], image[4:8, 8:12].mean(axis=(0, 1)), rtol=1e-6)
    assert downscale(image, 1) is image
    assert downscale(image[..., 0], 2).shape == (18, 33)


def test_downscale_leaving_too_little():
    with pytest.raises(ImageError, match="downscale 500 leaves nothing of a 507x380 image"):
        downscale(np.zeros((380, 507, 3), np.float32), 500)


def test_coordinate_convention_and_round_trip():
    # Fit pixel 0 at factor 4 covers original pixels 0..3: its centre is 1.5.
    assert to_original_px(0.0, 4) == 1.5
    assert to_original_px(2.0, 3) == 7.0
    coords = np.array([0.0, 1.5, 17.25, 400.0])
    for factor in (1, 2, 3, 4):
        np.testing.assert_allclose(to_original_px(to_fit_px(coords, factor), factor), coords)
        np.testing.assert_allclose(to_fit_px(to_original_px(coords, factor), factor), coords)


def test_downscaled_blob_centre_maps_back():
    image = np.zeros((40, 40), np.float32)
    image[21:24, 9:12] = 1.0  # centre (x, y) = (10, 22) in original pixels
    small = downscale(image, 2)
    rows, cols = np.nonzero(small)
    weights = small[rows, cols]
    x_fit, y_fit = np.average(cols, weights=weights), np.average(rows, weights=weights)
    assert to_original_px(x_fit, 2) == pytest.approx(10.0, abs=0.6)
    assert to_original_px(y_fit, 2) == pytest.approx(22.0, abs=0.6)
