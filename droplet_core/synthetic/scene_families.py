"""How each family of synthetic scene looks: fluorescence, brightfield (and packed emulsions), phase
contrast and DIC.

Each ``render_*`` function takes droplets already placed (``x, y, radius``, see
``scene_geometry``), draws them in their own bounding boxes on a background, applies the optics
(blur, uneven illumination) and the sensor (noise), and returns the image as floats with the
family's own truth columns. ``droplet_core.synthetic.scenes`` chooses the family, places the droplets
and turns the floats into 8-bit or 16-bit pixels.

The looks follow what the microscopes show:

- fluorescence: droplets emit; nearly uniform disks, a little brighter towards the edge
  (dye at the interface) or domed (dye in the volume), on a dark field; droplets out of the
  focal plane are dim, blurred disks; photon (Poisson) noise dominates.
- brightfield (transmitted light): the droplet's edge refracts light out of the objective, so
  a thick dark rim, darker and thicker on the side away from the light; the droplet focuses
  light into a bright centre; a thin bright halo (Becke line) just outside; air bubbles have
  a far thicker, blacker rim; large droplets carry small inclusions.
- packed emulsions: brightfield of droplets pressed together: bright bodies, dark lines
  where they meet, dark Plateau borders between them, a specular spot.
- phase contrast: the image is the droplets' optical path through a high-pass filter: dark
  (or bright) droplets with a bright (or dark) halo and shade-off inside large ones; DIC: the
  path's derivative along the shear, which looks like relief lit from one side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from droplet_core.synthetic.scene_geometry import Shader, contacts_of, paint

if TYPE_CHECKING:
    from droplet_core.synthetic.scenes import SceneSettings

# A droplet's phase changes over a shear length by less than its high-pass does over the halo;
# this factor gives DIC about the contrast of phase contrast at the same ``contrast``.
_DIC_GAIN = 2.5


@dataclass(frozen=True)
class FluorescenceLook:
    """Fluorescent droplets on a dark field. Signal 1 is the sensor's full scale.

    Attributes
    ----------
    emission_rgb : colour of the displayed emission ((1, 1, 1): a grey camera).
    background_level : signal of the empty field (autofluorescence, stray light).
    droplet_level : signal of an in-focus droplet's centre (before brightness variation).
    brightness_log_sd : droplet-to-droplet spread of the dye signal (sd of its log).
    edge_brightening : the signal grows by this factor times ``(d / r)**2`` towards the edge.
    dome : 0 = flat disk (a thin optical section); 1 = the projected thickness of a sphere.
    out_of_focus_fraction : share of droplets out of the focal plane (truth ``in_focus``).
    defocus_blur_range : their blur sd as a fraction of their radius (uniform in the range).
    defocus_dimming_range : their peak signal relative to an in-focus droplet's.
    haze : out-of-focus glow around the droplets: this fraction of their signal, spread
        with a Gaussian of twice the median radius.
    photons_full_scale : photons collected at signal 1 (Poisson noise; fewer = noisier).
    read_noise_photons : sd of the sensor's Gaussian read noise, in photons.
    full_scale_counts, offset_counts : 16-bit counts of signal 1 and of signal 0 (camera offset).
    contact_gap_px : dark film between pressed droplets (packed placement).
    """

    emission_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_level: float = 0.04
    droplet_level: float = 0.4
    brightness_log_sd: float = 0.15
    edge_brightening: float = 0.2
    dome: float = 0.0
    out_of_focus_fraction: float = 0.15
    defocus_blur_range: tuple[float, float] = (0.15, 0.5)
    defocus_dimming_range: tuple[float, float] = (0.15, 0.5)
    haze: float = 0.04
    photons_full_scale: float = 20.0
    read_noise_photons: float = 0.7
    full_scale_counts: float = 8000.0
    offset_counts: float = 100.0
    contact_gap_px: float = 1.5


@dataclass(frozen=True)
class BrightfieldLook:
    """Transmitted-light droplets; values are transmissions relative to the empty field.

    Attributes
    ----------
    body_transmission : droplet interior away from rim and centre (1 = as the field).
    rim_width : dark rim thickness as a fraction of the radius (on average round the droplet).
    rim_transmission : transmission at the darkest point of the rim.
    rim_asymmetry : 0..1: how much thicker and darker the rim is on the side away from the light.
    light_angle_deg : direction the light comes from (0 = from the right, 90 = from below).
    centre_gain, centre_size, centre_offset : the focused bright centre: extra
        transmission, Gaussian sd and shift towards the light (fractions of the radius).
    specular_gain, specular_size, specular_offset : a small specular spot, likewise.
    halo_gain, halo_width_px : bright Becke line just outside the edge.
    droplet_tint_rgb : colour the droplets' contents multiply the light by.
    size_jitter : per-droplet relative spread of rim width, darkness and centre gain.
    bubble_fraction : share of objects that are air bubbles (truth ``bubble``).
    bubble_radius_range_px : bubbles' radii, uniform in the range (clipped to the scene's).
    bubble_rim_width, bubble_rim_transmission : bubbles' thick black rim.
    inclusion_min_radius_px : droplets at least this large may carry inclusions.
    inclusions_per_droplet : mean count (Poisson) of inclusions in such a droplet (truth
        ``inclusions``); inclusions are small particles, not droplets of the truth.
    contact_gap_px : film of the continuous phase between pressed droplets (packed placement).
    """

    body_transmission: float = 1.08
    rim_width: float = 0.22
    rim_transmission: float = 0.25
    rim_asymmetry: float = 0.5
    light_angle_deg: float = 225.0
    centre_gain: float = 0.35
    centre_size: float = 0.3
    centre_offset: float = 0.15
    specular_gain: float = 0.0
    specular_size: float = 0.08
    specular_offset: float = 0.35
    halo_gain: float = 0.12
    halo_width_px: float = 1.5
    droplet_tint_rgb: tuple[float, float, float] = (1.0, 0.99, 0.96)
    size_jitter: float = 0.15
    bubble_fraction: float = 0.3
    bubble_radius_range_px: tuple[float, float] = (2.0, 8.0)
    bubble_rim_width: float = 0.62
    bubble_rim_transmission: float = 0.08
    inclusion_min_radius_px: float = 20.0
    inclusions_per_droplet: float = 2.0
    contact_gap_px: float = 1.0


@dataclass(frozen=True)
class PhaseLook:
    """Phase contrast or DIC of transparent droplets.

    Attributes
    ----------
    mode : ``"phase"`` (Zernike phase contrast) or ``"dic"`` (differential interference contrast).
    phase_per_radius_px : optical phase (rad) at a droplet's centre per pixel of its radius.
    phase_saturation : phases saturate smoothly towards this (rad): thick droplets look alike.
    index_sign : +1 droplets optically denser than the medium (dark in phase contrast with
        a bright halo), -1 less dense (bright, dark halo).
    contrast : intensity change per radian of filtered phase, relative to the field.
    halo_sigma_px : scale of the phase ring's low-pass: the halo's width (phase mode).
    shear_angle_deg, shear_px : DIC shear direction and length (Gaussian derivative scale).
    """

    mode: str = "phase"
    phase_per_radius_px: float = 0.12
    phase_saturation: float = 1.4
    index_sign: float = 1.0
    contrast: float = 0.45
    halo_sigma_px: float = 6.0
    shear_angle_deg: float = 45.0
    shear_px: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("phase", "dic"):
            raise ValueError(f"phase mode must be 'phase' or 'dic', not {self.mode!r}")


def illumination(rng: np.random.Generator, height_px: int, width_px: int, variation: float) -> np.ndarray:
    """Smooth uneven illumination ``(h, w)`` around 1: random large-scale shading and a vignette."""
    coarse = rng.normal(0.0, 1.0, size=(4, 4))
    shading = resize(coarse, (height_px, width_px), order=3)
    rows, cols = np.mgrid[0:height_px, 0:width_px]
    corner = np.hypot((rows - height_px / 2) / height_px, (cols - width_px / 2) / width_px) / np.sqrt(0.5)
    vignette = 1.0 - rng.uniform(0.5, 1.5) * corner**2
    return (1.0 + variation * shading) * (1.0 + variation * vignette - variation)


def _contacts(settings: SceneSettings, x, y, radius, gap_px: float):
    """Radical-line cuts (``contacts_of``) where droplets are pressed together (packed placement), else None."""
    return contacts_of(x, y, radius, gap_px) if settings.placement == "packed" else None


def _coverage(edge_px: np.ndarray) -> np.ndarray:
    """Share of each pixel inside the outline, from the signed distance to it (antialiased edge)."""
    return np.clip(edge_px + 0.5, 0.0, 1.0)


def render_fluorescence(
    rng: np.random.Generator, settings: SceneSettings, x: np.ndarray, y: np.ndarray, radius: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Fluorescence: noisy signal ``(h, w)`` (signal 1 = full scale, before the offset) and truth columns.

    Truth column ``in_focus`` (bool): out-of-focus droplets are drawn dim and blurred.
    """
    look: FluorescenceLook = settings.fluorescence
    n, height, width = len(x), settings.height_px, settings.width_px
    in_focus = rng.uniform(size=n) >= look.out_of_focus_fraction
    level = look.droplet_level * np.exp(rng.normal(0.0, look.brightness_log_sd, n))
    defocus_sd_px = radius * rng.uniform(*look.defocus_blur_range, n) + 1.0
    level = np.where(in_focus, level, level * rng.uniform(*look.defocus_dimming_range, n))
    light = illumination(rng, height, width, settings.background_variation)

    def emission(members, u, v, edge):
        rho2 = np.minimum(u**2 + v**2, 1.0)
        profile = (1.0 - look.dome + look.dome * np.sqrt(1.0 - rho2)) * (1.0 + look.edge_brightening * rho2)
        cover = _coverage(edge)
        return cover[..., None], (cover * profile * level[members, None, None])[..., None]

    def defocused(members, u, v, edge):
        _, glow = emission(members, u, v, edge)
        for index, member in enumerate(members):
            # Truncated at the 3 sd the patch reaches.
            glow[index, ..., 0] = ndimage.gaussian_filter(glow[index, ..., 0], defocus_sd_px[member], truncate=3.0)
        return np.zeros_like(glow), glow  # emission from another plane adds to what is in focus

    canvas = np.zeros((height, width, 1), dtype=np.float32)
    blurred = np.flatnonzero(~in_focus)
    if len(blurred):
        reach = 1.0 + 3.0 * defocus_sd_px[blurred] / radius[blurred]
        canvas = paint(
            canvas,
            x[blurred],
            y[blurred],
            radius[blurred],
            lambda m, *f: defocused(blurred[m], *f),
            extent=reach,
            margin_px=2,
        )
    sharp = np.flatnonzero(in_focus)
    contacts = _contacts(settings, x[sharp], y[sharp], radius[sharp], look.contact_gap_px)
    canvas = paint(canvas, x[sharp], y[sharp], radius[sharp], lambda m, *f: emission(sharp[m], *f), contacts=contacts)[
        ..., 0
    ]
    if look.haze > 0 and n:
        canvas = canvas + look.haze * ndimage.gaussian_filter(canvas, 2.0 * float(np.median(radius)))
    signal = (look.background_level + canvas) * light
    if settings.blur_sigma_px > 0:
        signal = ndimage.gaussian_filter(signal, settings.blur_sigma_px)
    photons = rng.poisson(np.clip(signal, 0.0, None) * look.photons_full_scale)
    noisy = (photons + rng.normal(0.0, look.read_noise_photons, photons.shape)) / look.photons_full_scale
    return noisy, {"in_focus": in_focus}


def _brightfield_shader(
    look: BrightfieldLook,
    radius: np.ndarray,
    rim_width: np.ndarray,
    rim_transmission: np.ndarray,
    centre_gain: np.ndarray,
    specular_gain: np.ndarray,
) -> Shader:
    """Transmission shader for ``paint``; per droplet ``(n,)``: radius, rim width and transmission,
    centre and specular gains."""
    light = np.deg2rad(look.light_angle_deg)
    lx, ly = np.float32(np.cos(light)), np.float32(np.sin(light))
    tint = np.asarray(look.droplet_tint_rgb, dtype=np.float32)
    # float32 throughout: this runs over every pixel of every droplet's box.
    radius, rim_width, rim_transmission, centre_gain, specular_gain = (
        np.asarray(a, dtype=np.float32)[:, None, None]
        for a in (radius, rim_width, rim_transmission, centre_gain, specular_gain)
    )

    def shade(members, u, v, edge):
        depth = np.clip(edge / radius[members], 0.0, 1.0)  # 0 at the outline, about 1 at the centre
        facing = -(u * lx + v * ly) / np.maximum(np.hypot(u, v), 1e-6)  # 1 on the side away from the light
        width = rim_width[members] * (1.0 + look.rim_asymmetry * facing)
        darker_in_shadow = np.clip(1.0 + 0.5 * look.rim_asymmetry * facing, 0.0, None)
        darkness = np.clip((1.0 - rim_transmission[members]) * darker_in_shadow, 0.0, 1.0)
        # Dark across the outer half of the rim, then a quick rise to the body.
        t = np.clip(2.0 * depth / np.maximum(width, 1e-3) - 1.0, 0.0, 1.0)
        body = look.body_transmission * (1.0 - darkness * (1.0 - t * t * (3.0 - 2.0 * t)))
        cu, cv = u - look.centre_offset * lx, v - look.centre_offset * ly
        body += centre_gain[members] * np.exp(-(cu**2 + cv**2) / (2.0 * look.centre_size**2))
        if look.specular_gain > 0:
            su, sv = u - look.specular_offset * lx, v - look.specular_offset * ly
            body += specular_gain[members] * np.exp(-(su**2 + sv**2) / (2.0 * look.specular_size**2))
        cover = _coverage(edge)
        outside = 1.0 + look.halo_gain * np.exp(np.minimum(edge, 0.0) / look.halo_width_px)
        # 1 - transmission, where transmission = cover * body * tint + (1 - cover) * outside.
        return (1.0 - (1.0 - cover) * outside)[..., None] - (cover * body)[..., None] * tint, None

    return shade


def render_brightfield(
    rng: np.random.Generator,
    settings: SceneSettings,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    bubble: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Transmitted light: image ``(h, w, 3)`` in [0, 1] before noise and truth columns.

    Truth columns ``bubble`` (bool, given) and ``inclusions`` (int: small particles drawn
    inside the droplet, which are not droplets of the truth).
    """
    look: BrightfieldLook = settings.brightfield
    n, height, width = len(x), settings.height_px, settings.width_px

    def jitter():
        return 1.0 + look.size_jitter * rng.uniform(-1.0, 1.0, n)

    rim_width = np.where(bubble, look.bubble_rim_width, look.rim_width) * jitter()
    rim_transmission = np.clip(np.where(bubble, look.bubble_rim_transmission, look.rim_transmission) * jitter(), 0, 1)
    centre_gain = look.centre_gain * jitter()
    specular_gain = np.where(bubble, 0.5 * look.specular_gain, look.specular_gain) * jitter()
    light = illumination(rng, height, width, settings.background_variation)
    canvas = (light[..., None] * np.asarray(settings.background_rgb, dtype=np.float32)).astype(np.float32)
    margin = int(np.ceil(3.0 * look.halo_width_px)) + 1  # the halo is 5 % of its peak 3 widths out
    shader = _brightfield_shader(look, radius, rim_width, rim_transmission, centre_gain, specular_gain)
    canvas = paint(
        canvas, x, y, radius, shader, margin_px=margin, contacts=_contacts(settings, x, y, radius, look.contact_gap_px)
    )
    # Inclusions: small particles inside large droplets, clear of the rim.
    hosts = np.flatnonzero((radius >= look.inclusion_min_radius_px) & ~bubble)
    counts = np.zeros(n, dtype=int)
    counts[hosts] = rng.poisson(look.inclusions_per_droplet, len(hosts))
    owner = np.repeat(np.arange(n), counts)
    if len(owner):
        small = rng.uniform(1.2, np.maximum(1.5, 0.08 * radius[owner]))
        room = np.maximum((1.0 - 1.3 * rim_width[owner]) * radius[owner] - small, 0.0)
        where = room * np.sqrt(rng.uniform(size=len(owner)))
        angle = rng.uniform(0.0, 2.0 * np.pi, len(owner))
        ix, iy = x[owner] + where * np.cos(angle), y[owner] + where * np.sin(angle)
        ones = np.ones(len(owner))
        particle = replace(look, rim_asymmetry=0.2, halo_gain=0.05)
        shader = _brightfield_shader(particle, small, 0.55 * ones, 0.45 * ones, 0.15 * ones, np.zeros(len(owner)))
        canvas = paint(canvas, ix, iy, small, shader, margin_px=margin)
    if settings.blur_sigma_px > 0:
        canvas = ndimage.gaussian_filter(canvas, sigma=(settings.blur_sigma_px, settings.blur_sigma_px, 0))
    return canvas, {"bubble": bubble, "inclusions": counts}


def render_phase(
    rng: np.random.Generator, settings: SceneSettings, x: np.ndarray, y: np.ndarray, radius: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Phase contrast or DIC: image ``(h, w, 3)`` in [0, 1] before noise, no extra truth columns."""
    look: PhaseLook = settings.phase
    n, height, width = len(x), settings.height_px, settings.width_px
    peak = look.phase_per_radius_px * radius * rng.uniform(0.85, 1.15, n)
    light = illumination(rng, height, width, settings.background_variation)

    def path(members, u, v, edge):
        cover = _coverage(edge)
        thickness = np.sqrt(np.clip(1.0 - u**2 - v**2, 0.0, 1.0))
        return cover[..., None], (cover * thickness * peak[members, None, None])[..., None]

    phase = np.zeros((height, width, 1), dtype=np.float32)
    phase = paint(phase, x, y, radius, path, contacts=_contacts(settings, x, y, radius, 0.0))[..., 0]
    phase = look.index_sign * look.phase_saturation * np.tanh(phase / look.phase_saturation)
    if look.mode == "phase":
        change = -look.contrast * (phase - ndimage.gaussian_filter(phase, look.halo_sigma_px))
    else:
        angle = np.deg2rad(look.shear_angle_deg)
        along_x = ndimage.gaussian_filter(phase, look.shear_px, order=(0, 1))
        along_y = ndimage.gaussian_filter(phase, look.shear_px, order=(1, 0))
        slope = np.cos(angle) * along_x + np.sin(angle) * along_y
        change = _DIC_GAIN * look.contrast * look.shear_px * slope
    intensity = light * (1.0 + change)
    image = intensity[..., None] * np.asarray(settings.background_rgb, dtype=np.float32)
    if settings.blur_sigma_px > 0:
        image = ndimage.gaussian_filter(image, sigma=(settings.blur_sigma_px, settings.blur_sigma_px, 0))
    return image, {}
