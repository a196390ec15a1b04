"""Where a droplet's drawn look has its edge: the outline every variant's table reports.

A model that draws droplets from a learned look (the templates' masks, the neural optics
model) can move or scale the look and every droplet's position or radius together and draw
the same image: its own ``x``, ``y``, ``radius`` are pinned only by where the detector
started them. What a chemist means by a droplet's centre and radius is its outline, so the
tables report the outline of each droplet's look, read here from the look itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from droplet_core.measurements.counting import DOUBTFUL_BELOW

# Along each ray the droplet's edge is the outermost local maximum of the look's radial
# gradient that reaches this fraction of the droplet's typical (median over rays) largest
# gradient: the outer edge of the rim or body, however bright or dark each side is drawn
# (a side shaded to the background level still has its edge). At a half, the thin dark rim on
# the lit side of the second renderer's packed droplets fell short of it, its outline took the
# bright body's edge inside the rim, and every droplet moved away from the light (+0.07, +0.13
# radii on its 512² scene 1, radii 5.5 % short; at 0.45: +0.02, +0.02 and 2.5 %). At 0.35 it
# found steps inside phase-contrast and brightfield looks too (radii 4.4-4.9 % off).
OUTLINE_GRADIENT_FRACTION = 0.45
OUTLINE_ANGLES = 48
# Radial step (radii) of the search for the edge.
OUTLINE_STEP = 0.03
# Along a ray the look's radial gradient is often level over the ray points inside one mask
# cell (along rays that follow the grid the bilinear look is linear there), so which point of
# such a plateau was the local maximum was decided by float rounding: another order of the
# same sums moved 96 % of the edges, by up to 0.012 radii. Steps within this fraction of the
# droplet's typical edge step count as equal, and the edge is the plateau's middle (float32
# rounding of the read-out is about 2e-6 of that step).
OUTLINE_TIE_FRACTION = 1e-5
# Droplets read at a time: their rays' arrays stay in the processor's cache.
OUTLINE_CHUNK = 128
# Edge points further than this many median deviations from the fitted circle (an inner
# feature taken for the edge) are left out of the second fit.
OUTLINE_OUTLIER_MADS = 3.0
# A bright caustic below the centre (the seed kind) leaves only a weak step at the lower edge,
# and the rays there find the caustic's rise instead, 0.25-0.35 radii inside the edge, on a
# fifth of the rays: too many for one rejection, which left the seed kind's droplets of 2.5 px
# and more 0.09 radii too high and 0.04 radii small. Outlines of droplets of at least
# OUTLINE_STRICT_MIN_RADIUS_PX are refitted until OUTLINE_STRICT_ROUNDS fits without the points
# more than OUTLINE_STRICT_MADS deviations inside the circle (then 0.02-0.03 radii off); points
# outside stay judged by OUTLINE_OUTLIER_MADS, since the outline is the outermost edge (rejecting
# them too shrank phase-contrast droplets). Smaller droplets keep the single rejection: their
# looks are drawn below the blur, and the strict fit moved those of 1-2.5 px 0.1-0.19 radii down.
OUTLINE_STRICT_MIN_RADIUS_PX = 2.5
OUTLINE_STRICT_MADS = 2.0
OUTLINE_STRICT_ROUNDS = 3


# Droplets the table shows (``p_exists`` not below ``DOUBTFUL_BELOW``) press the outlines of
# the droplets they overlap, when their outlines overlap by more than this fraction of the smaller radius. Droplets
# that merely touch overlap a little through the blur; refitting those moved small droplets'
# radii from frame to frame of a time-lapse, and their volumes made false coalescences.
PRESSED_OVERLAP_FRACTION = 0.1


class Outline(NamedTuple):
    """Each droplet's drawn outline ``(n,)``, in units of the model's radius: the centre's
    offset from the model's ``x``, ``y`` and the edge radius."""

    centre_x: np.ndarray
    centre_y: np.ndarray
    edge: np.ndarray


def outline(droplet_masks: np.ndarray, extent: float, radius_px: np.ndarray) -> Outline:
    """Centre and edge radius of each droplet's drawn look (``Outline``).

    Along ``OUTLINE_ANGLES`` rays from the grid's centre, the edge is the outermost strong
    step of the look (``OUTLINE_GRADIENT_FRACTION``); a circle fitted to those points by
    least squares (twice, the second time without outlying points) gives the centre of
    the outline and its radius. A highlight or an inclusion inside the droplet moves
    neither.

    Parameters
    ----------
    droplet_masks : (n, m, m) each droplet's look (minus the background) on a grid spanning
        ``-extent..extent`` radii of the model's radius.
    extent : half the grid's side, radii.
    radius_px : (n,) the model's radius of each droplet, px (how strictly inner features are
        left out: ``OUTLINE_STRICT_MIN_RADIUS_PX``).

    Returns
    -------
    Outline of ``(n,)`` arrays, in radii of the model's ``radius``.
    """
    drawn, _ = _outline_and_edge_points(droplet_masks, extent, radius_px)
    return drawn


def _outline_and_edge_points(
    droplet_masks: np.ndarray, extent: float, radius_px: np.ndarray
) -> tuple[Outline, EdgePoints]:
    """``outline`` and the edge points it was fitted to."""
    n, size, _ = droplet_masks.shape
    rays = _ray_sampling(size, extent)
    flat = np.asarray(droplet_masks, np.float32).reshape(n, size * size)
    chunks = [_ray_edges(flat[start : start + OUTLINE_CHUNK], rays) for start in range(0, max(n, 1), OUTLINE_CHUNK)]
    edge_index, found = (np.concatenate(field) for field in zip(*chunks))
    points = EdgePoints(rays.angle, rays.rho[0] - OUTLINE_STEP * edge_index, found)
    centre_x, centre_y, radius, usable = _robust_circles(points, _strict(radius_px, n))
    drawn = Outline(
        np.where(usable, centre_x, 0.0).astype(np.float32),
        np.where(usable, centre_y, 0.0).astype(np.float32),
        np.where(usable, radius, 1.0).astype(np.float32),
    )
    return drawn, points


def _ray_edges(flat_masks: np.ndarray, rays: Rays) -> tuple[np.ndarray, np.ndarray]:
    """Along ``rays`` of looks ``(k, m * m)``: the edge's ray point and whether there is one
    ``(k, a)`` (``_outermost_strong_peak``, against the typical (median over rays) largest radial
    step).

    One sparse product gives each ray's radial gradient (about 8 mask cells a ray point): a
    dense ``(k, m * m) @ (m * m, rays)`` product and ``np.gradient`` took 4 times as long.
    """
    step = np.abs((flat_masks @ rays.gradient).reshape(len(flat_masks), rays.angle.size, rays.rho.size))
    return _outermost_strong_peak(step, np.median(step.max(axis=2), axis=1))


def _outermost_strong_peak(step: np.ndarray, typical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along each ray (``step`` ``(n, a, s)``, the radial gradient's size from the outside
    inwards), the outermost plateau of equal steps (within ``OUTLINE_TIE_FRACTION`` of
    ``typical`` ``(n,)``) that is a local maximum and reaches ``OUTLINE_GRADIENT_FRACTION``
    of ``typical``: the ray point of its middle ``(n, a)`` (a whole or half index) and whether
    there is one ``(n, a)``.

    From the first strong point inwards the steps rise (or stay level) until they fall: the
    plateau before the first fall is that maximum. A plateau that touches either end of the
    ray is no local maximum.
    """
    s = step.shape[2]
    relative = step / np.maximum(typical, np.finfo(np.float32).tiny)[:, None, None].astype(step.dtype)
    change = np.diff(relative, axis=2)
    rises, falls = change > OUTLINE_TIE_FRACTION, change < -OUTLINE_TIE_FRACTION
    strong = relative >= OUTLINE_GRADIENT_FRACTION
    # The plateau ends where the steps first fall after the first strong point, and begins
    # after the last change of level before that (counted back from the ray's inner end).
    falls_inward = falls & (np.arange(s - 1) >= np.argmax(strong, axis=2)[..., None])
    last = np.argmax(falls_inward, axis=2)
    changed = (rises | falls) & (np.arange(s - 1) < last[..., None])
    first = np.where(changed.any(axis=2), s - 1 - np.argmax(changed[..., ::-1], axis=2), 0)
    found = strong.any(axis=2) & falls_inward.any(axis=2) & (first > 0) & (typical > 0)[:, None]
    return np.where(found, 0.5 * (first + last), 0.0), found


class EdgePoints(NamedTuple):
    """The edge found along each ray of ``outline``: ray angles ``(a,)``, the edge's distance
    from the model's centre ``(n, a)`` (radii of the model's radius) and whether an edge was
    found ``(n, a)``."""

    angle: np.ndarray
    distance: np.ndarray
    found: np.ndarray


def _strict(radius_px: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` whether each droplet's outline is fitted strictly (``OUTLINE_STRICT_MIN_RADIUS_PX``)."""
    return np.broadcast_to(np.asarray(radius_px) >= OUTLINE_STRICT_MIN_RADIUS_PX, (n,))


def _robust_circles(points: EdgePoints, strict: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Circles through ``points``, fitted again without outlying points: once, or for the
    ``strict`` ``(n,)`` droplets ``OUTLINE_STRICT_ROUNDS - 1`` times with a tighter bound inside
    the circle. Centres, radii and whether at least three points were left ``(n,)``."""
    px, py = np.cos(points.angle) * points.distance, np.sin(points.angle) * points.distance
    inliers = points.found
    centre_x, centre_y, radius = _fit_circles(px, py, inliers)
    inner_limit = np.where(strict, OUTLINE_STRICT_MADS, OUTLINE_OUTLIER_MADS)[:, None]
    for round_index in range(OUTLINE_STRICT_ROUNDS - 1 if strict.any() else 1):
        refit = strict | (round_index == 0)
        beyond = np.hypot(px - centre_x[:, None], py - centre_y[:, None]) - radius[:, None]
        spread = np.nanmedian(np.where(inliers, np.abs(beyond), np.nan), axis=1)
        bound = np.maximum(np.nan_to_num(spread), OUTLINE_STEP)[:, None]
        kept = points.found & (beyond <= OUTLINE_OUTLIER_MADS * bound) & (beyond >= -inner_limit * bound)
        inliers = np.where(refit[:, None], kept, inliers)
        centre_x, centre_y, radius = _fit_circles(px, py, inliers)
    return centre_x, centre_y, radius, inliers.sum(axis=1) >= 3


class Rays(NamedTuple):
    """The rays of ``outline`` on a grid of ``m`` cells a side: angles ``(a,)``, radii ``(s,)``
    (from the grid's ``extent`` inwards, radii) and the sparse ``(m * m, a * s)`` matrix that
    reads a flattened look's radial gradient at every ray point (angle-major; ``np.gradient``
    along each ray of the look sampled bilinearly)."""

    angle: np.ndarray
    rho: np.ndarray
    gradient: sparse.csc_array


@lru_cache(maxsize=4)
def _ray_sampling(size: int, extent: float) -> Rays:
    """``Rays`` on a ``size`` grid spanning ``-extent..extent`` (the same points for every droplet)."""
    angle = np.linspace(0.0, 2.0 * np.pi, OUTLINE_ANGLES, endpoint=False)
    rho = np.arange(extent, 0.1, -OUTLINE_STEP)
    cells_per_radius = (size - 1) / (2.0 * extent)
    u = ((size - 1) / 2.0 + np.cos(angle)[:, None] * rho[None, :] * cells_per_radius).ravel()
    v = ((size - 1) / 2.0 + np.sin(angle)[:, None] * rho[None, :] * cells_per_radius).ravel()
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    weights = np.zeros((u.size, size * size))
    rows = np.arange(u.size)
    for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):
        cu, cv = u0 + du, v0 + dv
        w = (1.0 - np.abs(u - cu)) * (1.0 - np.abs(v - cv))
        inside = (cu >= 0) & (cu < size) & (cv >= 0) & (cv < size)
        np.add.at(weights, (rows[inside], (cv * size + cu)[inside]), w[inside])
    along = weights.reshape(angle.size, rho.size, -1)
    gradient = np.gradient(along, axis=1).reshape(weights.shape).T.astype(np.float32)
    gradient[np.abs(gradient) < 1e-12] = 0.0
    return Rays(angle, rho, sparse.csc_array(gradient))


def _fit_circles(px: np.ndarray, py: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares (Kasa) circles through the points ``(n, k)`` where ``use``: centres and radii ``(n,)``."""
    w = use.astype(np.float64)
    design = np.stack([px, py, np.ones_like(px)], axis=2) * w[..., None]
    target = (px**2 + py**2) * w
    normal = np.einsum("nki,nkj->nij", design, design) + 1e-9 * np.eye(3)
    solved = np.linalg.solve(normal, np.einsum("nki,nk->ni", design, target)[..., None])[..., 0]
    centre_x, centre_y = solved[:, 0] / 2.0, solved[:, 1] / 2.0
    return centre_x, centre_y, np.sqrt(np.maximum(solved[:, 2] + centre_x**2 + centre_y**2, 1e-12))


def outline_columns(
    looks: np.ndarray, extent: float, x: np.ndarray, y: np.ndarray, radius: np.ndarray, columns: dict
) -> dict:
    """The outline's ``x``, ``y`` and ``radius`` (fit px) of droplets
    whose looks ``(n, m, m)`` (minus the background, on a grid of ``-extent..extent`` of their
    model ``radius`` ``(n,)``) are drawn at ``x``, ``y`` ``(n,)``; ``columns`` (the variant's
    other columns) come along with ``sd_radius`` scaled to the outline. Where ``columns``
    holds ``p_exists``, the outlines of droplets that overlap a shown neighbour stop at the
    contact (``_pressed_against``)."""
    radius = np.asarray(radius, np.float64)
    drawn, points = _outline_and_edge_points(looks, extent, radius)
    if "p_exists" in columns:
        drawn = _pressed_against(drawn, points, np.asarray(x), np.asarray(y), radius, np.asarray(columns["p_exists"]))
    columns = dict(columns)
    if "sd_radius" in columns:
        columns["sd_radius"] = columns["sd_radius"] * drawn.edge
    return {
        "x": np.asarray(x) + drawn.centre_x * radius,
        "y": np.asarray(y) + drawn.centre_y * radius,
        "radius": drawn.edge * radius,
        **columns,
    }


def _pressed_against(
    drawn: Outline, points: EdgePoints, x: np.ndarray, y: np.ndarray, radius: np.ndarray, p_exists: np.ndarray
) -> Outline:
    """``drawn`` with the outlines of droplets that overlap a neighbour's refitted to edge
    points that stop at the contact.

    Where two droplets touch, each look may draw the whole dark line between them, and the
    outermost step of that look is the neighbour's side of the line: outlines of a packed
    emulsion came out 10 % large. Two overlapping circles meet on their radical line (for
    droplets pressed flat, the contact), so a ray's edge point lies no further out than
    that line. Only droplets the table shows (``p_exists >= DOUBTFUL_BELOW``) press,
    and only where outlines overlap by more than ``PRESSED_OVERLAP_FRACTION`` of the smaller
    radius; other droplets are unchanged.
    """
    shown = np.flatnonzero(p_exists >= DOUBTFUL_BELOW)
    if shown.size < 2:
        return drawn
    centre = np.stack([x + drawn.centre_x * radius, y + drawn.centre_y * radius], axis=1)
    edge_px = drawn.edge * radius
    pairs = shown[cKDTree(centre[shown]).query_pairs(2.0 * float(edge_px[shown].max()), output_type="ndarray")]
    gap = np.hypot(*(centre[pairs[:, 0]] - centre[pairs[:, 1]]).T)
    smaller = np.minimum(edge_px[pairs[:, 0]], edge_px[pairs[:, 1]])
    pairs = pairs[gap < edge_px[pairs[:, 0]] + edge_px[pairs[:, 1]] - PRESSED_OVERLAP_FRACTION * smaller]
    if not len(pairs):
        return drawn
    # Each pair pressing both ways: droplet a's rays against neighbour b's circle.
    a, b = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    towards = centre[b] - centre[a]
    # The radical line: 2 q . towards = |c_b|^2 - |c_a|^2 - R_b^2 + R_a^2, on the ray q = o_a + t u.
    level = (centre[b] ** 2).sum(1) - (centre[a] ** 2).sum(1) - edge_px[b] ** 2 + edge_px[a] ** 2
    origin = np.stack([x[a], y[a]], axis=1)
    along = np.cos(points.angle)[None, :] * towards[:, :1] + np.sin(points.angle)[None, :] * towards[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        contact_px = (level - 2.0 * (origin * towards).sum(1))[:, None] / (2.0 * along)
    contact = np.where(along > 0, contact_px / radius[a][:, None], np.inf)
    distance = points.distance.copy()
    np.minimum.at(distance, a, contact)
    pressed = np.unique(a)
    centre_x, centre_y, edge, usable = _robust_circles(
        EdgePoints(points.angle, distance[pressed], points.found[pressed] & (distance[pressed] > 0)),
        # Points cut back to a contact lie inside the free outline by design: none is an inner feature.
        np.zeros(len(pressed), bool),
    )
    keep = usable & (edge > 0)
    pressed, centre_x, centre_y, edge = pressed[keep], centre_x[keep], centre_y[keep], edge[keep]
    fields = [np.array(field, copy=True) for field in drawn[:3]]
    for field, value in zip(fields, (centre_x, centre_y, edge)):
        field[pressed] = value
    return Outline(*fields)
