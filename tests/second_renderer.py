"""A second scene renderer, written independently of ``droplet_core.synthetic.scenes``, to judge Droplet.

For tests and benchmarks only (``droplet_core`` never imports it). Each family draws the
droplet's look from its own physical model rather than from the generator that the fits
and the encoder were tuned on, so position bias, radius and calibration are judged by an
image formation Droplet never saw:

- ``seedlike``: coloured droplets as absorbing spherical caps on a slide in transmitted
  light. Beer-Lambert absorption through the cap's thickness, light lost where the cap's
  surface refracts it out of the objective (a dark rim; total internal reflection at
  steep edges), the light the cap focuses onto the image plane; radially symmetric.
  Small (radius 1-9 px), about 2000 in 500x400, RGB, JPEG.
- ``fluorescence``: dye-filled spheres in a confocal section: the emission collected
  along each chord through the sphere within the focal slab (nearly uniform disks),
  lateral blur, droplets off the focal plane smaller, dimmer and blurred (truth
  ``in_focus`` False); photon (Poisson) noise, camera gain, offset and read noise;
  16-bit.
- ``brightfield``: transparent spheres in transmitted light: each ray's deflection by
  the sphere (exact refraction, entry and exit) against the condenser and objective
  cones, with the condenser slightly oblique, gives thick dark rims shaded to one side
  and a bright centre; inclusions inside large droplets; some air bubbles (truth
  ``bubble``), whose rim is black from total internal reflection.
- ``phase``: droplets squeezed in a thin chamber (pancakes: sphere thickness capped by
  the gap) seen in Zernike phase contrast, with the phase ring's finite width computed
  as a low-pass of the field (halo and shade-off), or in DIC (``contrast="dic"``: the
  sheared interference of the field, relief shading).
- ``packed``: a packed emulsion in transmitted light: polydisperse droplets grown until
  they press on their neighbours, each drawn only inside its power-diagram cell
  (flattened contacts), with the refraction rim, a thin dark film along each contact
  and a specular spot of the lamp towards the light.

Truth is a DataFrame: ``x`` (column), ``y`` (row), ``radius`` (the physical edge: the
circle of the droplet's outline), px, pixel centre = integer index; ``in_focus`` and
``bubble`` (bool). Images: float RGB ``(h, w, 3)`` in [0, 1] quantised to 8-bit levels
(``seedlike`` after a JPEG round trip), or ``uint16`` ``(h, w)`` for ``fluorescence``;
``encode`` turns either into file bytes for ``droplet_core.imaging.images.load_image``.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage
from scipy.special import erf

FAMILIES = ("seedlike", "fluorescence", "brightfield", "phase", "packed")
DENSITIES = ("sparse", "crowded", "packed")

# Fraction of the image area the droplets of each density aim to cover, and the least
# distance between two centres as a multiple of the sum of their radii (below 1: the
# droplets press into each other, which only the ``packed`` family draws).
AREA_FRACTION = {"sparse": 0.12, "crowded": 0.4, "packed": 0.75}
SPACING = {"sparse": 1.25, "crowded": 1.0, "packed": 1.0}
PRESSED_SPACING = 0.93
CANDIDATES_PER_TRY = 64
TRIES = 12


@dataclass(frozen=True)
class SceneSize:
    """Image size, droplet sizes and crowding.

    Attributes
    ----------
    width_px, height_px : image size.
    radius_min_px, radius_max_px : radius range (px).
    radius_median_px : median of a lognormal radius distribution truncated to the range
        (``radius_log_sd`` its log sd); ``None`` for log-uniform radii over the range
        (polydisperse: as many droplets per octave of size).
    density : one of ``DENSITIES``.
    n_droplets : droplets drawn; ``None`` draws until they would cover the density's
        ``AREA_FRACTION``. Those that find no free place are left out.
    """

    width_px: int = 512
    height_px: int = 512
    radius_min_px: float = 5.0
    radius_max_px: float = 45.0
    radius_median_px: float | None = None
    radius_log_sd: float = 0.5
    density: str = "crowded"
    n_droplets: int | None = None


@dataclass(frozen=True)
class SeedlikeOptics:
    """Absorbing spherical caps in transmitted light; angles in radians.

    Attributes
    ----------
    background_rgb : slide brightness per channel.
    illumination_variation : relative amplitude of smooth uneven illumination.
    contact_angle_range : caps' contact angles, uniform in this range.
    dye_absorbance_per_px : absorbance (natural log) per px of liquid, one RGB row per dye.
    dye_concentration : Dirichlet parameters of each droplet's mix of dyes.
    refractive_index : of the liquid (air above it).
    condenser_angle, objective_angle : half-angles of the illumination and acceptance cones.
    focus_gain : extra brightness at the centre of a cap, from the light it focuses onto
        an image plane just above it (a plano-convex lens; centred, so the look stays
        symmetric), growing with size as ``1 - exp(-(r / 3 px)^2)``.
    blur_sigma_px, noise_sd, jpeg_quality : camera.
    """

    background_rgb: tuple[float, float, float] = (0.92, 0.89, 0.82)
    illumination_variation: float = 0.08
    contact_angle_range: tuple[float, float] = (0.5, 1.0)
    dye_absorbance_per_px: tuple[tuple[float, float, float], ...] = (
        (0.7, 0.25, 0.06),
        (0.08, 0.55, 0.4),
        (0.05, 0.13, 0.7),
    )
    dye_concentration: tuple[float, ...] = (0.6, 0.6, 0.6)
    refractive_index: float = 1.45
    condenser_angle: float = 0.15
    objective_angle: float = 0.35
    focus_gain: float = 0.35
    blur_sigma_px: float = 0.6
    noise_sd: float = 0.012
    jpeg_quality: int = 88


@dataclass(frozen=True)
class FluorescenceOptics:
    """Dye-filled spheres in a confocal section, recorded by a photon-counting camera.

    Attributes
    ----------
    focal_slab_sd_px : sd of the axial collection profile (Gaussian), px.
    lateral_psf_sd_px : in-focus lateral blur (Gaussian sd), px.
    defocus_blur_per_px : lateral blur sd per px of distance from the focal plane.
    out_of_focus_fraction : share of droplets whose centre lies off the focal plane,
        by 0.4-0.9 of their radius.
    brightness_photons : range of a droplet's peak photons per pixel.
    background_photons : photons per pixel from the medium.
    illumination_variation : relative amplitude of smooth uneven excitation.
    gain_adu_per_photon, offset_adu, read_noise_adu : camera.
    """

    focal_slab_sd_px: float = 1.5
    lateral_psf_sd_px: float = 1.0
    defocus_blur_per_px: float = 0.5
    out_of_focus_fraction: float = 0.15
    brightness_photons: tuple[float, float] = (25.0, 60.0)
    background_photons: float = 1.5
    illumination_variation: float = 0.15
    gain_adu_per_photon: float = 90.0
    offset_adu: float = 200.0
    read_noise_adu: float = 40.0


@dataclass(frozen=True)
class BrightfieldOptics:
    """Transparent spheres in transmitted light; angles in radians.

    Attributes
    ----------
    relative_index : droplet over medium refractive index (oil in water).
    bubble_relative_index : air over medium.
    bubble_fraction : share of droplets of radius at most ``bubble_max_radius_px`` that
        are air bubbles.
    condenser_angle, objective_angle : half-angles of the illumination and acceptance cones.
    condenser_tilt : tilt of the illumination axis (oblique light: one side's rim darker).
    tilt_direction : direction of the tilt in the image (radians from +x towards +y).
    focus_gain : brightness the sphere focuses into its centre (a ball lens; image plane
        just above the equator).
    absorbance_per_px : weak absorption of the droplet liquid.
    inclusion_min_radius_px : droplets at least this big hold 1-4 small inclusions.
    background_level, illumination_variation, tint_rgb : lamp.
    blur_sigma_px, noise_sd : camera.
    """

    relative_index: float = 1.10
    bubble_relative_index: float = 0.75
    bubble_fraction: float = 0.3
    bubble_max_radius_px: float = 8.0
    condenser_angle: float = 0.10
    objective_angle: float = 0.20
    condenser_tilt: float = 0.06
    tilt_direction: float = 0.6
    focus_gain: float = 0.35
    absorbance_per_px: float = 0.002
    inclusion_min_radius_px: float = 25.0
    background_level: float = 0.78
    illumination_variation: float = 0.08
    tint_rgb: tuple[float, float, float] = (1.0, 0.96, 0.88)
    blur_sigma_px: float = 0.8
    noise_sd: float = 0.012


@dataclass(frozen=True)
class PhaseOptics:
    """Pancake droplets seen in phase contrast or DIC.

    Attributes
    ----------
    contrast : ``"phase"`` (Zernike) or ``"dic"``.
    chamber_gap_px : chamber height: a droplet's thickness is its sphere chord, capped.
    phase_per_px : optical phase (radians) per px of droplet thickness.
    ring_transmission : amplitude transmission of the phase ring (undiffracted light).
    ring_lowpass_sd_px : the ring's finite width as a low-pass (Gaussian sd) of the
        field: what it passes is treated as undiffracted (halo and shade-off).
    dic_shear_px, dic_bias, dic_direction : DIC shear length, bias retardation (radians)
        and shear direction (radians from +x towards +y).
    background_level, illumination_variation : lamp.
    blur_sigma_px, noise_sd : camera.
    """

    contrast: str = "phase"
    chamber_gap_px: float = 24.0
    phase_per_px: float = 0.015
    ring_transmission: float = 0.5
    ring_lowpass_sd_px: float = 12.0
    dic_shear_px: float = 1.2
    dic_bias: float = 0.9
    dic_direction: float = 0.785
    background_level: float = 0.5
    illumination_variation: float = 0.06
    blur_sigma_px: float = 0.7
    noise_sd: float = 0.012


@dataclass(frozen=True)
class PackedOptics:
    """A packed emulsion in transmitted light; angles in radians.

    Attributes
    ----------
    relative_index, condenser_angle, objective_angle, condenser_tilt, tilt_direction,
    focus_gain : as for ``BrightfieldOptics``.
    specular_level, specular_offset, specular_sd : the lamp's reflection off each
        droplet's cap: peak brightness added, its offset from the centre towards
        ``tilt_direction`` and its sd, as fractions of the radius.
    film_darkness, film_width_px : the dark line of the thin film along each contact.
    border_level : brightness of the continuous phase between droplets (relative).
    background_level, illumination_variation : lamp.
    blur_sigma_px, noise_sd : camera.
    """

    relative_index: float = 1.10
    condenser_angle: float = 0.10
    objective_angle: float = 0.24
    condenser_tilt: float = 0.03
    tilt_direction: float = -2.3
    focus_gain: float = 0.3
    specular_level: float = 0.5
    specular_offset: float = 0.35
    specular_sd: float = 0.1
    film_darkness: float = 0.5
    film_width_px: float = 0.9
    border_level: float = 0.6
    background_level: float = 0.7
    illumination_variation: float = 0.06
    blur_sigma_px: float = 0.8
    noise_sd: float = 0.012


FAMILY_SIZES = {
    "seedlike": SceneSize(
        width_px=500,
        height_px=400,
        radius_min_px=1.0,
        radius_max_px=9.0,
        radius_median_px=2.3,
        radius_log_sd=0.5,
        n_droplets=2000,
    ),
    "fluorescence": SceneSize(radius_min_px=5.0, radius_max_px=45.0),
    "brightfield": SceneSize(
        width_px=640,
        height_px=512,
        radius_min_px=3.0,
        radius_max_px=70.0,
        radius_median_px=6.0,
        radius_log_sd=0.9,
        density="sparse",
    ),
    "phase": SceneSize(radius_min_px=4.0, radius_max_px=40.0),
    "packed": SceneSize(radius_min_px=8.0, radius_max_px=35.0, density="packed"),
}
FAMILY_OPTICS = {
    "seedlike": SeedlikeOptics,
    "fluorescence": FluorescenceOptics,
    "brightfield": BrightfieldOptics,
    "phase": PhaseOptics,
    "packed": PackedOptics,
}


def render(family: str, seed: int, *, clean: bool = False, **options) -> tuple[np.ndarray, pd.DataFrame]:
    """Draw droplets and render a scene of ``family``.

    Parameters
    ----------
    family : one of ``FAMILIES``.
    seed : seeds a ``numpy.random.Generator``; the scene is a function of it and the options.
    clean : the optics alone: no uneven illumination, noise or compression (for checking
        the truth against the pixels).
    **options : fields of ``SceneSize`` (default ``FAMILY_SIZES[family]``) or of the
        family's optics dataclass (``FAMILY_OPTICS[family]``).

    Returns
    -------
    image : float RGB ``(h, w, 3)`` in [0, 1] on 8-bit levels, or ``uint16 (h, w)`` for
        ``fluorescence``.
    truth : columns ``x`` (column), ``y`` (row), ``radius`` (px), ``in_focus``, ``bubble``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    size_fields = {f.name for f in dataclasses.fields(SceneSize)}
    size = dataclasses.replace(FAMILY_SIZES[family], **{k: v for k, v in options.items() if k in size_fields})
    optics = FAMILY_OPTICS[family](**{k: v for k, v in options.items() if k not in size_fields})
    if size.density not in DENSITIES:
        raise ValueError(f"unknown density {size.density!r}; choose one of {', '.join(DENSITIES)}")
    rng = np.random.default_rng(seed)
    renderer = {
        "seedlike": _seedlike,
        "fluorescence": _fluorescence,
        "brightfield": _brightfield,
        "phase": _phase,
        "packed": _packed,
    }[family]
    return renderer(rng, size, optics, clean)


def encode(image: np.ndarray) -> bytes:
    """File bytes of a rendered image: 16-bit TIFF for ``uint16``, else 8-bit RGB PNG."""
    buffer = io.BytesIO()
    if image.dtype == np.uint16:
        tifffile.imwrite(buffer, image)
    else:
        Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- placement ---------------------------------------------------------------------


def _radii(rng: np.random.Generator, size: SceneSize) -> np.ndarray:
    """Radii (px), largest first: ``n_droplets`` of them, or enough to cover the density's area."""
    low, high = size.radius_min_px, size.radius_max_px

    def draw(n: int) -> np.ndarray:
        if size.radius_median_px is None:
            return np.exp(rng.uniform(np.log(low), np.log(high), n))
        drawn = np.exp(rng.normal(np.log(size.radius_median_px), size.radius_log_sd, 4 * n + 16))
        return drawn[(drawn >= low) & (drawn <= high)][:n]

    if size.n_droplets is not None:
        radii = draw(size.n_droplets)
    else:
        target = AREA_FRACTION[size.density] * size.width_px * size.height_px
        radii = np.zeros(0)
        while np.pi * np.sum(radii**2) < target:
            radii = np.concatenate([radii, draw(64)])
        radii = radii[: np.searchsorted(np.cumsum(np.pi * radii**2), target) + 1]
    return np.sort(radii)[::-1]


def _place(
    rng: np.random.Generator,
    size: SceneSize,
    radii: np.ndarray,
    spacing: float,
    xy: np.ndarray | None = None,
    placed_radii: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential placement of ``radii`` (in order) beside already placed droplets.

    A candidate centre is free when its distance to every placed centre is at least
    ``spacing`` times the sum of the two radii. Centres lie inside the image.

    Returns
    -------
    xy : ``(n, 2)`` centres (x, y) of all placed droplets, the given ones first.
    radius : ``(n,)`` their radii.
    """
    xy = np.zeros((0, 2)) if xy is None else xy
    placed_radii = np.zeros(0) if placed_radii is None else placed_radii
    n = len(placed_radii)
    centres = np.concatenate([xy, np.zeros((len(radii), 2))])
    rs = np.concatenate([placed_radii, np.zeros(len(radii))])
    upper = np.array([size.width_px - 1.0, size.height_px - 1.0])
    for r in radii:
        for _ in range(TRIES):
            candidates = rng.uniform(0.0, upper, size=(CANDIDATES_PER_TRY, 2))
            squared = (candidates[:, None, 0] - centres[None, :n, 0]) ** 2 + (
                candidates[:, None, 1] - centres[None, :n, 1]
            ) ** 2
            free = np.flatnonzero((squared >= (spacing * (r + rs[None, :n])) ** 2).all(axis=1))
            if len(free):
                centres[n], rs[n] = candidates[free[0]], r
                n += 1
                break
    return centres[:n], rs[:n]


def _grow_until_pressed(
    xy: np.ndarray, radii: np.ndarray, radius_max: float, rng: np.random.Generator, sweeps: int = 6
) -> np.ndarray:
    """Radii grown, droplet by droplet, until each presses on a neighbour (or reaches the maximum).

    Pressing: centre distance ``PRESSED_SPACING`` times the sum of the radii.
    """
    radii = radii.copy()
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    for _ in range(sweeps):
        for i in rng.permutation(len(radii)):
            room = np.min(distance[i] / PRESSED_SPACING - radii)
            radii[i] = max(radii[i], min(radius_max, room))
    return radii


def _droplets(rng: np.random.Generator, size: SceneSize, pressed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` and radii ``(n,)``; ``pressed``: a packed emulsion grown into contact."""
    radii = _radii(rng, size)
    if not pressed:
        return _place(rng, size, radii, SPACING[size.density])
    xy, radii = _place(rng, size, radii, PRESSED_SPACING)
    radii = _grow_until_pressed(xy, radii, size.radius_max_px, rng)
    # Holes the growth left get droplets of the smallest sizes, grown in turn.
    filler = np.full(4 * len(radii), size.radius_min_px)
    xy, radii = _place(rng, size, filler, PRESSED_SPACING, xy, radii)
    return xy, _grow_until_pressed(xy, radii, size.radius_max_px, rng)


def _truth(xy: np.ndarray, radii: np.ndarray, in_focus=True, bubble=False) -> pd.DataFrame:
    n = len(radii)
    return pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "radius": radii,
            "in_focus": np.broadcast_to(np.asarray(in_focus, dtype=bool), (n,)).copy(),
            "bubble": np.broadcast_to(np.asarray(bubble, dtype=bool), (n,)).copy(),
        }
    )


# --- sampling and optics helpers ------------------------------------------------------


def _supersampling(radius: float) -> int:
    """Samples per pixel side: enough that a droplet's edge is resolved to a few hundredths of a px."""
    return 8 if radius < 3 else 4 if radius < 12 else 2


def _patch(x: float, y: float, reach: float, shape: tuple[int, int], ss: int):
    """Pixel window around ``(x, y)`` and its sample offsets from the centre.

    Returns
    -------
    window : ``(rows, cols)`` slices of the image.
    dx, dy : ``(ph * ss, pw * ss)`` offsets (px) of the samples from ``(x, y)``; a
        pixel's ``ss x ss`` samples sit at the centres of its sub-squares.
    """
    h, w = shape
    r0, c0 = min(max(int(np.floor(y - reach)), 0), h), min(max(int(np.floor(x - reach)), 0), w)
    r1, c1 = max(min(int(np.ceil(y + reach)) + 1, h), r0), max(min(int(np.ceil(x + reach)) + 1, w), c0)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    rows = (np.arange(r0, r1)[:, None] + sub).ravel()
    cols = (np.arange(c0, c1)[:, None] + sub).ravel()
    return (slice(r0, r1), slice(c0, c1)), cols[None, :] - x, rows[:, None] - y


def _pixels(samples: np.ndarray, ss: int) -> np.ndarray:
    """Mean over each pixel's ``ss x ss`` samples: ``(ph * ss, pw * ss, ...)`` -> ``(ph, pw, ...)``."""
    h, w = samples.shape[0] // ss, samples.shape[1] // ss
    return samples.reshape(h, ss, w, ss, *samples.shape[2:]).mean(axis=(1, 3))


def _illumination(rng: np.random.Generator, shape: tuple[int, int], variation: float) -> np.ndarray:
    """Smooth relative illumination ``(h, w)`` around 1: a low-order random field."""
    h, w = shape
    coarse = rng.normal(0.0, 1.0, (4, 4))
    field = ndimage.zoom(coarse, (h / 4, w / 4), order=3, mode="nearest")[:h, :w]
    field = np.pad(field, ((0, h - field.shape[0]), (0, w - field.shape[1])), mode="edge")
    return 1.0 + variation * field / (np.abs(field).max() + 1e-12)


def _cone_overlap(offset: np.ndarray, condenser: float, objective: float) -> np.ndarray:
    """Fraction of the illumination cone that the objective accepts.

    The cone of directions (half-angle ``condenser``, radians) is displaced by ``offset``
    (the ray's deflection plus the illumination tilt) against the objective's acceptance
    cone (half-angle ``objective``); small angles, so cones are disks in angle space.
    """
    d = np.asarray(offset, dtype=float)
    a, b = condenser, objective
    safe = np.maximum(d, 1e-12)
    lens = (
        a**2 * np.arccos(np.clip((safe**2 + a**2 - b**2) / (2 * safe * a), -1, 1))
        + b**2 * np.arccos(np.clip((safe**2 + b**2 - a**2) / (2 * safe * b), -1, 1))
        - 0.5 * np.sqrt(np.clip((-safe + a + b) * (safe + a - b) * (safe - a + b) * (safe + a + b), 0, None))
    )
    nested = np.pi * min(a, b) ** 2
    overlap = np.where(d <= abs(b - a), nested, np.where(d >= a + b, 0.0, lens))
    return overlap / (np.pi * a**2)


def _sphere_deflection(b: np.ndarray, relative_index: float) -> tuple[np.ndarray, np.ndarray]:
    """Deflection (radians, towards the axis when positive) of a ray through a sphere.

    Parameters
    ----------
    b : impact parameter as a fraction of the radius, in [0, 1).
    relative_index : sphere over medium refractive index.

    Returns
    -------
    deflection : ``2 (i - t)`` with incidence ``i = asin b`` and refraction ``t = asin(b / m)``.
    passes : False where the ray is totally reflected (``b > m`` for ``m < 1``).
    """
    passes = b / relative_index < 1.0
    incidence = np.arcsin(np.clip(b, 0.0, 1.0))
    refracted = np.arcsin(np.clip(b / relative_index, 0.0, 1.0))
    return 2.0 * (incidence - refracted), passes


def _tilt(angle: float, direction: float) -> np.ndarray:
    return angle * np.array([np.cos(direction), np.sin(direction)])


def _sphere_transmission(
    dx: np.ndarray,
    dy: np.ndarray,
    radius: float,
    relative_index: float,
    condenser: float,
    objective: float,
    tilt: np.ndarray,
    focus_gain: float,
) -> np.ndarray:
    """Relative transmitted brightness inside a transparent sphere (1 = the open background).

    Each ray leaves in the illumination direction (``tilt``) turned by the sphere's
    deflection towards (``m > 1``) or away from (``m < 1``) the axis; the objective keeps
    the share of the condenser cone it accepts. A ball lens also concentrates light into
    its centre (``focus_gain``). Outside the sphere the value is 1.
    """
    d = np.hypot(dx, dy)
    b = d / radius
    inside = b < 1.0
    deflection, passes = _sphere_deflection(np.where(inside, b, 0.0), relative_index)
    unit_x, unit_y = dx / np.maximum(d, 1e-12), dy / np.maximum(d, 1e-12)
    direction = np.hypot(tilt[0] - deflection * unit_x, tilt[1] - deflection * unit_y)
    open_field = _cone_overlap(np.hypot(*tilt), condenser, objective)
    accepted = _cone_overlap(direction, condenser, objective) / open_field
    lens = 1.0 + focus_gain * np.exp(-((b / 0.35) ** 2))
    return np.where(inside, np.where(passes, accepted * lens, 0.0), 1.0)


def _camera_8bit(
    rng: np.random.Generator, image: np.ndarray, blur_sigma_px: float, noise_sd: float, clean: bool
) -> np.ndarray:
    """Blur (per channel), Gaussian noise and 8-bit quantisation of a float ``(h, w, c)`` image."""
    image = ndimage.gaussian_filter(image, sigma=(blur_sigma_px, blur_sigma_px, 0))
    if not clean:
        image = image + rng.normal(0.0, noise_sd, image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0


# --- families ----------------------------------------------------------------------------


def _seedlike(rng, size: SceneSize, optics: SeedlikeOptics, clean: bool):
    xy, radii = _droplets(rng, size)
    n = len(radii)
    shape = (size.height_px, size.width_px)
    contact_angle = rng.uniform(*optics.contact_angle_range, n)
    dyes = rng.dirichlet(optics.dye_concentration, n) @ np.asarray(optics.dye_absorbance_per_px)
    strength = rng.uniform(0.6, 1.4, n)
    transmission = np.ones((*shape, 3))
    for (x, y), r, theta, absorbance, k in zip(xy, radii, contact_angle, dyes, strength):
        ss = _supersampling(r)
        window, dx, dy = _patch(x, y, r + 1, shape, ss)
        d = np.hypot(dx, dy)
        inside = d < r
        sphere = r / np.sin(theta)
        d_in = np.minimum(d, r)
        thickness = np.sqrt(sphere**2 - d_in**2) - sphere * np.cos(theta)
        # The cap's top surface is tilted by the angle ``slope`` from the slide; light
        # leaving it into air is bent away from the normal, or totally reflected.
        slope = np.arcsin(d_in / sphere)
        sine_out = optics.refractive_index * np.sin(slope)
        deflection = np.where(sine_out < 1.0, np.arcsin(np.clip(sine_out, 0, 1)) - slope, np.pi / 2)
        accepted = _cone_overlap(deflection, optics.condenser_angle, optics.objective_angle)
        lens = 1.0 + optics.focus_gain * (1 - np.exp(-((r / 3.0) ** 2))) * np.exp(-((d / (0.4 * r)) ** 2))
        through = np.exp(-k * absorbance[None, None, :] * thickness[..., None]) * (accepted * lens)[..., None]
        transmission[window] *= _pixels(np.where(inside[..., None], through, 1.0), ss)
    illumination = np.ones(shape) if clean else _illumination(rng, shape, optics.illumination_variation)
    image = np.asarray(optics.background_rgb) * illumination[..., None] * transmission
    image = _camera_8bit(rng, image, optics.blur_sigma_px, optics.noise_sd, clean)
    if not clean:
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=optics.jpeg_quality)
        image = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255.0
    return image, _truth(xy, radii)


def _fluorescence(rng, size: SceneSize, optics: FluorescenceOptics, clean: bool):
    xy, radii = _droplets(rng, size)
    n = len(radii)
    shape = (size.height_px, size.width_px)
    in_focus = rng.random(n) >= optics.out_of_focus_fraction
    depth = np.where(in_focus, 0.0, rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 0.9, n) * radii)
    brightness = rng.uniform(*optics.brightness_photons, n)
    photons = np.zeros(shape)
    slab = np.sqrt(2.0) * optics.focal_slab_sd_px
    for (x, y), r, z, peak in zip(xy, radii, depth, brightness):
        blur = np.hypot(optics.lateral_psf_sd_px, optics.defocus_blur_per_px * z)
        ss = _supersampling(r)
        window, dx, dy = _patch(x, y, r + 4 * blur + 2, shape, ss)
        half_chord = np.sqrt(np.clip(r**2 - dx**2 - dy**2, 0.0, None))
        # Emission collected along the chord through the sphere, weighted by the focal
        # slab's Gaussian axial profile centred ``z`` away from the droplet's centre.
        collected = 0.5 * (erf((half_chord - z) / slab) + erf((half_chord + z) / slab))
        photons[window] += ndimage.gaussian_filter(peak * _pixels(collected, ss), blur, mode="constant")
    illumination = np.ones(shape) if clean else _illumination(rng, shape, optics.illumination_variation)
    expected = illumination * (optics.background_photons + photons)
    if clean:
        counts = optics.offset_adu + optics.gain_adu_per_photon * expected
    else:
        counts = (
            optics.offset_adu
            + optics.gain_adu_per_photon * rng.poisson(expected)
            + rng.normal(0.0, optics.read_noise_adu, shape)
        )
    image = np.round(np.clip(counts, 0, np.iinfo(np.uint16).max)).astype(np.uint16)
    return image, _truth(xy, radii, in_focus=in_focus)


def _brightfield(rng, size: SceneSize, optics: BrightfieldOptics, clean: bool):
    xy, radii = _droplets(rng, size)
    n = len(radii)
    shape = (size.height_px, size.width_px)
    bubble = (radii <= optics.bubble_max_radius_px) & (rng.random(n) < optics.bubble_fraction)
    tilt = _tilt(optics.condenser_tilt, optics.tilt_direction)
    cones = (optics.condenser_angle, optics.objective_angle)
    transmission = np.ones(shape)

    def draw(x, y, r, relative_index, absorbance):
        ss = _supersampling(r)
        window, dx, dy = _patch(x, y, r + 1, shape, ss)
        through = _sphere_transmission(dx, dy, r, relative_index, *cones, tilt, optics.focus_gain)
        chord = 2.0 * np.sqrt(np.clip(r**2 - dx**2 - dy**2, 0.0, None))
        transmission[window] *= _pixels(through * np.exp(-absorbance * chord), ss)

    for (x, y), r, is_bubble in zip(xy, radii, bubble):
        if is_bubble:
            draw(x, y, r, optics.bubble_relative_index, 0.0)
            continue
        draw(x, y, r, optics.relative_index, optics.absorbance_per_px)
        if r >= optics.inclusion_min_radius_px:
            # Inclusions: small droplets of another liquid inside, lower in index than the host.
            for _ in range(rng.integers(1, 5)):
                angle, distance = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 0.3))
                draw(
                    x + distance * np.cos(angle),
                    y + distance * np.sin(angle),
                    rng.uniform(1.5, 2.0 + 0.08 * r),
                    0.92,
                    0.0,
                )
    illumination = np.ones(shape) if clean else _illumination(rng, shape, optics.illumination_variation)
    grey = optics.background_level * illumination * transmission
    image = _camera_8bit(
        rng, grey[..., None] * np.asarray(optics.tint_rgb), optics.blur_sigma_px, optics.noise_sd, clean
    )
    return image, _truth(xy, radii, bubble=bubble)


def _phase(rng, size: SceneSize, optics: PhaseOptics, clean: bool):
    if optics.contrast not in ("phase", "dic"):
        raise ValueError(f"unknown contrast {optics.contrast!r}; choose 'phase' or 'dic'")
    xy, radii = _droplets(rng, size)
    shape = (size.height_px, size.width_px)
    thickness = np.zeros(shape)
    for (x, y), r in zip(xy, radii):
        ss = _supersampling(r)
        window, dx, dy = _patch(x, y, r + 1, shape, ss)
        chord = 2.0 * np.sqrt(np.clip(r**2 - dx**2 - dy**2, 0.0, None))
        thickness[window] += _pixels(np.minimum(chord, optics.chamber_gap_px), ss)
    phase = optics.phase_per_px * thickness
    if optics.contrast == "phase":
        field = np.exp(1j * phase)
        undiffracted = ndimage.gaussian_filter(
            field.real, optics.ring_lowpass_sd_px, mode="reflect"
        ) + 1j * ndimage.gaussian_filter(field.imag, optics.ring_lowpass_sd_px, mode="reflect")
        # The ring retards the undiffracted light by a quarter wave and attenuates it
        # (positive contrast: droplets of higher index dark, a bright halo around them).
        ring = optics.ring_transmission * np.exp(-0.5j * np.pi)
        relative = np.abs(field + (ring - 1.0) * undiffracted) ** 2 / optics.ring_transmission**2
    else:
        half = 0.5 * optics.dic_shear_px * np.array([np.sin(optics.dic_direction), np.cos(optics.dic_direction)])
        ahead = ndimage.shift(phase, -half, order=1, mode="nearest")
        behind = ndimage.shift(phase, half, order=1, mode="nearest")
        relative = np.sin(0.5 * (optics.dic_bias + ahead - behind)) ** 2 / np.sin(0.5 * optics.dic_bias) ** 2
    illumination = np.ones(shape) if clean else _illumination(rng, shape, optics.illumination_variation)
    grey = optics.background_level * illumination * relative
    image = _camera_8bit(rng, np.repeat(grey[..., None], 3, axis=2), optics.blur_sigma_px, optics.noise_sd, clean)
    return image, _truth(xy, radii)


def _packed(rng, size: SceneSize, optics: PackedOptics, clean: bool):
    xy, radii = _droplets(rng, size, pressed=True)
    shape = (size.height_px, size.width_px)
    ss = 2
    # Power diagram over the samples: each sample belongs to the droplet of least power
    # distance d^2 - r^2 among those that cover it; the runner-up gives the contact film.
    sample_shape = (shape[0] * ss, shape[1] * ss)
    best = np.full(sample_shape, np.inf)
    second = np.full(sample_shape, np.inf)
    owner = np.full(sample_shape, -1)
    runner_up = np.full(sample_shape, -1)
    for index, ((x, y), r) in enumerate(zip(xy, radii)):
        (rows, cols), dx, dy = _patch(x, y, r + 1, shape, ss)
        window = (slice(rows.start * ss, rows.stop * ss), slice(cols.start * ss, cols.stop * ss))
        power = np.where(np.hypot(dx, dy) < r, dx**2 + dy**2 - r**2, np.inf)
        b_now, s_now, o_now, u_now = best[window], second[window], owner[window], runner_up[window]
        wins = power < b_now
        runs = ~wins & (power < s_now)
        s_now[wins], u_now[wins] = b_now[wins], o_now[wins]
        b_now[wins], o_now[wins] = power[wins], index
        s_now[runs], u_now[runs] = power[runs], index

    sub = (np.arange(ss) + 0.5) / ss - 0.5
    cols = (np.arange(shape[1])[:, None] + sub).ravel()[None, :]
    rows = (np.arange(shape[0])[:, None] + sub).ravel()[:, None]
    covered = owner >= 0
    o = np.where(covered, owner, 0)
    dx, dy, r = cols - xy[o, 0], rows - xy[o, 1], radii[o]
    tilt = _tilt(optics.condenser_tilt, optics.tilt_direction)
    inside = _sphere_transmission(
        dx, dy, r, optics.relative_index, optics.condenser_angle, optics.objective_angle, tilt, optics.focus_gain
    )
    toward_light = np.array([np.cos(optics.tilt_direction), np.sin(optics.tilt_direction)])
    spot_x, spot_y = (
        dx - optics.specular_offset * r * toward_light[0],
        dy - optics.specular_offset * r * toward_light[1],
    )
    inside = inside + optics.specular_level * np.exp(-0.5 * (spot_x**2 + spot_y**2) / (optics.specular_sd * r) ** 2)
    # Distance to the radical axis with the runner-up: (power difference) / (2 |c_i - c_j|).
    has_neighbour = runner_up >= 0
    u = np.where(has_neighbour, runner_up, 0)
    separation = np.maximum(np.linalg.norm(xy[o] - xy[u], axis=-1), 1e-9)
    to_contact = (second - np.where(covered, best, 0.0)) / (2 * separation)
    inside = inside * (1.0 - optics.film_darkness * np.exp(-((to_contact / optics.film_width_px) ** 2)))
    relative = _pixels(np.where(covered, inside, optics.border_level), ss)
    illumination = np.ones(shape) if clean else _illumination(rng, shape, optics.illumination_variation)
    grey = optics.background_level * illumination * relative
    image = _camera_8bit(rng, np.repeat(grey[..., None], 3, axis=2), optics.blur_sigma_px, optics.noise_sd, clean)
    return image, _truth(xy, radii)
