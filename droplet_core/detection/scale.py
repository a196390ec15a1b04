"""Droplet scale: detection over an image pyramid, and the fit resolution it calls for.

The trained detector (``droplet_core.detection.detector_net``) sees droplets of a few pixels' radius.
Chemists' droplets range from 1 px to hundreds of pixels, often 1:50 in one image, so the
detector runs on every level of a pyramid of block-mean downscales (1, 2, 4, ...), each
level trusted with the radius band ``LEVEL_BAND_PX`` of its own pixels (the bands of
neighbouring levels overlap). Detections from all levels are merged in
pixels of the image given: a smaller detection whose centre lies inside a larger one is
its rim, highlight or inclusion, not a droplet of its own.

The fit then runs at the coarsest downscale at which the small droplets still span
``MIN_FIT_RADIUS_PX`` and the median droplet ``MEDIAN_FIT_RADIUS_PX`` (``choose_downscale``),
limited by what a fit can draw and afford.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from droplet_core.detection import detector_net
from droplet_core.imaging import images
from droplet_core.imaging.channels import extract_channel

# Radius band (px of a pyramid level) the detector is trusted with at that level: it was
# trained on droplets of 1-24 px, and sizes the larger ones short. Neighbouring levels'
# bands overlap by a factor of two. The finest level keeps everything below the band, the
# coarsest everything above it.
LEVEL_BAND_PX = (3.0, 12.0)
# A sure detection just outside its level's band (within a factor STRAY_BAND_MARGIN of it)
# still stands where no level saw the droplet within its band: the second renderer's
# phase-contrast droplet of 25 px (a grey middle in a dark rim) was seen at 2x as 19 px of
# that level, at 4x with p_exists 0.12 and at 8x as 2.9 px (p_exists 0.94), so no level kept
# it and the fit drew its rim as eight small droplets. Above a fine level's band is a large
# droplet, roughly sized: every such detection (p_exists 0.72-0.88) on the generality scenes
# of seeds 1-4 was a droplet no level had kept. A coarse level's blobs under its band are as often a
# halo's piece or noise as a droplet: there, of those entirely in the image, p_exists of 0.9
# and more held 11 missed droplets and one false one, 0.82-0.89 six and four, less 5 and 17;
# of those cut by the border, 1 and 25. They start fits but do not set the scale
# (``choose_downscale``): in a real hexagonally packed emulsion the 4x level saw 39 of the dark
# gaps between droplets of 40 px as sure blobs of 10 px, and counted there, they brought the
# fit from 8x to 6x, where it drew four droplets' textured insides as clusters of small ones.
STRAY_BAND_MARGIN = 0.75
STRAY_ABOVE_MIN_P_EXISTS = detector_net.DEFAULT_THRESHOLD
STRAY_BELOW_MIN_P_EXISTS = 0.9
# A level whose shorter side is below this holds too few droplets for the detector's context.
PYRAMID_MIN_SIDE_PX = 48
# The finest level the detector sees has at most this many pixels (memory and time).
PYRAMID_MAX_PIXELS = 4_500_000
# The smallest radius (fit px) the fit must resolve for the image's small droplets.
MIN_FIT_RADIUS_PX = 1.5
# The typical droplet spans at least this radius (fit px): enough pixels on its edge for a
# radius to within a few percent.
MEDIAN_FIT_RADIUS_PX = 4.0
# The largest radius (fit px) a droplet patch can draw with room to grow: the largest of
# ``models.common.RADIUS_CAPS_PX`` over its ``GROWTH_ROOM`` (written out: detection must not
# load the models, which import numpyro; tests/test_scale.py checks they agree). A coarser fit
# would lose the small droplets of a polydisperse image sooner than a few large patches cost.
MAX_FIT_RADIUS_PX = 64.0 / 1.25
# Fits larger than this many pixels take minutes on a laptop: the downscale grows until below.
MAX_FIT_PIXELS = 1_600_000
# Below this many detections the droplets' size is not measured: the pixel budget decides.
MIN_DETECTIONS_FOR_SCALE = 5
# Pixel budget of the downscale when the droplets' size is unknown.
FALLBACK_FIT_PIXELS = 400_000
# Only confident detections measure the size: faint noise blobs are small and would ask for
# a needlessly fine (slow) fit.
SCALE_MIN_P_EXISTS = 0.7
# Presence probability a detection needs to start a fit: lower than the detector's own
# threshold, since the fit weighs every candidate's evidence (``p_exists``) and switches
# off those the image does not support; the detector is shy of droplets unlike its
# training scenes.
CANDIDATE_THRESHOLD = 0.25
# A detection holding at least this many distinct sure smaller ones is a cluster, not a
# droplet: on the generality scenes and the real images a droplet's rim, inclusions and
# highlights make at most 4, the clusters of small droplets a coarse level sees as one
# blob 4-19 (example.jpg: 5-19).
CLUSTER_MIN_DROPLETS = 5
# ... or this many, where the detector doubts the blob itself (p_exists under its threshold): on the
# second renderer's seed-like scene 7 a doubtful 13.5 px blob at 4x (p 0.45) held 4 sure droplets.
CLUSTER_MIN_DROPLETS_DOUBTFUL = 4
# ... or one, where the detector doubts the blob and is all but certain of a part at least
# 0.15 of its size: that is a droplet with its neighbours seen as one. The demo scene's
# doubtful 16 px blob (p_exists 0.36) over a ring of 7 droplets around an empty middle held
# one of 6.4 px (p_exists 0.99); on the generality scenes four more such blobs (p_exists
# 0.27-0.41) held a true droplet of 0.19-0.39 of their radius (p_exists 0.74-1.0), and all
# of them, drawn by the fit, hid their parts. On real brightfield emulsions doubtful true
# droplets hold their inner texture as parts of 0.29-0.42 of their radius, with p_exists
# 0.72-0.75; at 0.1 of the radius a doubtful blob of the second renderer's sparse
# brightfield scene 1 (24 px) would give way to two false parts of 3-4 px (the certain one 0.12).
CLUSTER_CERTAIN_PART_P_EXISTS = 0.95
CLUSTER_CERTAIN_PART_RADIUS = 0.15
# Coarse levels see strips of small droplets along the image border as large droplets cut
# by it, with p_exists 0.3-0.5 (example.jpg, the second renderer's seed-like scenes): a
# detection cut by the border at a level coarser than the finest that holds a sure smaller
# detection (as ``clusters`` counts them; those strips held 2-16) needs this presence
# probability even when lower candidates are asked for. Large droplets cut by the border of
# the second renderer's packed fluorescence are seen with p_exists 0.3-0.5 too, and hold none;
# they stand where at least half of the disk is in the image (MIN_VISIBLE_TO_SIZE; theirs:
# 0.56-0.99), since a doubtful disk mostly outside it is as often a dark or shifted image edge.
CUT_COARSE_MIN_P_EXISTS = detector_net.DEFAULT_THRESHOLD
# A cluster cut by the image border shows only the droplets of its visible part: it needs
# CLUSTER_MIN_DROPLETS times the visible share of its disk, and at least
# CLUSTER_MIN_DROPLETS_CUT (the coarsest levels see strips of small droplets along the
# border as large droplets cut by it).
CLUSTER_MIN_DROPLETS_CUT = 2
# ... counting detections under this fraction of its radius (a neighbour seen at another
# level is as large) whose centre lies within this fraction of it (not its rim).
CLUSTER_PART_RADIUS = 0.5
CLUSTER_CENTRE_WITHIN = 0.8
# Grains of a large droplet's textured inside (cells, debris, a rough surface) are sure
# detections too: in a real packed brightfield emulsion (droplets of 33 px holding 5-59
# grains of 2-3 px) two thirds of the droplets were taken for clusters, and the fit was
# chosen for the grains' size. A droplet is likely itself (its rim; p_exists 0.5-1.0 there),
# its grains are small (a median of 0.04-0.07 of its radius) and stay inside its rim (the
# outermost one's far edge at a median of 0.8 of its radius). The droplets a coarse level
# sees as one blob are a fair share of its size (example.jpg: a median of 0.14-0.24), or
# fill it to its edge (our dense seed scene: droplets of 1-9 px under a blob of 30 px, the
# outermost's far edge at 0.93 of it), or the blob is doubtful (the second renderer's
# seed-like scene: droplets of 2 px under one of 29 px with p_exists 0.31). A likely
# detection whose parts' median radius is under the first fraction of its own, and whose
# parts reach no further than the second, holds texture, not droplets.
TEXTURE_PART_RADIUS = 0.1
TEXTURE_REACH = 0.9
# The detector sizes a large droplet among pressed neighbours up to a third too large, and its
# disk then takes in the centres of the small droplets beside it. A sure detection is nested in
# a larger one only with its centre this many of its own radii inside the larger one's edge
# (a rim piece's centre lies on the rim, at 0.5-1 of its radius inside a well-sized disk).
NEIGHBOUR_DEPTH = 0.5
# ... where the larger one is at least this many times its radius.
NEIGHBOUR_RADIUS_RATIO = 2.0
# A detection is a droplet only where its disk or its rim stands out of its surroundings by
# this many standard errors of the pixel noise: the detector takes the grains of photon noise
# in a dim fluorescence image for droplets of 1-3 px (our scenes: 0.1-2.2 standard errors at
# the median; droplets of the seed kind 14, the faintest 1.6).
MIN_CONTRAST_SES = 3.0
# Directions (rad) along which a detection's rim is split into halves to measure its relief.
RELIEF_DIRECTIONS_RAD = np.pi * np.arange(4) / 4
# The largest droplet sets the fit's scale only when at least this share of its disk is in the image.
MIN_VISIBLE_TO_SIZE = 0.5
# Quantile of the detected radii that the downscale keeps resolvable (the small droplets).
SMALL_RADIUS_QUANTILE = 0.1
# Detections whose small droplets are under this fraction of the median are two populations
# (a 1:50 emulsion whose radii spread evenly in log puts its 10th percentile at 0.21 of its
# median; a real packed emulsion's grains of dirt and texture beside its droplets at 0.05):
# the scale keeps the small ones, and the reason says which downscale would fit the large.
TWO_SIZES_RATIO = 0.1


@dataclass(frozen=True)
class ScaleChoice:
    """The fit's downscale and why.

    Attributes
    ----------
    factor : integer block-mean downscale of the fit.
    reason : one sentence for the user.
    radius_small_px, radius_median_px, radius_large_px : 10th, 50th and 90th percentile of
        the detected droplets' radii, px of the image given (NaN when none were measured).
    detections : number of droplets the pyramid detector found.
    factor_for_large : where the detections fall in two sizes, the coarser downscale that
        fits the large ones (if the small ones are not droplets); else None.
    """

    factor: int
    reason: str
    radius_small_px: float
    radius_median_px: float
    radius_large_px: float
    detections: int
    factor_for_large: int | None = None

    def to_dict(self) -> dict:
        return {
            "factor": self.factor,
            "reason": self.reason,
            "radius_small_px": _rounded(self.radius_small_px),
            "radius_median_px": _rounded(self.radius_median_px),
            "radius_large_px": _rounded(self.radius_large_px),
            "detections": self.detections,
            "factor_for_large": self.factor_for_large,
        }

    def for_large_ones(self) -> ScaleChoice:
        """The choice of ``factor_for_large`` once the fit at ``factor`` explained the image
        worse than the fit at ``factor_for_large``: its small detections were then a texture,
        not droplets."""
        sizes = _sizes(self.radius_small_px, self.radius_median_px, self.radius_large_px)
        reason = (
            f"{sizes}: they fall in two sizes, and the fit at {self.factor}x explained the image "
            f"worse than at {self.factor_for_large}x, "
            f"so the small ones were taken for a texture, not droplets: {self.factor_for_large}x fits "
            "the large ones"
        )
        return replace(self, factor=self.factor_for_large, reason=reason, factor_for_large=None)


def _sizes(small: float, median: float, large: float) -> str:
    return f"droplet radii {small:.3g}-{large:.3g} px (10th-90th percentile, median {median:.3g} px)"


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 2)


def pyramid_factors(height: int, width: int) -> list[int]:
    """Downscale factors (powers of two) of the pyramid levels of an ``height x width`` image."""
    factor = 1
    while (height // factor) * (width // factor) > PYRAMID_MAX_PIXELS:
        factor *= 2
    factors = [factor]
    while min(height, width) // (2 * factors[-1]) >= PYRAMID_MIN_SIDE_PX:
        factors.append(2 * factors[-1])
    return factors


def pyramid_detections(
    image: np.ndarray,
    channel: str = "rgb",
    threshold: float = detector_net.DEFAULT_THRESHOLD,
    downscale: int = 1,
    weights_dir: str | None = None,
) -> pd.DataFrame:
    """Every pyramid level's detections in an ``(H, W, 3)`` RGB image, before merging.

    Parameters
    ----------
    image : (H, W, 3) float RGB in [0, 1].
    channel : the channel the detector looks at (``droplet_core.imaging.channels``; 1 or 3 channels).
    threshold : presence probability a detection needs.
    downscale : the pyramid's finest level (a fit at that downscale can draw nothing finer).
    weights_dir : the detector's weights (default: the shipped ones).

    Returns
    -------
    DataFrame ``x`` (column), ``y`` (row), ``radius`` (px of ``image``), ``p_exists``, ``level``
    (the downscale factor it was found at), ``visible_fraction`` (of the disk's area inside
    the image); ``outermost_droplets`` merges the levels. Droplets cut by the border found
    at a coarser level than the finest need ``CUT_COARSE_MIN_P_EXISTS``. Sure detections
    just outside their level's band are added where no other claims their place (``STRAY_*``),
    with ``in_band`` False (True for the others).
    """
    region = images.downscale(image, downscale)
    factors = pyramid_factors(*region.shape[:2])
    image_hw = (region.shape[0] * downscale, region.shape[1] * downscale)
    found, strays = [], []
    for factor in factors:
        seen = extract_channel(images.downscale(region, factor), channel)
        table = detector_net.detect(seen, threshold, weights_dir=weights_dir)
        table = table[contrast_ses(seen, table) >= MIN_CONTRAST_SES]
        low = LEVEL_BAND_PX[0] if factor != factors[0] else 0.0
        high = LEVEL_BAND_PX[1] if factor != factors[-1] else np.inf
        in_band = (table["radius"] >= low) & (table["radius"] < high)
        above = (table["radius"] >= high) & (table["radius"] < high / STRAY_BAND_MARGIN)
        below = (table["radius"] < low) & (table["radius"] >= STRAY_BAND_MARGIN * low)
        table = detector_net.to_image_px(table.assign(level=factor * downscale), factor * downscale)
        found.append(table[in_band])
        whole = visible_fraction(table, *image_hw) >= 1.0 - 1e-6
        strays.append(
            table[
                (above & (table["p_exists"] >= STRAY_ABOVE_MIN_P_EXISTS))
                | (below & whole & (table["p_exists"] >= STRAY_BELOW_MIN_P_EXISTS))
            ]
        )
    table = pd.concat(found, ignore_index=True)
    table = table.assign(visible_fraction=visible_fraction(table, *image_hw))
    stray = _unclaimed(pd.concat(strays, ignore_index=True), table)
    table = pd.concat([table.assign(in_band=True), stray.assign(in_band=False)], ignore_index=True)
    holds_sure = np.array([len(parts) > 0 for parts in _sure_parts(table)], dtype=bool)
    doubtful_cut = (
        (table["level"] > factors[0] * downscale)
        & (table["visible_fraction"] < 1.0 - 1e-6)
        & (table["p_exists"] < CUT_COARSE_MIN_P_EXISTS)
        & (holds_sure | (table["visible_fraction"] < MIN_VISIBLE_TO_SIZE))
    )
    return table[~doubtful_cut].reset_index(drop=True)


def _unclaimed(strays: pd.DataFrame, in_band: pd.DataFrame) -> pd.DataFrame:
    """The detections of ``strays`` (outside their level's band) that stand for a droplet no
    level saw within its band: most probable first, each whose centre lies in none of
    ``in_band``'s disks or of a stray already kept, and whose disk holds no centre of those.
    A stray that holds another detection is mis-sized or a cluster; one inside another is
    its part."""
    claimed_xy = [in_band[["x", "y"]].to_numpy(float)]
    claimed_radius = [in_band["radius"].to_numpy(float)]
    kept = []
    circles = strays[["x", "y", "radius"]].to_numpy(float)
    for i in np.argsort(-strays["p_exists"].to_numpy(float), kind="stable"):
        x, y, radius = circles[i]
        xy, radii = np.concatenate(claimed_xy), np.concatenate(claimed_radius)
        distance = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        if not np.any((distance < radii) | (distance < radius)):
            kept.append(int(i))
            claimed_xy.append([[x, y]])
            claimed_radius.append([radius])
    return strays.iloc[kept]


def contrast_ses(image: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """``(n,)`` how far each detection stands out of its surroundings, in standard errors.

    The largest of three contrasts, each over the standard error of that difference under
    the pixel noise (``images.noise_sd_estimate``): the disk's middle (within 0.7 radii) and
    its rim (0.7-1.1 radii) against the median of the ring around it (1.3-2 radii), and the
    rim's relief, one half of the rim against the opposite half (the largest of four
    directions): a DIC droplet is lit on one side and shaded on the other, so its rim's mean
    and its middle are the field's, while a grain of noise is no brighter on one side than
    on the other. Centres are taken to the nearest pixel and radii to the nearest half pixel.

    Parameters
    ----------
    image : (h, w, c) the channel the detector saw.
    table : detections, ``x``, ``y``, ``radius`` in px of ``image``.
    """
    grey = image.mean(axis=2)
    noise_sd = images.noise_sd_estimate(grey[:, :, None])
    height, width = grey.shape
    x = np.rint(table["x"].to_numpy(float)).astype(int)
    y = np.rint(table["y"].to_numpy(float)).astype(int)
    radius = np.maximum(np.rint(2.0 * table["radius"].to_numpy(float)) / 2.0, 1.0)
    ses = np.zeros(len(table))
    for r in np.unique(radius):
        chosen = np.flatnonzero(radius == r)
        reach = int(np.ceil(2.0 * r))
        dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1].reshape(2, -1)
        distance = np.hypot(dx, dy) / r
        rows, cols = y[chosen, None] + dy, x[chosen, None] + dx
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        values = grey[rows.clip(0, height - 1), cols.clip(0, width - 1)]
        ring_zone = (distance > 1.3) & (distance <= 2.0)
        ring_count = inside[:, ring_zone].sum(axis=1)
        ring_level = np.zeros(len(chosen))
        whole = inside.all(axis=1)
        ring_level[whole] = np.median(values[whole][:, ring_zone], axis=1)
        for k in np.flatnonzero(~whole & (ring_count > 0)):
            ring_level[k] = np.median(values[k, ring_zone][inside[k, ring_zone]])
        ring = (ring_level, ring_count)
        for inner, outer in ((0.0, 0.7), (0.7, 1.1)):
            zone_ses, seen = _against_ring((distance >= inner) & (distance <= outer), inside, values, ring, noise_sd)
            ses[chosen] = np.where(seen, np.maximum(ses[chosen], np.abs(zone_ses)), ses[chosen])
        rim = (distance >= 0.7) & (distance <= 1.1)
        for angle in RELIEF_DIRECTIONS_RAD:
            along = dx * np.cos(angle) + dy * np.sin(angle)
            lit, lit_seen = _against_ring(rim & (along > 0), inside, values, ring, noise_sd)
            shaded, shaded_seen = _against_ring(rim & (along < 0), inside, values, ring, noise_sd)
            relief = np.where(lit * shaded < 0, np.minimum(np.abs(lit), np.abs(shaded)), 0.0)
            ses[chosen] = np.where(lit_seen & shaded_seen, np.maximum(ses[chosen], relief), ses[chosen])
    return ses


def _against_ring(
    zone: np.ndarray, inside: np.ndarray, values: np.ndarray, ring: tuple[np.ndarray, np.ndarray], noise_sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """``contrast_ses``' mean over a ``zone`` ``(k,)`` of every detection's patch (``values``
    ``(n, k)``, ``inside`` the image where True) less its ring's level, in standard errors of
    that difference, and ``(n,)`` where both were seen. ``ring`` is ``(level, pixel count)``,
    ``(n,)`` each."""
    ring_level, ring_count = ring
    count = inside[:, zone].sum(axis=1)
    mean = np.where(inside[:, zone], values[:, zone], 0.0).sum(axis=1) / np.maximum(count, 1)
    error = noise_sd * np.sqrt(1.0 / np.maximum(count, 1) + 1.0 / np.maximum(ring_count, 1))
    return (mean - ring_level) / error, (count > 0) & (ring_count > 0)


def visible_fraction(table: pd.DataFrame, height: int, width: int) -> np.ndarray:
    """``(n,)`` share of each disk (``x``, ``y``, ``radius``, px) inside an ``height x width`` image.

    The product of the shares each of the four sides leaves (circular segments): exact for
    a disk cut by one side, close for one cut by two at a corner.
    """
    x, y, r = (table[c].to_numpy(float) for c in ("x", "y", "radius"))
    r = np.maximum(r, 1e-9)
    share = np.ones(len(table))
    for distance in (x + 0.5, width - 0.5 - x, y + 0.5, height - 0.5 - y):
        d = np.clip(distance / r, -1.0, 1.0)
        share *= 1.0 - (np.arccos(d) - d * np.sqrt(1.0 - d**2)) / np.pi
    return share


def _outermost(
    xy: np.ndarray, radius_px: np.ndarray, depth_needed: np.ndarray | None = None, p_exists: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the circles (centres ``(n, 2)``, radii ``(n,)``) whose centre lies in no larger one, largest first.

    With ``depth_needed`` ``(n,)``, a circle's centre must lie that many of its own radii
    inside the edge of one ``NEIGHBOUR_RADIUS_RATIO`` times as large to count as in it, or
    of any larger one less probable than itself (``p_exists`` ``(n,)``, where given).
    """
    order = np.argsort(-radius_px, kind="stable")
    suppressed = np.zeros(len(order), dtype=bool)
    if len(order):
        xy, radius_px = xy[order], radius_px[order]
        depth_needed = np.zeros(len(order)) if depth_needed is None else depth_needed[order]
        p_exists = np.zeros(len(order)) if p_exists is None else p_exists[order]
        for i, inside in enumerate(cKDTree(xy).query_ball_point(xy, radius_px)):
            if suppressed[i]:
                continue
            inside = np.array([j for j in inside if j > i], dtype=int)
            depth = radius_px[i] - np.hypot(*(xy[inside] - xy[i]).T)
            # Only beside a much larger droplet: one of similar size with its centre inside is the
            # same droplet seen at another level, or a coalescence's part seen beside its product.
            # Or beside a less probable one: a coarse level sizes a droplet among crowded
            # neighbours too large, and a doubtful disk must not swallow a surer droplet beside it.
            beside = (radius_px[i] >= NEIGHBOUR_RADIUS_RATIO * radius_px[inside]) | (p_exists[inside] > p_exists[i])
            needed = np.where(beside, depth_needed[inside], 0.0)
            suppressed[inside[depth >= needed * radius_px[inside]]] = True
    return order[~suppressed]


def clusters(table: pd.DataFrame) -> np.ndarray:
    """Which detections of ``table`` (columns as ``pyramid_detections``) are clusters of droplets.

    A coarse level sees a tight group of small droplets as one round blob. A droplet's rim,
    inclusions and highlights make a few smaller detections inside it; a cluster holds at
    least ``CLUSTER_MIN_DROPLETS`` (``CLUSTER_MIN_DROPLETS_DOUBTFUL`` where the detector doubts
    the blob) distinct sure ones (``p_exists >= SCALE_MIN_P_EXISTS``,
    under ``CLUSTER_PART_RADIUS`` of its radius, centres within ``CLUSTER_CENTRE_WITHIN`` of it),
    or, cut by the image border (``visible_fraction``, where ``table`` has it), that many
    times the visible share of its disk, at least ``CLUSTER_MIN_DROPLETS_CUT``; unless it is
    likely itself (``detector_net.DEFAULT_THRESHOLD``) and they are the grains of its texture
    (their median radius under ``TEXTURE_PART_RADIUS`` of its, none reaching ``TEXTURE_REACH``
    of it from its centre). A blob the detector doubts is a cluster also where one of these
    parts is all but certain (``CLUSTER_CERTAIN_PART_P_EXISTS``) and at least
    ``CLUSTER_CERTAIN_PART_RADIUS`` of its radius.

    Returns
    -------
    (n,) bool, True for a cluster.
    """
    xy = table[["x", "y"]].to_numpy(float)
    radius = table["radius"].to_numpy(float)
    p_exists = table["p_exists"].to_numpy(float)
    is_cluster = np.zeros(len(table), dtype=bool)
    visible = table["visible_fraction"].to_numpy(float) if "visible_fraction" in table else np.ones(len(table))
    least = np.where(p_exists < detector_net.DEFAULT_THRESHOLD, CLUSTER_MIN_DROPLETS_DOUBTFUL, CLUSTER_MIN_DROPLETS)
    needed = np.maximum(np.ceil(least * visible), CLUSTER_MIN_DROPLETS_CUT)
    for i, parts in enumerate(_sure_parts(table)):
        if p_exists[i] < detector_net.DEFAULT_THRESHOLD and np.any(
            (p_exists[parts] >= CLUSTER_CERTAIN_PART_P_EXISTS)
            & (radius[parts] >= CLUSTER_CERTAIN_PART_RADIUS * radius[i])
        ):
            is_cluster[i] = True
        elif len(parts) >= needed[i]:
            parts = parts[_outermost(xy[parts], radius[parts])]
            reach = np.hypot(*(xy[parts] - xy[i]).T) + radius[parts]
            texture = (
                p_exists[i] >= detector_net.DEFAULT_THRESHOLD
                and np.median(radius[parts]) < TEXTURE_PART_RADIUS * radius[i]
                and reach.max() < TEXTURE_REACH * radius[i]
            )
            is_cluster[i] = len(parts) >= needed[i] and not texture
    return is_cluster


def _sure_parts(table: pd.DataFrame) -> list[np.ndarray]:
    """For each detection of ``table`` (``x``, ``y``, ``radius``, ``p_exists``), the indices of the
    sure ones (``p_exists >= SCALE_MIN_P_EXISTS``) that could be droplets it holds: under
    ``CLUSTER_PART_RADIUS`` of its radius, centres within ``CLUSTER_CENTRE_WITHIN`` of it."""
    xy = table[["x", "y"]].to_numpy(float)
    radius = table["radius"].to_numpy(float)
    sure = np.flatnonzero(table["p_exists"].to_numpy(float) >= SCALE_MIN_P_EXISTS)
    if not len(sure):
        return [sure] * len(table)
    within = cKDTree(xy[sure]).query_ball_point(xy, CLUSTER_CENTRE_WITHIN * radius)
    near = [sure[np.asarray(found, dtype=int)] for found in within]
    return [parts[radius[parts] < CLUSTER_PART_RADIUS * r] for parts, r in zip(near, radius)]


def outermost_droplets(table: pd.DataFrame, split_clusters: bool = True) -> pd.DataFrame:
    """The detections of ``table`` not nested in a larger one, largest first: droplets do not
    nest, so a centre inside a larger droplet is its rim, highlight or inclusion (or the
    same droplet seen at a neighbouring level). With ``split_clusters`` (``table`` then needs
    ``p_exists``), ``clusters`` are dropped first, so that the droplets they hold stand."""
    depth_needed = p_exists = None
    if split_clusters:
        table = table[~clusters(table)]
        p_exists = table["p_exists"].to_numpy(float)
        depth_needed = np.where(p_exists >= SCALE_MIN_P_EXISTS, NEIGHBOUR_DEPTH, 0.0)
    kept = _outermost(table[["x", "y"]].to_numpy(float), table["radius"].to_numpy(float), depth_needed, p_exists)
    return table.iloc[kept].reset_index(drop=True)


def detect_in_image(
    image: np.ndarray,
    channel: str = "rgb",
    threshold: float = detector_net.DEFAULT_THRESHOLD,
    downscale: int = 1,
    weights_dir: str | None = None,
    with_band: bool = False,
) -> pd.DataFrame:
    """Droplets of every size in an ``(H, W, 3)`` RGB image, in its pixels: the merged
    ``pyramid_detections`` (same arguments and columns, ``in_band`` only ``with_band``)."""
    merged = outermost_droplets(pyramid_detections(image, channel, threshold, downscale, weights_dir))
    return merged.drop(columns=["visible_fraction"] if with_band else ["visible_fraction", "in_band"])


def choose_downscale(detections: pd.DataFrame, height: int, width: int) -> ScaleChoice:
    """The fit's downscale for an ``height x width`` image with ``detections`` (px of that image).

    The coarsest factor at which the small droplets (``SMALL_RADIUS_QUANTILE`` of the
    radii of the detections with ``p_exists >= SCALE_MIN_P_EXISTS``, of those seen within their
    level's band where ``detections`` has ``in_band``) keep ``MIN_FIT_RADIUS_PX``,
    at least the factor that brings the largest droplet (of those with at least
    ``MIN_VISIBLE_TO_SIZE`` of their disk in the image, if any) within ``MAX_FIT_RADIUS_PX``,
    and at least the factor that keeps the fit under ``MAX_FIT_PIXELS``.
    """
    confident = detections[detections["p_exists"] >= SCALE_MIN_P_EXISTS] if detections is not None else None
    if confident is not None and "in_band" in confident:
        confident = confident[confident["in_band"]]
    radii = confident["radius"].to_numpy(float) if confident is not None else np.zeros(0)
    if radii.size < MIN_DETECTIONS_FOR_SCALE:
        factor = images.auto_downscale_factor(height, width, FALLBACK_FIT_PIXELS)
        return ScaleChoice(
            factor,
            f"too few droplets were found to measure their size, so {factor}x keeps the fit "
            f"near {FALLBACK_FIT_PIXELS:,} pixels",
            np.nan,
            np.nan,
            np.nan,
            int(radii.size),
        )
    small, median, large = np.quantile(radii, [SMALL_RADIUS_QUANTILE, 0.5, 0.9])
    by_small = max(1, min(int(np.floor(small / MIN_FIT_RADIUS_PX)), int(np.floor(median / MEDIAN_FIT_RADIUS_PX))))
    # A droplet mostly outside the image shows too little of its outline to be sized well
    # (the detector sizes such ones up to a third too large): it does not set the scale.
    sized = visible_fraction(confident, height, width) >= MIN_VISIBLE_TO_SIZE
    largest = radii[sized].max() if sized.any() else radii.max()
    by_large = max(1, int(np.ceil(largest / MAX_FIT_RADIUS_PX)))
    by_pixels = images.auto_downscale_factor(height, width, MAX_FIT_PIXELS)
    factor = max(by_small, by_large, by_pixels)
    sizes = _sizes(small, median, large)
    if factor == by_small:
        reason = f"{sizes}: at {factor}x the small droplets still span {small / factor:.1f} px, the median {median / factor:.1f} px"
    elif factor == by_large:
        reason = f"{sizes}: {factor}x brings the largest droplet ({largest:.0f} px) within what a fit draws"
    else:
        reason = f"{sizes}: {factor}x keeps the fit under {MAX_FIT_PIXELS:,} pixels"
    for_large = max(int(np.floor(median / MEDIAN_FIT_RADIUS_PX)), by_large, by_pixels)
    two_sizes = small < TWO_SIZES_RATIO * median and for_large > factor
    if two_sizes:
        reason += (
            f"; they fall in two sizes, so if the small ones are not droplets (dirt, grains, a "
            f"droplet's texture), downscale {for_large}x fits the large ones"
        )
    return ScaleChoice(
        factor, reason, float(small), float(median), float(large), int(radii.size), for_large if two_sizes else None
    )
