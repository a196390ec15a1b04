"""Geometry of synthetic scenes: droplet radii, placement (sparse to crowded, or packed) and drawing
each droplet in its own bounding box.

Coordinates follow the project's contract: ``x`` = column, ``y`` = row, pixel centre at its
integer index, radii in pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

# Random positions tried per droplet before it is left out of a crowded scene.
PLACEMENT_TRIES = 64
# Relaxation of a packed emulsion: iterations at most, and the largest overlap (fraction of
# the smaller radius of a pair) at which it counts as settled.
_PACKING_ITERATIONS = 500
_PACKING_TOLERANCE = 0.01
_MOMENTUM = 0.8
# Packing starts with the droplets at this fraction of their radii.
_START_SIZE = 0.6


def draw_radii(
    rng: np.random.Generator, n: int, median_px: float, log_sd: float, min_px: float, max_px: float
) -> np.ndarray:
    """``n`` lognormal radii truncated to ``[min_px, max_px]``, shape ``(n,)``, in the order drawn.

    Drawn by inverting the truncated distribution's CDF, so exactly ``n`` uniform draws are used.
    """
    mu = np.log(median_px)
    lo, hi = special.ndtr((np.log([min_px, max_px]) - mu) / log_sd)
    radii = np.exp(mu + log_sd * special.ndtri(rng.uniform(lo, hi, n)))
    return np.clip(radii, min_px, max_px)  # float round-off at the ends


def place_random(
    rng: np.random.Generator, radii: np.ndarray, width_px: int, height_px: int, min_distance_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``x, y``, radii and indices into ``radii`` ``(m,)`` of the droplets placed without much overlap.

    Random sequential placement of ``radii`` (give them largest first, so crowding leaves out
    small droplets, which still fit in gaps, rather than the rare large ones). A candidate centre
    ``c`` for radius ``r`` is free when ``|c - c_j| - f r_j >= f r`` for every placed droplet
    ``j`` (``f = min_distance_fraction``). The left side, sampled at pixel centres, is kept in
    a raster; as it changes by at most 0.71 within a pixel, the raster settles most
    candidates at once and only those near a boundary get the exact check, so even a scene
    that is full stays fast. Droplets that find no free place are left out.
    """
    f = min_distance_fraction
    clearance = np.full((height_px, width_px), np.inf)
    half_diagonal = np.sqrt(0.5)
    placed = np.empty((len(radii), 3))  # x, y, radius
    kept = np.empty(len(radii), dtype=np.intp)
    count = 0
    for index, radius in enumerate(radii):
        cx = rng.uniform(0.0, width_px - 1.0, PLACEMENT_TRIES)
        cy = rng.uniform(0.0, height_px - 1.0, PLACEMENT_TRIES)
        near = clearance[np.rint(cy).astype(int), np.rint(cx).astype(int)]
        for candidate in np.flatnonzero(near + half_diagonal >= f * radius):
            if near[candidate] - half_diagonal < f * radius:  # near a boundary: check exactly
                others = placed[:count]
                gap = np.hypot(others[:, 0] - cx[candidate], others[:, 1] - cy[candidate]) - f * others[:, 2]
                if (gap < f * radius).any():
                    continue
            x, y = cx[candidate], cy[candidate]
            placed[count] = x, y, radius
            kept[count] = index
            count += 1
            # Later droplets are no larger, so the raster matters only within f * 2r.
            reach = int(np.ceil(2.0 * f * radius + 1.0))
            r0, r1 = max(int(y) - reach, 0), min(int(y) + reach + 2, height_px)
            c0, c1 = max(int(x) - reach, 0), min(int(x) + reach + 2, width_px)
            distance = np.hypot(np.arange(c0, c1)[None, :] - x, np.arange(r0, r1)[:, None] - y)
            np.minimum(clearance[r0:r1, c0:c1], distance - f * radius, out=clearance[r0:r1, c0:c1])
            break
    return placed[:count, 0], placed[:count, 1], placed[:count, 2], kept[:count]


def close_pairs(x: np.ndarray, y: np.ndarray, radius: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
    """Index pairs ``(m, 2)`` of droplets whose disks come within ``margin_px`` of each other.

    Droplets are sorted into size classes (radii within a factor of 2) and each pair of
    classes is searched with a k-d tree within the sum of their largest radii, so the search
    costs about the droplets' total area, whatever the spread of sizes.
    """
    if len(x) < 2:
        return np.zeros((0, 2), dtype=np.intp)
    centres = np.column_stack([x, y])
    size_class = np.floor(np.log2(radius / radius.min())).astype(int)
    members = [np.flatnonzero(size_class == c) for c in np.unique(size_class)]
    trees = [cKDTree(centres[m]) for m in members]
    first, second = [], []
    for a, (members_a, tree_a) in enumerate(zip(members, trees)):
        for members_b, tree_b in zip(members[a:], trees[a:]):
            reach = radius[members_a].max() + radius[members_b].max() + margin_px
            if members_b is members_a:
                pairs = tree_a.query_pairs(reach, output_type="ndarray")
                i, j = members_a[pairs[:, 0]], members_a[pairs[:, 1]]
            else:
                near = tree_a.sparse_distance_matrix(tree_b, reach, output_type="ndarray")
                i, j = members_a[near["i"]], members_b[near["j"]]
            gap = np.hypot(x[i] - x[j], y[i] - y[j]) - radius[i] - radius[j]
            first.append(i[gap < margin_px])
            second.append(j[gap < margin_px])
    return np.column_stack([np.concatenate(first), np.concatenate(second)]).astype(np.intp)


def contact_counts(x: np.ndarray, y: np.ndarray, radius: np.ndarray, margin_px: float = 0.5) -> np.ndarray:
    """Number of neighbours ``(n,)`` each droplet touches (disks closer than ``margin_px``)."""
    pairs = close_pairs(x, y, radius, margin_px)
    return np.bincount(pairs.ravel(), minlength=len(x))


def pack(
    rng: np.random.Generator, radii: np.ndarray, width_px: int, height_px: int, flattening: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``x, y`` and radii ``(n,)`` of a densely packed emulsion of ``radii``, in their order.

    The droplets start at random centres in the image and are relaxed as soft disks
    (each overlapping pair pushed apart along its line of centres, the smaller one
    further, small droplets being stiffer) until no pair overlaps by more than
    ``_PACKING_TOLERANCE`` of its smaller radius or ``_PACKING_ITERATIONS`` have run (a
    jammed emulsion keeps small overlaps: its flattened contacts); centres stay inside the
    image (droplets on the border are cut by it). Every
    radius is then grown by the factor ``1 + flattening``, so droplets that settled
    touching overlap a little: drawn with their contacts clipped along the radical line
    (``edge_fields``), they look pressed flat against each other.
    """
    n = len(radii)
    radius = np.asarray(radii, dtype=np.float64)
    x = rng.uniform(0.0, width_px - 1.0, n)
    y = rng.uniform(0.0, height_px - 1.0, n)
    typical = float(np.median(radius)) if n else 0.0
    skin = 0.5 * typical
    pairs = np.zeros((0, 2), dtype=np.intp)
    velocity_x, velocity_y = np.zeros(n), np.zeros(n)
    for iteration in range(_PACKING_ITERATIONS if n else 0):
        # The droplets grow to their size over the first half, so the crowd spreads gently
        # instead of bursting apart from random overlaps into the image's borders.
        size = min(1.0, _START_SIZE + (1.0 - _START_SIZE) * iteration / (0.5 * _PACKING_ITERATIONS))
        if iteration % 8 == 0:  # droplets move less than the skin between rebuilds
            pairs = close_pairs(x, y, size * radius, skin)
            i, j = pairs[:, 0], pairs[:, 1]
            smaller = np.minimum(radius[i], radius[j])
            # About half the overlap is removed per step, shared inversely to the droplets'
            # areas. Small droplets are stiffer (Laplace pressure grows as 1 / r), so a contact
            # pushes back by how much it deforms its smaller droplet, not by its overlap in px.
            share_j = radius[i] ** 2 / (radius[i] ** 2 + radius[j] ** 2)
            stiffness = np.clip(typical / smaller, 0.5, 2.0)
        dx, dy = x[j] - x[i], y[j] - y[i]
        distance = np.maximum(np.hypot(dx, dy), 1e-6)
        overlap = np.maximum(size * (radius[i] + radius[j]) - distance, 0.0)
        if size == 1.0 and iteration % 8 == 0 and (overlap / smaller).max(initial=0.0) < _PACKING_TOLERANCE:
            break
        step = 0.5 * stiffness * overlap / distance
        move_x = np.bincount(j, step * share_j * dx, n) - np.bincount(i, step * (1.0 - share_j) * dx, n)
        move_y = np.bincount(j, step * share_j * dy, n) - np.bincount(i, step * (1.0 - share_j) * dy, n)
        # Momentum (as in FIRE) carries droplets across the slow, flat directions of a jam;
        # a droplet drops it when it runs against the push.
        against = velocity_x * move_x + velocity_y * move_y < 0.0
        velocity_x[against], velocity_y[against] = 0.0, 0.0
        # A droplet pushed by many neighbours at once would overshoot.
        limit = 0.25 * radius
        velocity_x = np.clip(_MOMENTUM * velocity_x + move_x, -limit, limit)
        velocity_y = np.clip(_MOMENTUM * velocity_y + move_y, -limit, limit)
        x, y = x + velocity_x, y + velocity_y
        # The border stops a droplet's centre, and its momentum across the border.
        velocity_x[(x < 0.0) | (x > width_px - 1.0)] = 0.0
        velocity_y[(y < 0.0) | (y > height_px - 1.0)] = 0.0
        x, y = np.clip(x, 0.0, width_px - 1.0), np.clip(y, 0.0, height_px - 1.0)
    return x, y, radius * (1.0 + flattening)


# --- drawing droplets in their own bounding boxes -----------------------------------------------

Shader = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def edge_fields(
    dx: np.ndarray,
    dy: np.ndarray,
    radius: np.ndarray,
    half: int,
    contact_offset: np.ndarray | None = None,
    contact_normal: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates and distance to the outline of droplets in square patches of side ``p = 2 half + 1``.

    Parameters
    ----------
    dx, dy : ``(n,)`` centres' offsets (px) from their patch's middle pixel.
    radius : ``(n,)`` radii (px).
    half : patch half-size (px).
    contact_offset, contact_normal : ``(n, k)`` and ``(n, k, 2)``: per droplet, the distance
        (px) from its centre to the radical line it shares with each overlapping neighbour,
        and the unit vector towards that neighbour (pad with ``inf`` offsets). ``None``:
        no contacts.

    Returns
    -------
    u, v : ``(n, p, p)`` pixel position relative to the centre in radii (x, y).
    edge_px : ``(n, p, p)`` signed distance (px) to the droplet's outline, positive inside:
        the disk, cut flat along the radical lines of its contacts. For the disk part the
        radius is reduced by ``1 / (24 r)``, which makes ``clip(edge_px + 0.5, 0, 1)`` cover
        exactly the disk's area.
    """
    grid = np.arange(-half, half + 1, dtype=np.float32)
    qx = grid[None, None, :] - dx[:, None, None].astype(np.float32)
    qy = grid[None, :, None] - dy[:, None, None].astype(np.float32)
    scale = radius[:, None, None].astype(np.float32)
    effective = np.sqrt(np.maximum(scale**2 - 1.0 / 12.0, 0.0))
    edge = effective - np.hypot(qx, qy)
    if contact_offset is not None and contact_offset.shape[1]:
        nx = contact_normal[..., 0].astype(np.float32)[:, :, None, None]
        ny = contact_normal[..., 1].astype(np.float32)[:, :, None, None]
        cut = contact_offset.astype(np.float32)[:, :, None, None] - (qx[:, None] * nx + qy[:, None] * ny)
        edge = np.minimum(edge, cut.min(axis=1))
    return qx / scale, qy / scale, edge


def contacts_of(x: np.ndarray, y: np.ndarray, radius: np.ndarray, gap_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Radical-line cuts of overlapping droplets, for ``edge_fields``.

    Returns
    -------
    offset : ``(n, k)`` distance (px) from each centre to the radical line shared with each
        of its up to ``k`` overlapping neighbours, less ``gap_px / 2`` (a thin film of the
        continuous phase between pressed droplets); ``inf`` pads.
    normal : ``(n, k, 2)`` unit vectors from the centre towards those neighbours.
    """
    n = len(x)
    pairs = close_pairs(x, y, radius, 0.0)
    if not len(pairs):
        return np.zeros((n, 0)), np.zeros((n, 0, 2))
    both = np.concatenate([pairs, pairs[:, ::-1]])
    i, j = both[:, 0], both[:, 1]
    delta = np.column_stack([x[j] - x[i], y[j] - y[i]])
    distance = np.maximum(np.hypot(delta[:, 0], delta[:, 1]), 1e-6)
    # Power distances |p - c_i|^2 - r_i^2 and |p - c_j|^2 - r_j^2 are equal on the radical line.
    offset = (distance**2 + radius[i] ** 2 - radius[j] ** 2) / (2.0 * distance) - 0.5 * gap_px
    order = np.argsort(i, kind="stable")
    i, offset, normal = i[order], offset[order], (delta / distance[:, None])[order]
    counts = np.bincount(i, minlength=n)
    slot = np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)
    offsets = np.full((n, counts.max()), np.inf)
    normals = np.zeros((n, counts.max(), 2))
    offsets[i, slot] = offset
    normals[i, slot] = normal
    return offsets, normals


def paint(
    canvas: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    shade: Shader,
    extent: float | np.ndarray = 1.0,
    margin_px: int = 2,
    contacts: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``canvas`` ``(h, w, c)`` with droplets ``(n,)`` composited over it, each in its own box.

    Each droplet covers a square patch reaching ``extent * radius + margin_px`` around its
    nearest pixel (``extent`` one number or one per droplet). Droplets with the same patch size are shaded together: ``shade(members,
    u, v, edge_px)`` gets their indices ``(m,)`` and the ``(m, p, p)`` fields of
    ``edge_fields`` and returns opacity ``(m, p, p, 1)`` and premultiplied value ``(m, p, p,
    c)``; the patch becomes ``patch * (1 - opacity) + premultiplied``. A premultiplied value
    of ``None`` (zero) with any opacity multiplies what is under the droplet by ``1 -
    opacity``: transmitted light.
    Larger droplets go first, so small ones stay on top. ``contacts`` (``contacts_of``) cuts
    overlapping droplets along their radical lines.
    """
    if not len(x):
        return canvas
    half = np.ceil(radius * extent + margin_px).astype(int)
    col, row = np.rint(x).astype(int), np.rint(y).astype(int)
    # Centres may lie outside the image (particles inside a droplet cut by the border).
    outside = max(0, -col.min(), -row.min(), col.max() - canvas.shape[1] + 1, row.max() - canvas.shape[0] + 1)
    pad = int(half.max()) + int(outside)
    padded = np.pad(canvas, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    for size in np.unique(half)[::-1]:
        members = np.flatnonzero(half == size)
        cut = (contacts[0][members], contacts[1][members]) if contacts is not None else (None, None)
        u, v, edge = edge_fields(x[members] - col[members], y[members] - row[members], radius[members], size, *cut)
        alpha, premultiplied = shade(members, u, v, edge)
        for index, member in enumerate(members):
            top, left = row[member] + pad - size, col[member] + pad - size
            patch = padded[top : top + 2 * size + 1, left : left + 2 * size + 1]
            patch *= 1.0 - alpha[index]
            if premultiplied is not None:
                patch += premultiplied[index]
    return padded[pad : pad + canvas.shape[0], pad : pad + canvas.shape[1]]
