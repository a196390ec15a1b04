"""A fit's judgement of itself: did the model explain the image, or only part of it?

A fit always ends with droplets, a count and a small RMSE, whether or not it found the
droplets a person sees. What gives a failed fit away is the residual: where the model did
not explain the image, the residual keeps the image's own structure (unexplained droplets
show as rings and disks). So the verdict compares the residual with the image at the
scale of droplets, relative to the image's noise:

- ``explained_fraction``: 1 minus the residual's band-pass power above the noise over the
  observed image's band-pass power above the noise (the image's own contrast at droplet
  scale). Band-pass: a Gaussian high-pass at twice the largest droplet radius the model
  can draw, so slow uneven illumination does not count as structure.
- ``residual_spots``: droplet-shaped blobs left in the residual apart from the droplets
  found (droplets missed), found as local maxima of the scale-normalised Laplacian of
  Gaussian over the model's radius range whose response is several times what the noise
  gives and at least half as strong as a typical droplet of the image itself. Blobs inside
  or on the edge of a droplet found (``spots_on_droplets``) are its look drawn only in part:
  inclusions, a rim shaded to one side. Where the fit explains most of the image they make
  it partial, never failed: on synthetic brightfield and phase-contrast scenes fitted with F1
  0.97-0.995 they were most of the blobs, and counted as droplets missed they failed or
  flagged those fits.
- the share of droplets at the model's radius limits (the droplets are bigger or smaller
  than the model can draw) and the share that probably do not exist (``p_exists`` < 0.5).

Everything is computed at fit resolution from arrays; nothing here knows about the app.
The Gaussian filters (the high-pass and a dozen LoG scales) are applied as products of the
image's DCT-II coefficients: with the "reflect" border of ``scipy.ndimage`` a symmetric
filter is exactly such a product (symmetric convolution), so the figures are
``scipy.ndimage``'s to rounding, at about a tenth of the time (a time-lapse judges every frame).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft, ndimage
from skimage.feature import peak_local_max

from droplet_core.detection.log_candidates import apart_from_droplets
from droplet_core.imaging.images import noise_sd_estimate
from droplet_core.measurements.counting import DOUBTFUL_BELOW

# A fit explains the image when at least this share of the image's droplet-scale
# structure (above noise) is gone from the residual; below the second figure it failed.
MIN_EXPLAINED = 0.75
MIN_EXPLAINED_PARTLY = 0.4
# An image whose droplet-scale power is below this multiple of its noise power holds no
# structure for a model to explain (a blank or pure-noise channel).
MIN_STRUCTURE_TO_NOISE = 0.5
# Residual blobs: response at least this many noise sds ...
SPOT_NOISE_SDS = 6.0
# ... and at least this fraction of the image's typical droplet response.
SPOT_FRACTION_OF_DROPLET = 0.5
# Residual spots per fitted droplet (and in absolute number) above which the residual is
# said to hold droplets the model missed or drew wrongly.
MAX_SPOTS_PER_DROPLET = 0.25
MIN_SPOTS_FLAGGED = 5
# Residual spots this large (fraction of the largest radius drawn) mean droplets too big
# for the model at the fit's resolution.
LARGE_SPOT_FRACTION = 0.7
# A droplet is "at a radius limit" within this relative distance of it.
LIMIT_TOLERANCE = 0.05
MAX_AT_LIMIT_FRACTION = 0.25
MAX_DOUBTFUL_FRACTION = 0.3
# Scales of the residual blob search per doubling of the radius.
SCALES_PER_OCTAVE = 2


@dataclass(frozen=True)
class FitVerdict:
    """What a fit says about itself (all figures at fit resolution).

    Attributes
    ----------
    explained_fraction : share (0..1) of the image's droplet-scale structure above noise
        that the model explains.
    structure_to_noise : the image's droplet-scale power over its noise power.
    residual_spots : droplet-shaped blobs left in the residual apart from the droplets found.
    at_radius_limit_fraction : share of droplets at the smallest or largest radius the
        model can draw.
    doubtful_fraction : share of droplets with ``p_exists`` below 0.5.
    relative_rmse : reconstruction RMSE over the image's contrast (sd of the observed
        channel(s) at droplet scale).
    spots_on_droplets : droplet-shaped blobs left in the residual inside or on the edge of
        a droplet found (``log_candidates.apart_from_droplets``).
    quality : ``"good"`` (no problem found), ``"partial"`` (the model draws the droplets
        but not all of their look, or leaves some out) or ``"failed"`` (the fit did not
        explain the image: a blank channel, or less than ``MIN_EXPLAINED_PARTLY`` of it).
    problems : plain sentences, one per problem found; empty for a good fit.
    advice : what to try, one sentence each.
    """

    explained_fraction: float
    structure_to_noise: float
    residual_spots: int
    at_radius_limit_fraction: float
    doubtful_fraction: float
    relative_rmse: float
    quality: str
    problems: tuple[str, ...]
    advice: tuple[str, ...]
    spots_on_droplets: int = 0

    @property
    def ok(self) -> bool:
        return self.quality == "good"

    @property
    def headline(self) -> str:
        """One sentence for the top of a page."""
        if self.quality == "good":
            return (
                f"The fit explains the image: {self.explained_fraction:.0%} of its droplet-scale "
                "structure is accounted for."
            )
        if self.quality == "partial":
            return f"The fit explains the image only in part: {self.problems[0]}"
        return f"This fit did not explain the image: {self.problems[0]}"

    def to_dict(self) -> dict:
        record = asdict(self)
        record["ok"] = self.ok
        record["problems"], record["advice"] = list(self.problems), list(self.advice)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> FitVerdict:
        return cls(
            explained_fraction=float(record["explained_fraction"]),
            structure_to_noise=float(record["structure_to_noise"]),
            residual_spots=int(record["residual_spots"]),
            at_radius_limit_fraction=float(record["at_radius_limit_fraction"]),
            doubtful_fraction=float(record["doubtful_fraction"]),
            relative_rmse=float(record["relative_rmse"]),
            quality=str(record["quality"]),
            problems=tuple(record["problems"]),
            advice=tuple(record["advice"]),
            spots_on_droplets=int(record.get("spots_on_droplets", 0)),
        )


def judge_fit(
    observed: np.ndarray,
    reconstruction: np.ndarray,
    centres_fit_px: np.ndarray,
    radius_fit_px: np.ndarray,
    p_exists: np.ndarray | None,
    radius_limits_px: tuple[float, float],
) -> FitVerdict:
    """Judge a fit from its arrays.

    Parameters
    ----------
    observed, reconstruction : ``(h, w, c)`` the fitted channel(s) and the model's
        rendering, at fit resolution.
    centres_fit_px : ``(n, 2)`` droplet centres (x, y) in pixels of the fit resolution.
    radius_fit_px : ``(n,)`` droplet radii in pixels of the fit resolution.
    p_exists : ``(n,)`` each droplet's probability of existing, or None when the fit has none.
    radius_limits_px : smallest and largest radius the model can draw (fit px).

    Returns
    -------
    FitVerdict
    """
    min_radius_px, max_radius_px = float(radius_limits_px[0]), float(radius_limits_px[1])
    seen = _observed_side(observed, min_radius_px, max_radius_px)
    noise_sd, observed_power = seen.noise_sd, seen.band_power
    residual = np.asarray(observed, np.float64) - np.asarray(reconstruction, np.float64)
    height, width = residual.shape[:2]
    residual_band_spectrum = _spectrum(residual) * _high_pass(height, width, 2.0 * max_radius_px)[:, :, None]
    residual_band = _image(residual_band_spectrum)
    noise_power = noise_sd**2
    residual_power = float(np.mean(residual_band**2))
    structure_power = observed_power - noise_power
    structure_to_noise = max(structure_power, 0.0) / noise_power
    if structure_power > 0:
        explained = float(np.clip(1.0 - max(residual_power - noise_power, 0.0) / structure_power, 0.0, 1.0))
    else:
        explained = 0.0
    relative_rmse = float(np.sqrt(np.mean(residual**2)) / max(np.sqrt(observed_power), 1e-6))

    spot_xy, spot_radii = _residual_spots(
        seen.spot_threshold, residual_band_spectrum, noise_sd, min_radius_px, max_radius_px
    )
    radius = np.asarray(radius_fit_px, np.float64)
    count = radius.size
    found = np.asarray(p_exists) >= DOUBTFUL_BELOW if p_exists is not None else np.ones(count, dtype=bool)
    missed = apart_from_droplets(
        np.asarray(centres_fit_px, np.float64).reshape(-1, 2)[found], radius[found], spot_xy, spot_radii
    )
    spots, spots_on_droplets = int(missed.sum()), int((~missed).sum())
    spot_radius = float(np.median(spot_radii)) if spot_radii.size else 0.0
    at_limit = (
        float(
            np.mean(
                (radius <= min_radius_px * (1 + LIMIT_TOLERANCE)) | (radius >= max_radius_px * (1 - LIMIT_TOLERANCE))
            )
        )
        if count
        else 0.0
    )
    doubtful = float(np.mean(np.asarray(p_exists) < DOUBTFUL_BELOW)) if p_exists is not None and count else 0.0
    at_large_limit = float(np.mean(radius >= max_radius_px * (1 - LIMIT_TOLERANCE))) if count else 0.0

    problems: list[str] = []
    advice: list[str] = []
    if structure_to_noise < MIN_STRUCTURE_TO_NOISE:
        problems.append("this channel shows hardly anything but noise at the size of droplets.")
        advice.append("Pick a channel where the droplets stand out on the Image page.")
    else:
        if explained < MIN_EXPLAINED:
            problems.append(
                f"only {explained:.0%} of the image's droplet-scale structure is explained "
                "(the residual still shows it)."
            )
        flagged_from = max(MIN_SPOTS_FLAGGED, MAX_SPOTS_PER_DROPLET * count)
        if spots >= flagged_from:
            problems.append(f"the residual holds {spots} droplet-shaped spots the model did not draw.")
        if spots_on_droplets >= flagged_from:
            problems.append(
                f"the residual holds {spots_on_droplets} droplet-shaped spots on the droplets found: "
                "their look is drawn only in part."
            )
        if max(spots, spots_on_droplets) >= flagged_from and spot_radius >= LARGE_SPOT_FRACTION * max_radius_px:
            advice.append(
                "What the model missed is as large as the largest droplet it can draw at this "
                "resolution: increase the downscale."
            )
    if count and at_limit > MAX_AT_LIMIT_FRACTION:
        problems.append(f"{at_limit:.0%} of the droplets sit at the smallest or largest size the model can draw.")
        if at_large_limit > at_limit / 2:
            advice.append("The droplets look larger than the model can draw: increase the downscale.")
        else:
            advice.append("The droplets look smaller than the model can draw: use a smaller downscale.")
    if count and doubtful > MAX_DOUBTFUL_FRACTION:
        problems.append(f"{doubtful:.0%} of the droplets found probably do not exist.")
    blank = structure_to_noise < MIN_STRUCTURE_TO_NOISE
    # A texture taken for droplets leaves about as many droplet-shaped spots as it draws likely
    # droplets, or many spots and much of its structure unexplained. Its spots lie on the
    # "droplets" fitted to it, so where much of the structure is unexplained the spots on the
    # droplets found count too (a texture of blobs of 2 px: 48 of its 55 spots).
    likely = count * (1.0 - doubtful)
    unexplained_spots = spots + (spots_on_droplets if explained < MIN_EXPLAINED else 0)
    spotted = unexplained_spots >= max(MIN_SPOTS_FLAGGED, 2 * MAX_SPOTS_PER_DROPLET * likely) or (
        explained < MIN_EXPLAINED and unexplained_spots >= max(MIN_SPOTS_FLAGGED, MAX_SPOTS_PER_DROPLET * likely)
    )
    failed = blank or explained < MIN_EXPLAINED_PARTLY or doubtful > 2 * MAX_DOUBTFUL_FRACTION or spotted
    quality = "failed" if failed else ("partial" if problems else "good")
    if problems and len(advice) < 2:
        advice.append("Try another channel, another model or another downscale, and compare the residual.")
    return FitVerdict(
        explained_fraction=round(explained, 4),
        structure_to_noise=round(structure_to_noise, 3),
        residual_spots=spots,
        at_radius_limit_fraction=round(at_limit, 4),
        doubtful_fraction=round(doubtful, 4),
        relative_rmse=round(relative_rmse, 4),
        quality=quality,
        problems=tuple(problems),
        advice=tuple(dict.fromkeys(advice)),
        spots_on_droplets=spots_on_droplets,
    )


def _spectrum(image: np.ndarray) -> np.ndarray:
    """``(h, w, c)`` DCT-II coefficients of each channel of an ``(h, w, c)`` image."""
    return fft.dctn(image, type=2, axes=(0, 1))


def _image(spectrum: np.ndarray) -> np.ndarray:
    """The ``(h, w, c)`` image whose ``_spectrum`` is ``spectrum``."""
    return fft.idctn(spectrum, type=2, axes=(0, 1))


@functools.lru_cache(maxsize=256)
def _axis_transfer(n: int, sigma_px: float, order: int) -> np.ndarray:
    """``(n,)`` the factor by which ``ndimage.gaussian_filter1d(signal, sigma_px, order=order,
    mode="reflect")`` multiplies each DCT-II coefficient of a length-``n`` signal.

    The reflect border extends the signal symmetrically with period ``2 n``; filtering with
    the (truncated, symmetric) kernel ``w`` is then a circular convolution, multiplying
    coefficient ``k`` by ``sum_j w[j] cos(pi k j / n)``.
    """
    reach = int(4.0 * sigma_px + 0.5)  # ndimage's kernel radius (truncate=4)
    impulse = np.zeros(2 * reach + 1)
    impulse[reach] = 1.0
    weights = ndimage.gaussian_filter1d(impulse, sigma_px, order=order, mode="constant")
    offsets = np.arange(-reach, reach + 1)
    return np.cos(np.pi * np.outer(np.arange(n), offsets) / n) @ weights


def _transfer(height: int, width: int, sigma_px: float, orders: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` the factor of each DCT-II coefficient for ``ndimage.gaussian_filter(image,
    sigma_px, order=orders, mode="reflect")``."""
    return np.outer(_axis_transfer(height, sigma_px, orders[0]), _axis_transfer(width, sigma_px, orders[1]))


# The transfer factors of one image size are kept (a verdict takes 14): the frames of a stack,
# fitted one after the other, are all the same size. Only for fitted images up to this many
# pixels (14 factors of 8 MB at 1024x1024), so that an app server does not keep gigabytes.
CACHED_TRANSFER_MAX_PIXELS = 1024 * 1024


def _high_pass(height: int, width: int, sigma_px: float) -> np.ndarray:
    """``(h, w)`` the factor of each DCT-II coefficient for the image less its Gaussian blur (read-only)."""
    return _kept(_high_pass_factors, height, width, sigma_px)


def _laplacian(height: int, width: int, sigma_px: float) -> np.ndarray:
    """``(h, w)`` the factor of each DCT-II coefficient for the Laplacian of Gaussian (read-only)."""
    return _kept(_laplacian_factors, height, width, sigma_px)


def _high_pass_factors(height: int, width: int, sigma_px: float) -> np.ndarray:
    return 1.0 - _transfer(height, width, sigma_px, (0, 0))


def _laplacian_factors(height: int, width: int, sigma_px: float) -> np.ndarray:
    return _transfer(height, width, sigma_px, (2, 0)) + _transfer(height, width, sigma_px, (0, 2))


def _kept(factors, height: int, width: int, sigma_px: float) -> np.ndarray:
    """``factors(height, width, sigma_px)``, read-only, from the cache for images up to
    ``CACHED_TRANSFER_MAX_PIXELS``."""
    if height * width <= CACHED_TRANSFER_MAX_PIXELS:
        return _cached_factors(factors, height, width, sigma_px)
    return _read_only(factors(height, width, sigma_px))


@functools.lru_cache(maxsize=14)
def _cached_factors(factors, height: int, width: int, sigma_px: float) -> np.ndarray:
    return _read_only(factors(height, width, sigma_px))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class _ObservedSide(NamedTuple):
    """What a verdict takes from the observed ``(h, w, c)`` image alone: its noise sd, its band's
    (the high-pass's) power, and the least LoG response of a residual spot (None where the
    image shows no droplet-scale blob, so the residual has no spots)."""

    noise_sd: float
    band_power: float
    spot_threshold: float | None


# The observed sides of the last few images judged or readied (``ready_verdict``), by content:
# a time-lapse readies each frame's in the thread that takes its look while the frame before
# is fitted, and its verdict then only looks at the residual.
KEPT_OBSERVED_SIDES = 4
_observed_sides: OrderedDict = OrderedDict()
_observed_sides_lock = threading.Lock()


def ready_verdict(observed: np.ndarray, radius_limits_px: tuple[float, float]) -> None:
    """Work out ahead what ``judge_fit`` of ``observed`` with ``radius_limits_px`` takes from the
    observed image alone, so that a later ``judge_fit`` of the same image skips it (thread-safe)."""
    _observed_side(observed, float(radius_limits_px[0]), float(radius_limits_px[1]))


def _observed_side(observed: np.ndarray, min_radius_px: float, max_radius_px: float) -> _ObservedSide:
    """``_ObservedSide`` of ``observed`` ``(h, w, c)``, kept for ``KEPT_OBSERVED_SIDES`` images."""
    observed = np.ascontiguousarray(observed)
    key = (
        hashlib.blake2b(observed.view(np.uint8), digest_size=16).hexdigest(),
        observed.shape,
        observed.dtype.str,
        min_radius_px,
        max_radius_px,
    )
    with _observed_sides_lock:
        if key in _observed_sides:
            _observed_sides.move_to_end(key)
            return _observed_sides[key]
    observed = np.asarray(observed, np.float64)
    height, width = observed.shape[:2]
    noise_sd = noise_sd_estimate(observed)
    band_spectrum = _spectrum(observed) * _high_pass(height, width, 2.0 * max_radius_px)[:, :, None]
    seen = _ObservedSide(
        noise_sd,
        float(np.mean(_image(band_spectrum) ** 2)),
        _spot_threshold(band_spectrum, noise_sd, min_radius_px, max_radius_px),
    )
    with _observed_sides_lock:
        _observed_sides[key] = seen
        while len(_observed_sides) > KEPT_OBSERVED_SIDES:
            _observed_sides.popitem(last=False)
    return seen


def _spot_radii(min_radius_px: float, max_radius_px: float) -> np.ndarray:
    """The LoG scales' radii (fit px) at which spots are looked for."""
    octaves = np.log2(max(max_radius_px / max(min_radius_px, 1.0), 1.0))
    return np.geomspace(max(min_radius_px, 1.0), max_radius_px, max(int(np.ceil(octaves * SCALES_PER_OCTAVE)) + 1, 2))


def _best_log_response(band_spectrum: np.ndarray, noise_sd: float, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(h, w)`` the strongest |LoG| response over the scales of ``radii`` of the band given as its
    ``_spectrum``, in noise sds of that scale, and the index of the scale that gave it."""
    height, width, channels = band_spectrum.shape
    best = np.zeros((height, width))
    scale = np.zeros((height, width), int)
    for index, radius in enumerate(radii):
        sigma = radius / np.sqrt(2.0)
        noise_response = noise_sd * _log_kernel_norm(sigma) * np.sqrt(channels)
        response = _log_magnitude(band_spectrum, _laplacian(height, width, sigma), sigma) / noise_response
        scale[response > best] = index
        best = np.maximum(best, response)
    return best, scale


def _spot_threshold(
    observed_band_spectrum: np.ndarray, noise_sd: float, min_radius_px: float, max_radius_px: float
) -> float | None:
    """The least LoG response (noise sds) of a residual spot: ``SPOT_NOISE_SDS``, or a fraction
    of the image's typical droplet response where that is more; None where the observed band
    (given as its ``_spectrum``) has no droplet-scale blob."""
    observed_best, _ = _best_log_response(observed_band_spectrum, noise_sd, _spot_radii(min_radius_px, max_radius_px))
    observed_peaks = peak_local_max(
        observed_best, min_distance=max(int(min_radius_px), 1), threshold_abs=SPOT_NOISE_SDS, exclude_border=False
    )
    if len(observed_peaks) == 0:
        return None
    typical = float(np.median(observed_best[tuple(observed_peaks.T)]))
    return max(SPOT_NOISE_SDS, SPOT_FRACTION_OF_DROPLET * typical)


def _residual_spots(
    threshold: float | None,
    residual_band_spectrum: np.ndarray,
    noise_sd: float,
    min_radius_px: float,
    max_radius_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Strong droplet-shaped blobs of the residual (see the module docstring), at least
    ``threshold`` (``_spot_threshold``; None: none) strong: their centres ``(k, 2)`` (x, y) and
    radii ``(k,)`` (fit px, the best LoG scale). The band is given as its ``_spectrum``."""
    if threshold is None:
        return np.zeros((0, 2)), np.zeros(0)
    radii = _spot_radii(min_radius_px, max_radius_px)
    residual_best, residual_scale = _best_log_response(residual_band_spectrum, noise_sd, radii)
    spots = peak_local_max(
        residual_best, min_distance=max(int(min_radius_px), 1), threshold_abs=threshold, exclude_border=False
    )
    return spots[:, ::-1].astype(np.float64), radii[residual_scale[tuple(spots.T)]]


def _log_magnitude(band_spectrum: np.ndarray, laplacian: np.ndarray, sigma: float) -> np.ndarray:
    """``(h, w)`` |scale-normalised LoG| of each channel, combined over channels: the band is
    given as its ``_spectrum``, the LoG of scale ``sigma`` as its ``(h, w)`` ``laplacian`` factor."""
    responses = sigma**2 * _image(band_spectrum * laplacian[:, :, None])
    return np.sqrt(np.sum(np.square(responses), axis=2))


@functools.lru_cache(maxsize=64)
def _log_kernel_norm(sigma: float) -> float:
    """L2 norm of the scale-normalised LoG filter: its response sd to unit white noise."""
    reach = int(4 * sigma) + 2
    impulse = np.zeros((2 * reach + 1, 2 * reach + 1))
    impulse[reach, reach] = 1.0
    return float(np.sqrt(np.sum((sigma**2 * ndimage.gaussian_laplace(impulse, sigma)) ** 2)))
