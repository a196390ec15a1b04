"""How a fit decides the droplet count: switch droplets off and on between optimisation steps.

Every fit has a fixed number of droplet slots (so its programs compile once); an ``active``
mask ``(n,)`` says which are in the model. Between steps the fit engine switches off
droplets whose learned contribution is negligible and the weaker of near-duplicates
(``prune_and_merge``), and switches spare slots on where the residual shows a droplet the
detector missed (``residual_peaks``, ``add_droplets``). The SVI fits (``droplet_core.inference.engine``)
and the Levenberg-Marquardt fits of a reused appearance (``droplet_core.inference.reuse_fit``) share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from droplet_core.detection.log_candidates import apart_from_droplets, strong_peaks
from droplet_core.detection.scale import MIN_VISIBLE_TO_SIZE, outermost_droplets, visible_fraction
from droplet_core.models.common import Layout, ModelSpec

if TYPE_CHECKING:
    from droplet_core.inference.guide import Evaluation, MeanFieldGuide
    from droplet_core.models import Variant

# Radius range of detector candidates and residual peaks, in fit px: the upper end grows
# with the largest droplet of the fit.
MIN_RADIUS_PX = 1.0
MAX_RADIUS_PX = 12.0
# A droplet is negligible when its strongest effect on the image is below this fraction of
# the median droplet's, or below this many noise standard deviations. One whose effect is
# far above the median is a point-like spike fitting a highlight or an edge, not a droplet.
# (A fifth lost the faint droplets beside dark bubbles of brightfield scenes, at 0.15-0.2 of
# the median and many noise sds strong.)
PRUNE_FRACTION_OF_MEDIAN = 0.1
# A weak disk far larger than the median droplet, or mostly outside the image, is the field's
# shading more likely than a faint droplet (such disks at a tenth covered dozens of droplets of
# a seed-like scene, and a darker image edge): for them the floor is a fifth.
PRUNE_FRACTION_OF_MEDIAN_UNUSUAL = 0.2
UNUSUAL_MULTIPLE_OF_MEDIAN_RADIUS = 2.0
PRUNE_NOISE_SDS = 1.0
PRUNE_MULTIPLE_OF_MEDIAN = 3.0
# A droplet that shrinks below three quarters of a pixel of the fitted image is a spike fitting
# a highlight or noise: nothing smaller can be resolved. (Droplets of 1 px, drawn with the
# image's blur, are fitted at about 1 px; a limit of 1 px switched them off and on from frame
# to frame of a time-lapse, breaking their tracks.)
PRUNE_BELOW_RADIUS_PX = 0.75
# Droplets do not nest: a centre inside a larger droplet is a highlight or rim of that one.
MERGE_FRACTION_OF_RADIUS = 1.0
# Of two such droplets the much larger one stays (the smaller is its highlight, rim or
# inclusion, however strong); of two of similar size, the stronger.
NESTED_RADIUS_RATIO = 2.0
# A missed droplet stands well above the residual's noise. (At 6 sds, faint droplets beside
# larger ones in crowded fluorescence and the smallest droplets of seed-like scenes stayed
# missed; at 3.5 they are found and no family of either renderer gained false ones.)
RESIDUAL_PEAK_NOISE_SDS = 3.5


def prune_and_merge(
    values: dict,
    strength: np.ndarray,
    active: np.ndarray,
    drawn_radius_px: np.ndarray,
    image_shape_px: tuple[int, int],
    noise_sd: float,
) -> np.ndarray:
    """New ``(n,)`` active mask: drop negligible droplets, keep the stronger of near-duplicates.

    ``values`` are the fit's current per-droplet values (fit px), ``strength`` ``(n,)`` each
    droplet's strongest effect on the image (channel units), ``drawn_radius_px`` ``(n,)``
    how far each droplet is drawn (``Variant.drawn_radius_px``), ``image_shape_px`` the fitted
    image's ``(h, w)``, ``noise_sd`` the noise a droplet must stand above (``tidy``).
    """
    active = active.copy()
    on = active > 0
    if not on.any():
        return active
    typical = float(np.median(strength[on]))
    radius = drawn_radius_px
    disks = pd.DataFrame({"x": values["x"], "y": values["y"], "radius": radius})
    unusual = (radius > UNUSUAL_MULTIPLE_OF_MEDIAN_RADIUS * float(np.median(radius[on]))) | (
        visible_fraction(disks, *image_shape_px) < MIN_VISIBLE_TO_SIZE
    )
    fraction = np.where(unusual, PRUNE_FRACTION_OF_MEDIAN_UNUSUAL, PRUNE_FRACTION_OF_MEDIAN)
    floor = np.maximum(fraction * typical, PRUNE_NOISE_SDS * noise_sd)
    # Only a small droplet can be a spike: a large one may well stand out (a thick dark rim).
    spike = (strength > PRUNE_MULTIPLE_OF_MEDIAN * typical) & (radius <= np.median(radius[on]))
    negligible = (strength < floor) | spike | (radius < PRUNE_BELOW_RADIUS_PX)
    active[on & negligible] = 0.0
    index = np.flatnonzero(active > 0)
    if index.size < 2:
        return active
    xy = np.stack([values["x"][index], values["y"][index]], axis=1)
    radius = radius[index]
    tree = cKDTree(xy)
    pairs = tree.query_pairs(r=MERGE_FRACTION_OF_RADIUS * float(radius.max()), output_type="ndarray")
    # Largest droplets first, so a droplet absorbs what is nested in it before that is compared.
    pairs = pairs[np.argsort(-np.maximum(radius[pairs[:, 0]], radius[pairs[:, 1]]))]
    for a, b in pairs:
        i, j = index[a], index[b]
        if active[i] == 0 or active[j] == 0:
            continue
        if np.hypot(*(xy[a] - xy[b])) < MERGE_FRACTION_OF_RADIUS * max(radius[a], radius[b]):
            big, small = (i, j) if radius[a] >= radius[b] else (j, i)
            if max(radius[a], radius[b]) >= NESTED_RADIUS_RATIO * min(radius[a], radius[b]):
                active[small] = 0.0
            else:
                active[j if strength[i] >= strength[j] else i] = 0.0
    return active


def residual_spread(residual: np.ndarray) -> float:
    """The robust sd (scaled median absolute deviation) of a fit's ``(h, w, c)`` residual.

    It stands for the noise where droplets are switched, not the model's noise estimate:
    that is the residual's rms, inflated while droplets are missing (the model explains them
    as noise) and by a look that draws some droplets imperfectly. In a packed emulsion's fit
    (rms 0.07 to the end; spread 0.056 at the first pruning, 0.037 at the last; pixel noise
    0.027) the rms switched off dim droplets drawn 0.05-0.07 above the shading between them.
    """
    return 1.4826 * float(np.median(np.abs(residual - np.median(residual))))


def residual_peaks(
    residual: np.ndarray,
    values: dict,
    drawn_radius_px: np.ndarray,
    active: np.ndarray,
    polarity: float,
    spread: float,
) -> np.ndarray:
    """``(k, 4)`` droplets the fit misses (x, y, radius, contrast in fit px): strong blobs of
    the ``(h, w, c)`` residual with the droplets' ``polarity`` (+1 brighter than the
    background, -1 darker) that do not lie inside an active droplet (those are
    imperfections of that droplet; ``values`` holds their ``x``, ``y`` and
    ``drawn_radius_px`` ``(n,)`` how far they are drawn), strongest first. ``spread`` is the
    residual's ``residual_spread``.

    Blobs of the other sign are what the droplets drawn do not explain: on synthetic scenes
    none of them lies at a missed droplet, and added as droplets they were most of a
    reused neural appearance's false detections.
    """
    # (The spread after smoothing would find more missed droplets in photon-noisy images,
    # but reuse fits of a time-lapse then gather false ones frame after frame.)
    index = np.flatnonzero(active > 0)
    radius = drawn_radius_px[index]
    # A missed droplet is at most as large as the largest the fit holds (the downscale
    # follows the droplets' size, so that can be far beyond the usual few pixels).
    largest = max(MAX_RADIUS_PX, float(radius.max())) if index.size else MAX_RADIUS_PX
    peaks = strong_peaks(residual, RESIDUAL_PEAK_NOISE_SDS * spread, min_radius_px=MIN_RADIUS_PX, max_radius_px=largest)
    peaks = peaks[peaks["contrast"] * polarity > 0]
    # A blob far larger than a few pixels has many local maxima inside it; they are one blob.
    peaks = outermost_droplets(peaks, split_clusters=False)
    peaks = peaks.iloc[np.argsort(-np.abs(peaks["contrast"].to_numpy()), kind="stable")]
    if peaks.empty or index.size == 0:
        return peaks.to_numpy(np.float32).reshape(-1, 4)
    centres = np.stack([values["x"][index], values["y"][index]], axis=1)
    apart = apart_from_droplets(centres, radius, peaks[["x", "y"]].to_numpy(), peaks["radius"].to_numpy())
    return peaks[apart].to_numpy(np.float32)


def add_droplets(
    params: dict,
    peaks: np.ndarray,
    anchors: np.ndarray,
    active: np.ndarray,
    layout: Layout,
    guide: MeanFieldGuide,
    values: dict,
    variant: Variant,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Switch free slots on at ``peaks`` ``(k, 4)`` (x, y, radius, contrast in fit px).

    A peak takes a free slot whose patch can draw its radius; the new droplet starts where
    ``variant.added_droplet_values`` says. Returns ``params`` with the new droplets'
    guide locations (``<site>_auto_loc``) written in, and the new ``anchors`` ``(n, 3)`` and
    ``active`` ``(n,)``. ``values`` are the fit's current per-droplet values. Host-side numpy,
    and the guide's one compiled unconstraining of whole ``(n, ...)`` arrays: eager JAX ops
    on the ever-new number of peaks would each compile.
    """
    free = np.flatnonzero(active == 0)
    slots, rows = [], []
    for row in peaks:
        fits = free[np.asarray(layout.radius_cap_px)[free] >= row[2]]
        if fits.size == 0:
            continue
        slots.append(fits[0])
        rows.append(row)
        free = free[free != fits[0]]
    if not slots:
        return params, anchors, active
    slots = np.asarray(slots)
    rows = np.asarray(rows, np.float32)
    start = {"x": rows[:, 0], "y": rows[:, 1], **variant.added_droplet_values(rows, values, active)}
    params = dict(params)
    moved = {name: np.array(values[name]) for name in start if name in guide.transforms}
    for name, value in moved.items():
        value[slots] = start[name]
    for name, loc in guide.unconstrained(moved).items():
        updated = np.array(params[f"{name}_auto_loc"])
        updated[slots] = np.asarray(loc)[slots]
        params[f"{name}_auto_loc"] = jnp.asarray(updated)
    anchors = anchors.copy()
    anchors[slots, :2] = rows[:, :2]
    active = active.copy()
    active[slots] = 1.0
    return params, anchors, active


def tidy(
    evaluated: Evaluation,
    params: dict,
    observed: np.ndarray,
    anchors: np.ndarray,
    active: np.ndarray,
    spec: ModelSpec,
    guide: MeanFieldGuide,
    variant: Variant,
    pixel_noise_sd: float,
    add: bool,
    prune: bool,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(params, anchors, active)`` after switching off droplets of negligible strength and
    duplicates (``prune``) and switching on droplets at strong peaks of the residual
    (``add``).

    ``evaluated`` is the fit at the guide medians in ``params`` (the values of every site,
    the ``(h, w, c)`` reconstruction and each droplet's strength ``(n,)`` are used).
    ``observed`` is the ``(h, w, c)`` fitted channel, ``pixel_noise_sd`` its pixel noise
    (``images.noise_sd_estimate``).
    """
    values = {k: np.asarray(v) for k, v in evaluated.values.items()}
    reconstruction, strength = evaluated.reconstruction, evaluated.strength
    drawn = variant.drawn_radius_px(values)
    residual = observed - np.asarray(reconstruction)
    spread = residual_spread(residual)
    # Each estimate of the noise is inflated where the other is not: the residual's spread
    # by droplets the fit has not drawn well yet, the pixel noise by fine texture and edges.
    noise_sd = min(spread, pixel_noise_sd)
    kept = (
        prune_and_merge(values, np.asarray(strength), active, drawn, observed.shape[:2], noise_sd) if prune else active
    )
    if not add:
        return params, anchors, kept
    # Peaks are looked for outside the droplets active before pruning: a peak inside a
    # droplet just switched off is what that droplet failed to explain, not a new droplet.
    peaks = residual_peaks(residual, values, drawn, active, spec.polarity, spread)
    return add_droplets(params, peaks, anchors, kept, spec.layout, guide, values, variant)
