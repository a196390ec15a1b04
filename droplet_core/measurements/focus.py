"""Which droplets are out of focus: the blur of each droplet's edge, measured in the image.

A droplet off the focal plane is drawn with a blurred edge. The fit's learned look cannot tell
(every droplet is drawn with the same few mask types, so a blurred droplet borrows a sharp look,
and an edge width read off the look grows with the radius), so the edge is measured in the
image itself: the median radial profile of each droplet across its fitted outline, matched to a
step blurred by a Gaussian (an erfc), whose sd is the edge's blur.

On the second renderer's fluorescence scenes (in focus: a Gaussian psf of 1 px; out of focus:
0.2-0.45 radii more) the blur of in-focus droplets is 0.6-1.3 px, that of out-of-focus ones
1.9-10 px.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import erfc

from droplet_core.measurements.counting import DOUBTFUL_BELOW

# The profile spans the outline +- this many radii (at least EDGE_REACH_MIN_PX), in
# PROFILE_POINTS steps, each the median over PROFILE_ANGLES rays: a neighbour pressed
# against part of the outline moves the median little.
EDGE_REACH_RADII = 0.5
EDGE_REACH_MIN_PX = 4.0
PROFILE_POINTS = 17
PROFILE_ANGLES = 16
# Edge positions tried (fractions of the reach about the outline) with a few blurs, then,
# at the best position, every blur (px) of a finer ladder.
EDGE_SHIFTS = np.linspace(-0.5, 0.5, 9)
COARSE_BLURS_PX = np.array([0.5, 1.5, 4.0, 10.0])
BLURS_PX = np.geomspace(0.3, 20.0, 24)
# A droplet is out of focus where its edge is this many times blurrier than the median
# droplet's, by at least OUT_OF_FOCUS_MIN_EXCESS_PX, and by at least this fraction of its radius
# (defocus blurs in proportion to the distance from the focal plane, which grows with the
# droplet; a large droplet's edge is widened by a fraction of a pixel of misplaced centre
# around its whole outline, and a small one's by the pixels).
OUT_OF_FOCUS_BLUR_RATIO = 1.5
OUT_OF_FOCUS_MIN_EXCESS_PX = 1.0
OUT_OF_FOCUS_MIN_BLUR_RADII = 0.1


def edge_blur_px(channel: np.ndarray, x_px, y_px, radius_px) -> np.ndarray:
    """Gaussian sd (px) of the blur of each droplet's edge.

    Parameters
    ----------
    channel : (h, w) the image the droplets were fitted in, one channel.
    x_px, y_px, radius_px : (n,) each droplet's centre (column, row) and radius, px of ``channel``.

    Returns
    -------
    (n,) the sd of the Gaussian that best blurs a step at the outline into the droplet's median
    radial profile (one of ``BLURS_PX``).
    """
    x, y, radius = (np.asarray(a, float) for a in (x_px, y_px, radius_px))
    if not len(x):
        return np.zeros(0)
    reach = np.maximum(EDGE_REACH_MIN_PX, EDGE_REACH_RADII * radius)
    steps = np.linspace(-1.0, 1.0, PROFILE_POINTS)
    distance = radius[:, None] + reach[:, None] * steps  # (n, k)
    angles = np.linspace(0.0, 2.0 * np.pi, PROFILE_ANGLES, endpoint=False)
    columns = x[:, None, None] + distance[:, :, None] * np.cos(angles)
    rows = y[:, None, None] + distance[:, :, None] * np.sin(angles)
    samples = ndimage.map_coordinates(channel, [rows.ravel(), columns.ravel()], order=1, mode="nearest")
    profile = np.median(samples.reshape(columns.shape), axis=2)
    profile = profile - profile.mean(axis=1, keepdims=True)
    # A blurred step is drawn once for all droplets with the same reach (every droplet smaller
    # than EDGE_REACH_MIN_PX / EDGE_REACH_RADII): the error functions were most of the time.
    reaches, which = np.unique(reach, return_inverse=True)
    shift, blur = (a.ravel() for a in np.meshgrid(EDGE_SHIFTS, COARSE_BLURS_PX, indexing="ij"))
    coarse = _blurred_steps(reaches, steps, shift[None, :], blur[None, :])
    best_shift = np.argmin(_step_misfit(profile, coarse, which), axis=1) // len(COARSE_BLURS_PX)
    drawn, at = np.unique(which * len(EDGE_SHIFTS) + best_shift, return_inverse=True)
    fine = _blurred_steps(
        reaches[drawn // len(EDGE_SHIFTS)], steps, EDGE_SHIFTS[drawn % len(EDGE_SHIFTS)][:, None], BLURS_PX[None, :]
    )
    return BLURS_PX[np.argmin(_step_misfit(profile, fine, at), axis=1)]


def _blurred_steps(reach: np.ndarray, steps: np.ndarray, shift: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """``(u, p, k)`` a step at each ``shift`` blurred by each ``blur`` (both broadcast to
    ``(u, p)``), sampled at ``steps`` ``(k,)`` of each ``reach`` ``(u,)``, less its mean."""
    offset = reach[:, None, None] * (steps[None, None, :] - shift[:, :, None])
    step = 0.5 * erfc(offset / (np.sqrt(2.0) * blur[:, :, None]))
    return step - step.mean(axis=2, keepdims=True)


def _step_misfit(profile: np.ndarray, step: np.ndarray, which: np.ndarray) -> np.ndarray:
    """``(n, p)`` least-squares misfit of each droplet's centred ``profile`` ``(n, k)`` by the
    ``which`` ``(n,)`` of the centred ``step`` ``(u, p, k)`` (``_blurred_steps``), its height fitted."""
    along = np.einsum("npk,nk->np", step[which], profile)
    squared = np.einsum("upk,upk->up", step, step)[which]
    return np.sum(profile**2, axis=1)[:, None] - along**2 / np.maximum(squared, 1e-12)


def in_focus(edge_blur: np.ndarray, radius_px: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """``(n,)`` False for droplets whose ``edge_blur`` (px, ``edge_blur_px``) marks them out of
    focus against the median of the ``counted`` droplets' (``(n,)`` bool, default all;
    ``OUT_OF_FOCUS_BLUR_RATIO``, ``OUT_OF_FOCUS_MIN_EXCESS_PX``, ``OUT_OF_FOCUS_MIN_BLUR_RADII``;
    ``radius_px`` ``(n,)``)."""
    edge_blur = np.asarray(edge_blur, float)
    counted = np.ones(len(edge_blur), bool) if counted is None else np.asarray(counted, bool)
    if not counted.any():
        return np.ones(len(edge_blur), bool)
    typical = float(np.median(edge_blur[counted]))
    limit = np.maximum(
        max(OUT_OF_FOCUS_BLUR_RATIO * typical, typical + OUT_OF_FOCUS_MIN_EXCESS_PX),
        OUT_OF_FOCUS_MIN_BLUR_RADII * np.asarray(radius_px, float),
    )
    return edge_blur <= limit


def with_edge_blur(droplets: pd.DataFrame, channel: np.ndarray) -> pd.DataFrame:
    """``droplets`` (``x``, ``y``, ``radius``, ``p_exists``; px of ``channel``, ``(h, w)``) with
    ``edge_width`` (px, ``edge_blur_px``) and ``in_focus`` measured in ``channel``, against the
    droplets that are not doubtful."""
    x, y, radius = (droplets[name].to_numpy(float) for name in ("x", "y", "radius"))
    blur = edge_blur_px(channel, x, y, radius)
    return droplets.assign(
        edge_width=blur, in_focus=in_focus(blur, radius, droplets["p_exists"].to_numpy() >= DOUBTFUL_BELOW)
    )
