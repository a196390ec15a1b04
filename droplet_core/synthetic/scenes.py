"""Synthetic droplet scenes with known truth: demo image, detection tests, benchmarks, training.

A scene belongs to a *family*, the kind of microscopy it imitates: ``seed`` (the default, the
project's own coloured droplets), ``fluorescence``, ``brightfield``, ``phase`` (phase contrast
or DIC) and ``packed`` (a densely packed emulsion in transmitted light); ``family_settings``
gives each family's preset and ``random_family_settings`` draws varied settings across
families, sizes (radius 1-150 px, polydisperse up to 1:50 and beyond) and densities (sparse,
crowded, packed) for training. Placement and drawing live in ``scene_geometry``, the other
families' looks in ``scene_families``.

The seed family's defaults mimic the project's reference microscopy image at quarter resolution: a
grey-green background crowded with small droplets (most 1-3 px radius, a few up to
10 px) that touch but barely overlap, each blue/purple/magenta with a darker rim and a
bright yellowish caustic below its centre that spills a little onto the substrate, then
optical blur, sensor noise and a JPEG round trip. Highlight and rim are what make
classical blob detectors count one droplet as several.

Truth uses the project's coordinate convention: ``x`` = column, ``y`` = row, pixel
centre at its integer index, ``radius`` in pixels: the droplet's physical edge (for pressed
droplets, the radius of their free, round outline).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.transform import resize

from droplet_core.imaging.images import encode_png
from droplet_core.synthetic.scene_families import (
    BrightfieldLook,
    FluorescenceLook,
    PhaseLook,
    render_brightfield,
    render_fluorescence,
    render_phase,
)
from droplet_core.synthetic.scene_geometry import (
    contact_counts,
    draw_radii,
    pack,
    place_random,
)

# Sub-samples per pixel side when rendering a seed droplet: antialiased edges, and highlights
# smaller than a pixel still contribute their area rather than aliasing.
_SUPERSAMPLE = 3
FAMILIES = ("seed", "fluorescence", "brightfield", "phase", "packed")
PLACEMENTS = ("random", "packed")
# Which look (SceneSettings field) each family draws with; the seed's look is SceneSettings' own fields.
_LOOK_OF_FAMILY = {
    "fluorescence": "fluorescence",
    "brightfield": "brightfield",
    "packed": "brightfield",
    "phase": "phase",
}


@dataclass(frozen=True)
class SceneSettings:
    """How a synthetic scene is drawn and rendered. Colours are RGB in [0, 1].

    The defaults draw the seed family; ``family_settings`` gives the other families' presets.
    Fields from ``palette_rgb`` to ``caustic_onset_radius_px`` are the seed family's look;
    the other families read theirs from ``fluorescence``, ``brightfield`` (also ``packed``)
    and ``phase``.

    Attributes
    ----------
    width_px, height_px : image size.
    n_droplets : droplets requested; fewer are placed when they do not fit (with packed
        placement: the most there may be; the packing fraction sets how many).
    radius_min_px, radius_max_px : radius range; radii are lognormal, truncated to it.
    radius_median_px, radius_log_sd : the lognormal before truncation (skewed to small).
    min_distance_fraction : two droplets' centres are at least this times the sum of
        their radii apart (1 = touching at most; below 1 = slight overlap).
    background_rgb : substrate colour (fluorescence: unused, its field is dark).
    background_variation : relative amplitude of smooth uneven illumination.
    palette_rgb : pure droplet colours; a droplet's colour is its composition-weighted mix.
    composition_concentration : Dirichlet parameters of compositions, one per palette
        colour (small = most droplets near one colour; relative sizes = how common).
    rim_darkness : fraction by which the outer ``rim_width`` of the disk is darkened.
    rim_width : rim thickness as a fraction of the radius.
    shading : body brightness goes from ``1 - shading`` at the top to ``1 + shading`` at
        the bottom (light comes through the droplet from above).
    caustic_rgb : colour of the focused-light highlight.
    caustic_strength : peak opacity of the highlight inside the droplet.
    caustic_offset : highlight centre below the droplet centre, fraction of the radius.
    caustic_size : highlight Gaussian sd, fraction of the radius.
    caustic_spill : highlight opacity outside the disk relative to inside (light
        focused onto the substrate below the droplet).
    caustic_onset_radius_px : the highlight fades in with size, by
        ``1 - exp(-(radius / onset)**2)``: the smallest droplets look like plain dark dots.
    blur_sigma_px : Gaussian optical blur.
    noise_sd : sd of additive Gaussian noise (image in [0, 1]).
    jpeg_quality : Pillow JPEG quality of a final round trip; ``None`` for none (8-bit output only).
    family : one of ``FAMILIES``.
    placement : ``"random"`` (sparse to crowded, by ``n_droplets`` and
        ``min_distance_fraction``) or ``"packed"`` (every droplet pressed against its
        neighbours; not for the seed family).
    packed_area_fraction : packed placement: the droplets' summed disk area, before the
        flattening, over the area their centres may take (the image grown by a mean radius
        on each side, as droplets on the border hang over it); about 0.85 is jammed, above it
        droplets press harder, below it gaps open.
    packing_flattening : packed placement: droplets settled touching are grown by this
        fraction of their radius and cut flat where they meet.
    fluorescence, brightfield, phase : the looks of those families.
    """

    width_px: int = 500
    height_px: int = 400
    n_droplets: int = 1500
    radius_min_px: float = 1.0
    radius_max_px: float = 10.0
    radius_median_px: float = 1.8
    radius_log_sd: float = 0.55
    min_distance_fraction: float = 0.9
    background_rgb: tuple[float, float, float] = (0.63, 0.63, 0.55)
    background_variation: float = 0.03
    palette_rgb: tuple[tuple[float, float, float], ...] = (
        (0.28, 0.33, 0.66),  # blue
        (0.42, 0.30, 0.62),  # purple
        (0.70, 0.34, 0.50),  # magenta
    )
    composition_concentration: tuple[float, ...] = (0.6, 0.4, 0.25)
    rim_darkness: float = 0.35
    rim_width: float = 0.3
    shading: float = 0.25
    caustic_rgb: tuple[float, float, float] = (0.92, 0.90, 0.40)
    caustic_strength: float = 0.95
    caustic_offset: float = 0.6
    caustic_size: float = 0.36
    caustic_spill: float = 0.6
    caustic_onset_radius_px: float = 1.5
    blur_sigma_px: float = 0.6
    noise_sd: float = 0.012
    jpeg_quality: int | None = 90
    family: str = "seed"
    placement: str = "random"
    packed_area_fraction: float = 0.88
    packing_flattening: float = 0.03
    fluorescence: FluorescenceLook = field(default_factory=FluorescenceLook)
    brightfield: BrightfieldLook = field(default_factory=BrightfieldLook)
    phase: PhaseLook = field(default_factory=PhaseLook)

    def __post_init__(self) -> None:
        if self.width_px < 8 or self.height_px < 8:
            raise ValueError("a scene must be at least 8x8 pixels")
        if self.n_droplets < 0:
            raise ValueError("n_droplets must not be negative")
        if not 0 < self.radius_min_px <= self.radius_max_px:
            raise ValueError("need 0 < radius_min_px <= radius_max_px")
        if not self.palette_rgb:
            raise ValueError("palette_rgb needs at least one colour")
        if len(self.composition_concentration) != len(self.palette_rgb):
            raise ValueError("composition_concentration needs one value per palette colour")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100 or None")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {self.placement!r}")
        if self.family == "seed" and self.placement == "packed":
            raise ValueError("the seed family has no packed placement; use the packed family")
        if not 0.0 < self.packed_area_fraction <= 1.2:
            raise ValueError("packed_area_fraction must be in (0, 1.2]")


# Each family's preset: a typical image of that kind of microscopy, 500x400 px.
_FAMILY_PRESETS = {
    "seed": {},
    "fluorescence": dict(
        n_droplets=110,
        radius_min_px=4.0,
        radius_max_px=45.0,
        radius_median_px=14.0,
        radius_log_sd=0.5,
        min_distance_fraction=0.8,
        background_variation=0.15,
        blur_sigma_px=1.8,
        jpeg_quality=None,
    ),
    "brightfield": dict(
        n_droplets=160,
        radius_min_px=3.0,
        radius_max_px=70.0,
        radius_median_px=9.0,
        radius_log_sd=0.9,
        min_distance_fraction=1.1,
        background_rgb=(0.80, 0.79, 0.74),
        background_variation=0.08,
        blur_sigma_px=0.8,
        noise_sd=0.012,
        jpeg_quality=92,
    ),
    "phase": dict(
        n_droplets=160,
        radius_min_px=3.0,
        radius_max_px=40.0,
        radius_median_px=9.0,
        radius_log_sd=0.6,
        min_distance_fraction=1.1,
        background_rgb=(0.50, 0.50, 0.50),
        background_variation=0.08,
        blur_sigma_px=0.7,
        noise_sd=0.012,
        jpeg_quality=92,
    ),
    "packed": dict(
        n_droplets=20_000,
        radius_min_px=8.0,
        radius_max_px=35.0,
        radius_median_px=15.0,
        radius_log_sd=0.3,
        placement="packed",
        background_rgb=(0.42, 0.42, 0.40),
        background_variation=0.08,
        blur_sigma_px=0.8,
        noise_sd=0.012,
        jpeg_quality=92,
        brightfield=BrightfieldLook(
            body_transmission=1.55,
            rim_width=0.14,
            rim_transmission=0.45,
            rim_asymmetry=0.3,
            centre_gain=0.25,
            centre_size=0.45,
            centre_offset=0.1,
            specular_gain=0.7,
            specular_size=0.07,
            halo_gain=0.0,
            bubble_fraction=0.0,
            inclusions_per_droplet=0.0,
            contact_gap_px=1.0,
        ),
    ),
}


def family_settings(family: str, **overrides) -> SceneSettings:
    """Settings of a ``family``'s preset scene, with ``overrides``.

    Each override names a field of the family's look (``FluorescenceLook`` for fluorescence,
    ``BrightfieldLook`` for brightfield and packed, ``PhaseLook`` for phase) or else a
    ``SceneSettings`` field, e.g. ``family_settings("fluorescence", n_droplets=300,
    photons_full_scale=20)``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    values = {"family": family, **_FAMILY_PRESETS[family]}
    look_name = _LOOK_OF_FAMILY.get(family)
    look = values.get(look_name, getattr(SceneSettings(), look_name)) if look_name else None
    scene_fields = {f.name for f in dataclasses.fields(SceneSettings)}
    look_fields = {f.name for f in dataclasses.fields(look)} if look is not None else set()
    look_overrides = {}
    for name, value in overrides.items():
        if name in look_fields:  # first: the family's own rim_width, not the seed look's
            look_overrides[name] = value
        elif name in scene_fields:
            values[name] = value
        else:
            raise ValueError(f"{name!r} is no setting of a {family} scene")
    if look_overrides:
        values[look_name] = dataclasses.replace(values.get(look_name, look), **look_overrides)
    return SceneSettings(**values)


def random_family_settings(
    rng: np.random.Generator,
    size_px: int,
    radius_range_px: tuple[float, float] = (1.0, 150.0),
    families: tuple[str, ...] = FAMILIES,
) -> SceneSettings:
    """Varied settings of a ``size_px`` square scene, for training and validating detectors.

    Draws a family (uniformly from ``families``), a radius range inside ``radius_range_px``
    and no larger than a fifth of the scene (from nearly monodisperse to 1:50), a density
    (sparse, crowded, or packed: a fifth of non-seed scenes, and every ``packed`` one), and
    the family's look: levels, colours, rims, noise, blur, illumination and JPEG quality.
    """
    family = str(rng.choice(families))
    lo_bound = radius_range_px[0]
    hi_bound = max(lo_bound, min(radius_range_px[1], size_px / 5.0))
    r_min = float(np.exp(rng.uniform(np.log(lo_bound), np.log(max(lo_bound, hi_bound / 4.0)))))
    ratio = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
    r_max = min(hi_bound, r_min * ratio)
    median = float(np.exp(rng.uniform(np.log(r_min), np.log(np.sqrt(r_min * r_max)) + 1e-9)))
    log_sd = float(rng.uniform(0.2, 1.0))
    packed = family == "packed" or (family != "seed" and rng.uniform() < 0.2)
    # Expected disk area of the truncated lognormal, by sampling it.
    sample = draw_radii(np.random.default_rng(0), 256, median, log_sd, r_min, r_max)
    coverage = float(rng.choice([rng.uniform(0.02, 0.15), rng.uniform(0.2, 0.55)]))
    common = dict(
        width_px=size_px,
        height_px=size_px,
        radius_min_px=r_min,
        radius_max_px=r_max,
        radius_median_px=median,
        radius_log_sd=log_sd,
        n_droplets=int(max(3, coverage * size_px**2 / np.mean(np.pi * sample**2))),
        min_distance_fraction=float(rng.uniform(0.85, 1.4)),
        background_variation=float(rng.uniform(0.0, 0.2)),
        blur_sigma_px=float(rng.uniform(0.3, 1.5)),
        noise_sd=float(rng.uniform(0.003, 0.03)),
        jpeg_quality=None if rng.uniform() < 0.4 else int(rng.integers(70, 98)),
    )
    if packed:
        common.update(
            placement="packed",
            n_droplets=20_000,
            packed_area_fraction=float(rng.uniform(0.85, 0.92)),
            packing_flattening=float(rng.uniform(0.01, 0.08)),
        )
    if family == "seed":
        return SceneSettings(**common, **_random_seed_look(rng))
    if family == "fluorescence":
        grey = rng.uniform() < 0.6
        colour = np.clip(rng.uniform(0.0, 1.0, 3) + rng.uniform(0.0, 0.4), 0.0, 1.0)
        emission = (1.0, 1.0, 1.0) if grey else tuple(float(v) for v in colour)
        look = FluorescenceLook(
            emission_rgb=emission,
            background_level=float(rng.uniform(0.0, 0.15)),
            droplet_level=float(rng.uniform(0.25, 0.9)),
            brightness_log_sd=float(rng.uniform(0.0, 0.35)),
            edge_brightening=float(rng.uniform(0.0, 0.8)),
            dome=float(rng.uniform(0.0, 1.0) ** 2),
            out_of_focus_fraction=float(rng.uniform(0.0, 0.3)),
            haze=float(rng.uniform(0.0, 0.1)),
            photons_full_scale=float(np.exp(rng.uniform(np.log(8.0), np.log(2000.0)))),
            read_noise_photons=float(rng.uniform(0.0, 2.0)),
            contact_gap_px=float(rng.uniform(0.0, 2.5)),
        )
        return SceneSettings(**{**common, "jpeg_quality": None}, family=family, fluorescence=look)
    if family == "phase":
        look = PhaseLook(
            mode="dic" if rng.uniform() < 0.4 else "phase",
            phase_per_radius_px=float(rng.uniform(0.05, 0.3)),
            phase_saturation=float(rng.uniform(0.8, 2.0)),
            index_sign=float(rng.choice([1.0, -1.0], p=[0.75, 0.25])),
            contrast=float(rng.uniform(0.25, 0.7)),
            halo_sigma_px=float(rng.uniform(2.0, 15.0)),
            shear_angle_deg=float(rng.uniform(0.0, 360.0)),
            shear_px=float(rng.uniform(0.7, 2.0)),
        )
        grey = float(rng.uniform(0.3, 0.7))
        tint = tuple(float(v) for v in np.clip(grey * (1.0 + rng.uniform(-0.08, 0.08, 3)), 0.0, 1.0))
        return SceneSettings(**common, family=family, background_rgb=tint, phase=look)
    base = _FAMILY_PRESETS["packed"]["brightfield"] if family == "packed" else BrightfieldLook()
    look = dataclasses.replace(
        base,
        body_transmission=float(base.body_transmission * rng.uniform(0.9, 1.15)),
        rim_width=float(rng.uniform(0.08, 0.35)),
        rim_transmission=float(rng.uniform(0.05, 0.7)),
        rim_asymmetry=float(rng.uniform(0.0, 0.8)),
        light_angle_deg=float(rng.uniform(0.0, 360.0)),
        centre_gain=float(rng.uniform(0.0, 0.6)),
        centre_size=float(rng.uniform(0.15, 0.5)),
        specular_gain=float(rng.uniform(0.0, 0.8)) if rng.uniform() < 0.5 else 0.0,
        halo_gain=float(rng.uniform(0.0, 0.25)),
        bubble_fraction=float(rng.uniform(0.0, 0.4)) if family == "brightfield" else 0.0,
        bubble_radius_range_px=(r_min, max(r_min, min(r_max, 4.0 * r_min))),
        inclusion_min_radius_px=float(max(8.0, 3.0 * r_min)),
        inclusions_per_droplet=float(rng.uniform(0.0, 3.0)),
        contact_gap_px=float(rng.uniform(0.0, 2.0)),
    )
    level = float(rng.uniform(0.3, 0.55)) if family == "packed" else float(rng.uniform(0.55, 0.9))
    field_rgb = tuple(float(v) for v in np.clip(level * (1.0 + rng.uniform(-0.1, 0.1, 3)), 0.0, 1.0))
    return SceneSettings(**common, family=family, background_rgb=field_rgb, brightfield=look)


def _random_seed_look(rng: np.random.Generator) -> dict:
    """Random seed-family look: substrate and droplet colours (darker or lighter), rims, shading, caustics."""
    background = rng.uniform(0.25, 0.9) * (1.0 + rng.uniform(-0.15, 0.15, 3))
    n_colours = int(rng.integers(1, 4))
    darker = rng.uniform() < 0.8
    palette = []
    for _ in range(n_colours):
        if darker:
            palette.append(np.clip(background * rng.uniform(0.3, 0.9) + rng.uniform(-0.15, 0.15, 3), 0.02, 0.98))
        else:
            palette.append(np.clip(background + rng.uniform(0.1, 0.4) + rng.uniform(-0.1, 0.1, 3), 0.02, 0.98))
    caustic = np.clip(rng.uniform(0.7, 1.0, 3) - rng.uniform(0.0, 0.5) * np.eye(3)[rng.integers(3)], 0.0, 1.0)
    return dict(
        background_rgb=tuple(float(v) for v in np.clip(background, 0.05, 0.95)),
        palette_rgb=tuple(tuple(float(v) for v in c) for c in palette),
        composition_concentration=tuple(float(v) for v in rng.uniform(0.2, 1.0, n_colours)),
        rim_darkness=float(rng.uniform(0.0, 0.6)),
        rim_width=float(rng.uniform(0.15, 0.45)),
        shading=float(rng.uniform(0.0, 0.4)),
        caustic_rgb=tuple(float(v) for v in caustic),
        caustic_strength=float(rng.uniform(0.0, 1.0)),
        caustic_offset=float(rng.uniform(0.3, 0.8)),
        caustic_size=float(rng.uniform(0.2, 0.5)),
        caustic_spill=float(rng.uniform(0.0, 0.8)),
        caustic_onset_radius_px=float(rng.uniform(1.0, 3.0)),
    )


def make_scene(seed: int, settings: SceneSettings = SceneSettings()) -> tuple[np.ndarray, pd.DataFrame]:
    """Draw droplets and render them as an 8-bit image.

    Parameters
    ----------
    seed : seeds a ``numpy.random.Generator``; the scene is a function of it and ``settings``.
    settings : what to draw.

    Returns
    -------
    image : uint8 ``(height_px, width_px, 3)`` RGB (divide by 255 for [0, 1]).
    truth : one row per droplet actually placed, columns ``x, y, radius`` and then the
        family's own: seed ``composition_0 .. composition_{k-1}`` (``k`` palette colours,
        each row sums to 1); every other family ``contacts`` (neighbours touched, within
        0.5 px) and fluorescence ``in_focus``; brightfield and packed ``bubble``,
        ``inclusions`` (small particles drawn inside, not droplets).
    """
    image, truth = _render(seed, settings)
    image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if settings.jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=settings.jpeg_quality)
        image = np.asarray(Image.open(buffer).convert("RGB"))
    return image, truth


def make_scene_uint16(seed: int, settings: SceneSettings = SceneSettings()) -> tuple[np.ndarray, pd.DataFrame]:
    """The same scene as ``make_scene`` as a 16-bit camera would record it (no JPEG).

    Returns
    -------
    image : uint16. Fluorescence: counts, the camera offset plus the signal times
        ``full_scale_counts`` (dim, as real 16-bit fluorescence is), ``(h, w)`` for a grey
        emission colour and ``(h, w, 3)`` for another; other families: ``(h, w, 3)``,
        [0, 1] scaled to 0-65535.
    truth : as ``make_scene``.
    """
    image, truth = _render(seed, settings)
    if settings.family == "fluorescence":
        look = settings.fluorescence
        emission = np.asarray(look.emission_rgb)
        grey = bool(np.all(emission == emission[0]))
        signal = image[..., 0] / emission[0] if grey else image
        counts = look.offset_counts + signal * look.full_scale_counts
        return np.round(np.clip(counts, 0, 65535)).astype(np.uint16), truth
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16), truth


def _render(seed: int, settings: SceneSettings) -> tuple[np.ndarray, pd.DataFrame]:
    """Image ``(h, w, 3)`` float (noise added, not yet clipped to [0, 1]) and truth of a scene."""
    rng = np.random.default_rng(seed)
    if settings.family == "seed":
        return _render_seed(rng, settings)
    x, y, radius, bubble = _layout(rng, settings)
    if settings.family == "fluorescence":
        signal, columns = render_fluorescence(rng, settings, x, y, radius)
        image = signal[..., None] * np.asarray(settings.fluorescence.emission_rgb)
    else:
        if settings.family == "phase":
            image, columns = render_phase(rng, settings, x, y, radius)
        else:
            image, columns = render_brightfield(rng, settings, x, y, radius, bubble)
        image = image + rng.normal(0.0, settings.noise_sd, size=image.shape)
    truth = pd.DataFrame({"x": x, "y": y, "radius": radius, **columns, "contacts": contact_counts(x, y, radius, 0.5)})
    return image, truth


def _render_seed(rng: np.random.Generator, settings: SceneSettings) -> tuple[np.ndarray, pd.DataFrame]:
    """The seed family: image ``(h, w, 3)`` float with noise, and truth; the same draws in the same order as ever."""
    radii = np.sort(
        draw_radii(
            rng,
            settings.n_droplets,
            settings.radius_median_px,
            settings.radius_log_sd,
            settings.radius_min_px,
            settings.radius_max_px,
        )
    )[::-1]
    x, y, radius, _ = place_random(rng, radii, settings.width_px, settings.height_px, settings.min_distance_fraction)
    k = len(settings.palette_rgb)
    composition = rng.dirichlet(settings.composition_concentration, size=len(radius))
    image = _background(rng, settings)
    colours = composition @ np.asarray(settings.palette_rgb, dtype=np.float64)
    image = _paint_droplets(image, x, y, radius, colours, settings)
    if settings.blur_sigma_px > 0:
        image = ndimage.gaussian_filter(image, sigma=(settings.blur_sigma_px, settings.blur_sigma_px, 0))
    image = image + rng.normal(0.0, settings.noise_sd, size=image.shape)
    truth = pd.DataFrame({"x": x, "y": y, "radius": radius})
    for index in range(k):
        truth[f"composition_{index}"] = composition[:, index]
    return image, truth


def render_seed_droplets(
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    composition: np.ndarray,
    settings: SceneSettings,
    background_seed: int,
    noise_seed: int,
) -> np.ndarray:
    """Given droplets drawn in the seed family's look, as ``make_scene`` renders them.

    Parameters
    ----------
    x, y, radius : ``(n,)`` centres (column, row) and radii, px; centres may lie outside the image.
    composition : ``(n, k)`` mixing weights of ``settings.palette_rgb``.
    settings : the look and image size.
    background_seed : seeds the uneven illumination (keep it for every frame of one movie).
    noise_seed : seeds the noise.

    Returns
    -------
    uint8 ``(height_px, width_px, 3)`` RGB.
    """
    image = _background(np.random.default_rng(background_seed), settings)
    colours = np.asarray(composition, dtype=np.float64) @ np.asarray(settings.palette_rgb, dtype=np.float64)
    image = _paint_droplets(
        image, np.asarray(x, float), np.asarray(y, float), np.asarray(radius, float), colours, settings
    )
    if settings.blur_sigma_px > 0:
        image = ndimage.gaussian_filter(image, sigma=(settings.blur_sigma_px, settings.blur_sigma_px, 0))
    image = image + np.random.default_rng(noise_seed).normal(0.0, settings.noise_sd, size=image.shape)
    image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if settings.jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=settings.jpeg_quality)
        image = np.asarray(Image.open(buffer).convert("RGB"))
    return image


def _layout(rng: np.random.Generator, settings: SceneSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres, radii and bubble flags ``(n,)`` of a non-seed scene's droplets, largest first.

    Bubbles (brightfield and packed families) take ``bubble_fraction`` of the objects, with
    their own radius range. Packed placement draws droplets until their summed area reaches
    what ``packed_area_fraction`` asks for (at most ``n_droplets``).
    """
    s = settings
    bubble_fraction = s.brightfield.bubble_fraction if s.family in ("brightfield", "packed") else 0.0

    def draw(n):
        radii = draw_radii(rng, n, s.radius_median_px, s.radius_log_sd, s.radius_min_px, s.radius_max_px)
        bubble = rng.uniform(size=n) < bubble_fraction
        bubble_radii = rng.uniform(*s.brightfield.bubble_radius_range_px, int(bubble.sum()))
        radii[bubble] = np.clip(bubble_radii, s.radius_min_px, s.radius_max_px)
        return radii, bubble

    if s.placement == "packed":
        radii, bubble = draw(min(256, s.n_droplets))
        # Centres stay in the image, so droplets on the border hang over it by about a radius.
        reach = float(np.mean(radii)) if len(radii) else 0.0
        grown = (1.0 + s.packing_flattening) ** 2
        target = grown * s.packed_area_fraction * (s.width_px + 2.0 * reach) * (s.height_px + 2.0 * reach)
        while np.pi * np.sum(radii**2) < target and len(radii) < s.n_droplets:
            more, more_bubble = draw(min(256, s.n_droplets - len(radii)))
            radii, bubble = np.concatenate([radii, more]), np.concatenate([bubble, more_bubble])
        count = int(np.searchsorted(np.cumsum(np.pi * radii**2), target)) + 1
        radii, bubble = radii[:count], bubble[:count]
        order = np.argsort(-radii, kind="stable")
        # Packed at slightly smaller radii, so the droplets grown back by the flattening have the drawn ones.
        shrink = 1.0 + s.packing_flattening
        x, y, _ = pack(rng, radii[order] / shrink, s.width_px, s.height_px, s.packing_flattening)
        return x, y, radii[order], bubble[order]  # the radii pack returns, without its round-off
    radii, bubble = draw(s.n_droplets)
    order = np.argsort(-radii, kind="stable")
    x, y, radius, kept = place_random(rng, radii[order], s.width_px, s.height_px, s.min_distance_fraction)
    return x, y, radius, bubble[order][kept]


def _background(rng: np.random.Generator, settings: SceneSettings) -> np.ndarray:
    """Substrate ``(h, w, 3)`` float: flat colour under smooth, uneven illumination."""
    coarse = rng.normal(0.0, 1.0, size=(4, 5))
    light = 1.0 + settings.background_variation * resize(coarse, (settings.height_px, settings.width_px), order=3)
    return light[..., None] * np.asarray(settings.background_rgb, dtype=np.float64)


def _paint_droplets(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: np.ndarray, colours: np.ndarray, settings: SceneSettings
) -> np.ndarray:
    """``image`` ``(h, w, 3)`` with the droplets ``(n,)`` (colours ``(n, 3)``) composited over it.

    Each droplet covers a square patch of ``2 * half + 1`` pixels around its nearest
    pixel; droplets with the same ``half`` are rendered together, then composited one by
    one (large first, so small droplets stay on top) on a padded canvas so patches never
    need clipping at the border.
    """
    extent = max(1.0, settings.caustic_offset + 3.0 * settings.caustic_size)
    half = np.ceil(radius * extent + 0.5).astype(int)
    pad = int(half.max(initial=0))
    canvas = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    col, row = np.rint(x).astype(int), np.rint(y).astype(int)
    for size in np.unique(half)[::-1]:
        members = np.flatnonzero(half == size)
        alpha, premultiplied = _droplet_layers(
            x[members] - col[members], y[members] - row[members], radius[members], colours[members], size, settings
        )
        for index, member in enumerate(members):
            top, left = row[member] + pad - size, col[member] + pad - size
            patch = canvas[top : top + 2 * size + 1, left : left + 2 * size + 1]
            patch *= 1.0 - alpha[index]
            patch += premultiplied[index]
    return canvas[pad : pad + image.shape[0], pad : pad + image.shape[1]]


def _droplet_layers(
    dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, colours: np.ndarray, half: int, settings: SceneSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity ``(n, p, p, 1)`` and premultiplied colour ``(n, p, p, 3)`` of droplets, ``p = 2 * half + 1``.

    ``dx, dy`` ``(n,)`` are the centres' offsets from their patch's middle pixel. Each
    pixel is supersampled; a sub-sample inside the disk is opaque body colour (darkened
    towards the rim, shaded from dark top to light bottom) mixed towards the caustic
    colour by a Gaussian highlight below the centre; outside the disk only the
    highlight's spill is seen.
    """
    # float32 halves the time of this, the generator's hot loop; 8-bit output hides the difference.
    dx, dy, radius, colours = (np.asarray(a, dtype=np.float32) for a in (dx, dy, radius, colours))
    offsets = (np.arange(_SUPERSAMPLE, dtype=np.float32) + 0.5) / _SUPERSAMPLE - 0.5
    grid = (np.arange(-half, half + 1, dtype=np.float32)[:, None] + offsets).ravel()
    scale = radius[:, None, None]
    u = (grid[None, None, :] - dx[:, None, None]) / scale
    v = (grid[None, :, None] - dy[:, None, None]) / scale
    distance = np.hypot(u, v)
    inside = (distance <= 1.0)[..., None]
    strength = settings.caustic_strength * -np.expm1(-((radius / settings.caustic_onset_radius_px) ** 2))
    caustic = (
        strength[:, None, None, None]
        * np.exp(-(u**2 + (v - settings.caustic_offset) ** 2) / (2.0 * settings.caustic_size**2))[..., None]
    )
    rim = settings.rim_darkness * np.clip((distance - (1.0 - settings.rim_width)) / settings.rim_width, 0.0, 1.0)
    brightness = (1.0 - rim) * (1.0 + settings.shading * np.clip(v, -1.0, 1.0))
    body = colours[:, None, None, :] * brightness[..., None]
    caustic_rgb = np.asarray(settings.caustic_rgb, dtype=np.float32)
    layer = np.where(inside, body + caustic * (caustic_rgb - body), caustic_rgb)
    opacity = np.where(inside, 1.0, settings.caustic_spill * caustic)
    blocks = (len(radius), 2 * half + 1, _SUPERSAMPLE, 2 * half + 1, _SUPERSAMPLE)
    alpha = opacity.reshape(blocks + (1,)).mean(axis=(2, 4))
    premultiplied = (opacity * layer).reshape(blocks + (3,)).mean(axis=(2, 4))
    return alpha, premultiplied


@functools.lru_cache(maxsize=1)
def _demo_scene() -> tuple[bytes, pd.DataFrame]:
    image, truth = make_scene(0)
    return encode_png(image), truth


def demo_image_bytes() -> bytes:
    """PNG of ``make_scene(0)`` with default settings: the app's built-in demo image (cached)."""
    return _demo_scene()[0]


def demo_truth() -> pd.DataFrame:
    """Truth table of the demo image (a copy; the cached one stays untouched)."""
    return _demo_scene()[1].copy()


def encode_tiff(image: np.ndarray) -> bytes:
    """TIFF bytes (tifffile) of a ``(h, w)`` or ``(h, w, 3)`` image, e.g. the uint16 of ``make_scene_uint16``."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(image), photometric="rgb" if np.ndim(image) == 3 else "minisblack")
    return buffer.getvalue()


def write_scene(
    seed: int, out_dir: str | os.PathLike, settings: SceneSettings = SceneSettings(), bit_depth: int = 8
) -> str:
    """Write the scene and ``truth.csv`` into ``out_dir`` (created); return the image's file name.

    ``bit_depth`` 8 writes ``scene.png`` (``make_scene``), 16 writes ``scene.tif``
    (``make_scene_uint16``).
    """
    if bit_depth not in (8, 16):
        raise ValueError("bit depth must be 8 or 16")
    os.makedirs(out_dir, exist_ok=True)
    if bit_depth == 8:
        image, truth = make_scene(seed, settings)
        name, data = "scene.png", encode_png(image)
    else:
        image, truth = make_scene_uint16(seed, settings)
        name, data = "scene.tif", encode_tiff(image)
    with open(os.path.join(out_dir, name), "wb") as handle:
        handle.write(data)
    truth.to_csv(os.path.join(out_dir, "truth.csv"), index=False, float_format="%.4f")
    return name


def gaussian_blob_scene(
    seed: int,
    noise_sd: float,
    n_blobs: int = 80,
    shape_px: tuple[int, int] = (160, 200),
    background: float = 0.4,
    amplitude: float = 0.3,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Separated Gaussian blobs drawn exactly as the ``gaussian`` model draws them.

    A scene on which a model is exactly right, with white noise of ``noise_sd``: the
    control for uncertainty calibration (any miscalibration on it is the inference's,
    not the model's).

    Returns
    -------
    image : (h, w, 3) float32 grey RGB in [0, 1] for ``shape_px`` ``(h, w)``.
    truth : x, y, radius (``sqrt(2) sigma``), in pixels.
    """
    rng = np.random.default_rng(seed)
    height, width = shape_px
    spacing = 18
    grid_y, grid_x = np.mgrid[12 : height - 12 : spacing, 12 : width - 12 : spacing]
    slots = rng.choice(grid_x.size, n_blobs, replace=False)
    x = grid_x.ravel()[slots] + rng.uniform(-3.0, 3.0, n_blobs)
    y = grid_y.ravel()[slots] + rng.uniform(-3.0, 3.0, n_blobs)
    sigma = rng.uniform(1.5, 2.5, n_blobs)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.full(shape_px, background)
    for xi, yi, si in zip(x, y, sigma):
        image += amplitude * np.exp(-((cols - xi) ** 2 + (rows - yi) ** 2) / (2.0 * si**2))
    image = np.clip(image + rng.normal(0.0, noise_sd, shape_px), 0.0, 1.0)
    truth = pd.DataFrame({"x": x, "y": y, "radius": np.sqrt(2.0) * sigma})
    return np.repeat(image[:, :, None], 3, axis=2).astype(np.float32), truth
