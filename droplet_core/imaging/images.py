"""Loading, cropping and downscaling images, with one coordinate convention throughout, and their pixel noise.

Every loader returns float32 RGB ``(h, w, 3)`` in [0, 1] or raises ``ImageError`` with a
one-line message a user can act on; no Pillow or tifffile exception escapes.

Coordinate convention (scikit-image / trackpy): ``x`` is the column, ``y`` the row, and
a pixel's centre sits at its integer index. Downscaling by an integer factor ``k``
averages complete ``k x k`` blocks, so fit pixel ``j`` covers original pixels
``k*j .. k*j + k - 1`` and its centre is original coordinate ``k*j + (k - 1) / 2``
(``to_original_px``; ``to_fit_px`` is the inverse).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from skimage.transform import downscale_local_mean

DEFAULT_MAX_PIXELS = 50_000_000
# File names of images Droplet reads (also inside zip archives).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MIN_SIDE_PX = 8

# Classic TIFF and BigTIFF, little- and big-endian: these go to tifffile, which reads
# 16-bit RGB and floating-point data that Pillow cannot.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageError(ValueError):
    """An image that cannot be used; the message is one line meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def max_pixels_limit() -> int:
    """The largest pixel count ``load_image`` accepts: ``DROPLET_MAX_PIXELS`` or the default.

    Read at call time so a deployment can change it without a code change. Pillow's own
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million pixels)
    still applies on top of it.
    """
    text = os.environ.get("DROPLET_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ImageError(f"DROPLET_MAX_PIXELS must be a positive integer, not {text!r}")
    return limit


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The raw bytes of the file at ``path``; ``ImageError`` if it is missing or unreadable."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ImageError(f"no such file: {name!r}")
    try:
        with open(name, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImageError(f"no such file: {name!r} cannot be read ({exc.strerror or exc})") from exc


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of ``data`` (the fit store's image key)."""
    return hashlib.sha256(data).hexdigest()


def load_image(source: bytes | str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into float RGB.

    Parameters
    ----------
    source : the file's bytes, or a path to it.
    max_pixels : largest accepted ``width * height``; ``None`` uses ``max_pixels_limit()``.
        The declared size is checked before any pixel is decoded.

    Returns
    -------
    float32 array ``(h, w, 3)`` in [0, 1]. Greyscale is replicated to three channels;
    transparency is composited over white (how viewers show it, and close to the light
    background of droplet images, so transparent margins do not read as droplets); EXIF
    orientation is applied. Integer data is scaled by its type's full range (16-bit
    65535 -> 1.0); floating-point data already inside [0, 1] is kept, otherwise it is
    stretched linearly from its minimum..maximum to [0, 1]. Pillow reduces 16-bit colour
    PNGs to 8 bits; 16-bit colour TIFFs keep their precision.

    Raises
    ------
    ImageError : not an image, empty, truncated, too large or too small, non-finite
        values, or a layout that is not a single 2-D greyscale or colour image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), ""
    else:
        data, label = read_image_bytes(source), f" {os.path.basename(os.fspath(source))!r}"
    if not data:
        raise ImageError(f"empty file{label}: no image data")
    limit = max_pixels_limit() if max_pixels is None else int(max_pixels)
    if data[:4] in _TIFF_MAGIC:
        array = _decode_tiff(data, label, limit)
    else:
        array = _decode_pillow(data, label, limit)
    return _to_rgb(array, label)


def _too_large(width: int, height: int, limit: int) -> ImageError:
    return ImageError(
        f"image too large: {width}x{height} pixels exceeds the limit of {limit:,} (set DROPLET_MAX_PIXELS)"
    )


def _check_size(width: int, height: int, label: str, limit: int) -> None:
    """Refuse a declared size before decoding: empty, too large, or too small to fit."""
    if width < 1 or height < 1:
        raise ImageError(f"empty image{label}: {width}x{height} pixels")
    if width * height > limit:
        raise _too_large(width, height, limit)
    if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
        raise ImageError(f"image too small{label}: {width}x{height} pixels; need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}")


def _decode_failure(exc: Exception, label: str) -> ImageError:
    """Translate whatever a decoder raised into one user-facing line."""
    text = " ".join(str(exc).split())
    # Pillow says "truncated"; tifffile "failed to read N bytes, got M".
    if "truncated" in text.lower() or "failed to read" in text or isinstance(exc, EOFError):
        return ImageError(f"truncated image file{label}: the data ends early")
    return ImageError(f"corrupt image file{label}: {text or type(exc).__name__}")


def _decode_pillow(data: bytes, label: str, limit: int) -> np.ndarray:
    """Decode with Pillow: ``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)`` (alpha last)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (then refuses at twice the size) about decompression bombs;
            # both become ImageError here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(match.group(1)):,} pixels" if match else "the declared size"
        raise ImageError(
            f"image too large: {pixels} exceeds Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image: cannot identify image file{label}") from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise _decode_failure(exc, label) from exc
    with image:
        width, height = image.size
        _check_size(width, height, label, limit)
        try:
            return _pillow_array(ImageOps.exif_transpose(image))
        except Exception as exc:  # truncated or corrupt pixel data surfaces only here
            raise _decode_failure(exc, label) from exc


def _pillow_array(image: Image.Image) -> np.ndarray:
    """Pixel values of a decoded Pillow image, scaled to [0, 1] except for float modes."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # Pillow opens 16-bit greyscale PNG/PGM as 32-bit "I"; use the 16-bit range when it fits.
        return values / (65535.0 if values.max(initial=0) <= 65535 else 2.0**31 - 1)
    if mode == "F":
        return np.asarray(image, dtype=np.float64)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if mode in ("1", "L") and not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    converted = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(converted, dtype=np.float64) / 255.0


def _decode_tiff(data: bytes, label: str, limit: int) -> np.ndarray:
    """Decode a TIFF with tifffile (first image series); Pillow for codecs tifffile lacks."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            series = tiff.series[0]
            dims, planar = _tiff_layout(series.shape, tiff.pages[0].samplesperpixel, label)
            height, width = dims[1:3] if planar else dims[:2]
            _check_size(width, height, label, limit)
            values = series.asarray().reshape(dims)
    except ImageError:
        raise
    except ValueError as exc:
        if "imagecodecs" in str(exc):  # e.g. LZW without the optional imagecodecs package
            return _decode_pillow(data, label, limit)
        raise _decode_failure(exc, label) from exc
    except Exception as exc:  # tifffile's own errors, struct/EOF on short files
        raise _decode_failure(exc, label) from exc
    if planar:
        values = np.moveaxis(values, 0, -1)
    if np.issubdtype(values.dtype, np.integer):
        # Full positive range -> 1.0; negatives of signed data are then stretched by _to_rgb.
        return values.astype(np.float64) / float(np.iinfo(values.dtype).max)
    return values.astype(np.float64)


def _tiff_layout(shape: tuple[int, ...], samples: int, label: str) -> tuple[tuple[int, ...], bool]:
    """Shape ``(h, w)``, ``(h, w, s)`` or planar ``(s, h, w)`` of a series, and whether planar.

    ``samples`` is the samples per pixel of the first page: it tells planar colour from a
    stack of three or four greyscale pages. Leading singleton axes are dropped; stacks,
    volumes and other layouts are refused.
    """
    dims = tuple(int(n) for n in shape)
    while len(dims) > 2 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 2 or (len(dims) == 3 and dims[-1] in (2, 3, 4)):
        return dims, False
    if len(dims) == 3 and dims[0] == samples and samples in (3, 4):
        return dims, True
    raise ImageError(
        f"unsupported image layout{label}: array of shape {tuple(shape)}; "
        "expected one greyscale or colour image (h, w), (h, w, 3) or (h, w, 4)"
    )


def _to_rgb(values: np.ndarray, label: str) -> np.ndarray:
    """``(h, w)`` or ``(h, w, 2..4)`` values (alpha last) -> float32 RGB ``(h, w, 3)`` in [0, 1]."""
    if not np.isfinite(values).all():
        raise ImageError(f"invalid pixel values{label}: the image contains NaN or infinite values")
    low, high = values.min(), values.max()
    if low < 0.0 or high > 1.0:
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[-1] in (2, 4):  # alpha last: composite over white
        alpha = values[..., -1:]
        values = values[..., :-1] * alpha + (1.0 - alpha)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(np.clip(values, 0.0, 1.0), dtype=np.float32)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The region ``box = (x0, y0, x1, y1)`` of ``image`` ``(h, w, ...)``.

    ``x`` is the column, ``y`` the row, ends exclusive; the box is clipped to the image.
    ``ImageError`` if nothing of the image is left.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    height, width = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ImageError(f"crop box {(x0, y0, x1, y1)} leaves nothing of a {width}x{height} image")
    return image[cy0:cy1, cx0:cx1]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] ``(h, w)`` or ``(h, w, c)`` as 8-bit values (rounded, clipped);
    a single channel ``(h, w, 1)`` becomes ``(h, w)``."""
    array = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array


def encode_png(image_uint8: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of a uint8 ``(h, w, 3)`` or ``(h, w)`` image (``to_uint8`` makes one of a float image).

    ``compress_level`` 0-9 (zlib): 6 is Pillow's default (the bytes, hence their sha256,
    stay as they were); 1 encodes about four times faster for about 12 % more bytes.
    """
    image_uint8 = np.asarray(image_uint8)
    if image_uint8.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, not {image_uint8.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image_uint8).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def crop_origin(box: tuple[int, int, int, int]) -> tuple[int, int]:
    """``(x0, y0)`` of ``crop(image, box)`` in pixels of ``image`` (the box clipped to the image)."""
    return max(int(box[0]), 0), max(int(box[1]), 0)


def auto_downscale_factor(height: int, width: int, target_pixels: int) -> int:
    """Smallest integer ``k >= 1`` with ``(height // k) * (width // k) <= target_pixels``."""
    if target_pixels < 1:
        raise ValueError("target_pixels must be at least 1")
    k = max(1, int(np.floor(np.sqrt(height * width / target_pixels))))
    # The square-root estimate ignores the floor divisions; step up to the exact answer.
    while (height // k) * (width // k) > target_pixels:
        k += 1
    while k > 1 and (height // (k - 1)) * (width // (k - 1)) <= target_pixels:
        k -= 1
    return k


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over complete ``factor x factor`` blocks of ``image`` ``(h, w, c)`` or ``(h, w)``.

    The remainder rows/columns (``h % factor``, ``w % factor``) at the bottom/right are
    dropped, so fit pixel ``j`` covers original pixels ``factor*j .. factor*j + factor - 1``
    (see ``to_original_px``). ``factor == 1`` returns ``image`` itself.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError("downscale factor must be at least 1")
    if factor == 1:
        return image
    height, width = image.shape[:2]
    new_h, new_w = height // factor, width // factor
    if new_h < MIN_SIDE_PX or new_w < MIN_SIDE_PX:
        raise ImageError(
            f"downscale {factor} leaves nothing of a {width}x{height} image "
            f"(needs at least {MIN_SIDE_PX}x{MIN_SIDE_PX} pixels after downscaling)"
        )
    trimmed = image[: new_h * factor, : new_w * factor]
    block = (factor, factor) + (1,) * (image.ndim - 2)
    return downscale_local_mean(trimmed, block).astype(image.dtype, copy=False)


def to_original_px(coord_fit, factor: int):
    """Fit-pixel position (x or y; float, NumPy or JAX array) -> position before ``downscale(factor)``.

    Lengths such as radii scale by ``factor`` alone; this offset is for positions.
    """
    return factor * coord_fit + (factor - 1) / 2.0


def to_fit_px(coord, factor: int):
    """Inverse of ``to_original_px``: original position -> fit-pixel position."""
    return (coord - (factor - 1) / 2.0) / factor


def archive_image_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The image files of a zip archive (``IMAGE_SUFFIXES``), without folders, hidden files and
    macOS resource forks, in the archive's order."""
    return [
        info
        for info in archive.infolist()
        if not info.is_dir()
        and info.filename.lower().endswith(IMAGE_SUFFIXES)
        and not any(part.startswith((".", "__MACOSX")) for part in info.filename.split("/"))
    ]


# Immerkaer's noise filter: the difference of two Laplacians, which cancels any locally
# linear image; its L2 norm is 6, so a white-noise image of sd s gives a response of sd 6 s.
_NOISE_FILTER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sd_estimate(image: np.ndarray) -> float:
    """Pixel noise sd of an ``(h, w, c)`` image, averaged over channels.

    Immerkaer's filter with a robust (median) spread instead of the mean absolute value,
    so droplet edges, which the filter does not cancel, barely move the estimate.
    """
    sds = []
    for c in range(image.shape[2]):
        response = ndimage.convolve(image[:, :, c], _NOISE_FILTER, mode="reflect")[1:-1, 1:-1]
        sds.append(1.4826 * float(np.median(np.abs(response))) / 6.0)
    return max(float(np.mean(sds)), 1e-6)
