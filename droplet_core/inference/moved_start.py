"""Start a time-lapse frame's fit from the previous frame's fit itself, moved with the field.

Started from the previous frame's droplet table, a reuse fit begins from each droplet's
outline (centre and edge of its drawn look) and from compositions fitted afresh: neither is
where the model's own parameters were, and on the benchmark's movies the first iteration's
RMSE was about 2.8 times the converged one, so every frame used all its iterations to get
back. The previous fit's own parameters, moved by the field's shift, start it within the
droplets' own motion (about 1.7 times), and the fit reaches a lower RMSE in fewer iterations.
Droplets of a pixel or two start at their detections in the new frame instead: their own
motion is as large as they are, and where the last frame left them, the fit stays.

Droplets a detector shows to have appeared or grown at once (a coalescence's product) are
switched on in free slots, and the droplets they cover switched off; slots are added (to a
``bucket_size``, so compiled programs are shared) where too few are left free for the droplets
the residual may add.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from droplet_core.detection.scale import visible_fraction
from droplet_core.imaging import images
from droplet_core.models.common import bucket_size
from droplet_core.results import FitResult, WarmStartState

# The sites whose guide locations are placed directly: positions in fit px (a real support,
# unconstrained as they are) and the radius (a positive support, unconstrained as its log).
PLACED_SITES = ("x", "y", "radius")
# Free slots kept for droplets the residual adds: this fraction of the droplets, at least this many.
SPARE_FRACTION = 0.2
SPARE_MIN = 16
SMALLEST_RADIUS_PX = 0.5
# A smaller droplet is taken in by a new one when it overlaps the new one's halo (this many of
# its radii) by more than this fraction of its own radius.
HALO_RADII = 1.5
OVERLAP_FRACTION = 0.5
# A droplet the field carries out of the frame has left it once less than this share of its disk
# is inside: what is left is too little to size, and fitted on, the sliver grew it (a droplet of
# 2.7 px at the left edge of the browser test's example stack became one of 21 px).
LEFT_FIELD_VISIBLE = 0.25
# A droplet drawn smaller than this (fit px) starts at its detection in the new frame, where one is
# near (``RECENTRE_REACH_RADII`` of its radius, the pair each other's nearest) and of a like size
# (within ``RECENTRE_SIZE_RATIO``) and sure (``RECENTRE_MIN_P_EXISTS``). The masks are sampled at
# pixel centres, so such a droplet's misfit has a dip at about every 0.2-0.5 px of its position:
# started where the previous frame left it, the fit stays in the dip there and the error is
# carried from frame to frame. On the benchmark's movies droplets under 2 px followed 0.42 of
# their true step and the x intervals of later frames held the truth 0.75 of the time (0.86 from
# the detections, whose centres are taken afresh each frame: 0.16 px rms under 1.5 px).
RECENTRED_MAX_RADIUS_PX = 2.0
RECENTRE_REACH_RADII = 1.0
RECENTRE_SIZE_RATIO = 1.5
RECENTRE_MIN_P_EXISTS = 0.5


def moved_warm_start(
    previous: FitResult,
    shift_px: tuple[float, float],
    new_droplets: pd.DataFrame,
    detections: pd.DataFrame | None = None,
) -> FitResult | None:
    """``previous`` as a warm start for the next frame: its droplets moved by the field's shift.

    Parameters
    ----------
    previous : the previous frame's fit (same image size, model and downscale).
    shift_px : ``(dx, dy)`` the field's shift from that frame to this one (px of the frames).
    new_droplets : ``x``, ``y``, ``radius`` (px of the frames, outline radius) of droplets to
        switch on; smaller active droplets that those ``grown`` at once (all, without the
        column) take in (``HALO_RADII``) are switched off.
    detections : ``x``, ``y``, ``radius`` (px of the frames), ``p_exists``: the detector's
        droplets in the new frame, where small droplets start (``RECENTRED_MAX_RADIUS_PX``);
        None: every droplet starts where the field's shift took it.

    Returns
    -------
    A ``FitResult`` to pass as ``warm_start``: its guide locations and anchors (each active
    droplet's anchor at its moved position and drawn size) moved, slots switched, its losses
    empty; or None when its model has no ``x``, ``y`` and ``radius`` sites to move.
    """
    params = previous.params
    if previous.warm_start is None or any(f"{site}_auto_loc" not in params for site in PLACED_SITES):
        return None
    factor = previous.report.downscale
    origin_x, origin_y = previous.report.crop_origin
    anchors = np.array(previous.warm_start.anchors, np.float32)
    active = np.array(previous.warm_start.active, np.float32)
    n = len(active)
    known_ratio = previous.warm_start.drawn_ratio
    drawn_ratio = np.full(n, np.nan, np.float32) if known_ratio is None else np.array(known_ratio, np.float32)
    per_droplet = [name for name, value in params.items() if np.ndim(value) >= 1 and np.shape(value)[0] == n]
    params = {name: np.array(value) for name, value in params.items()}
    params["x_auto_loc"] += np.float32(shift_px[0] / factor)
    params["y_auto_loc"] += np.float32(shift_px[1] / factor)
    anchors[:, 0] += np.float32(shift_px[0] / factor)
    anchors[:, 1] += np.float32(shift_px[1] / factor)
    on = active > 0
    model_radius = np.exp(params["radius_auto_loc"])
    # The drawn outline reaches beyond the model's radius by a ratio set by the droplets' look.
    drawn_per_model = (
        float(np.median(previous.droplets["radius"]) / factor / np.median(model_radius[on]))
        if on.any() and len(previous.droplets)
        else 1.0
    )
    anchors[on] = np.stack(
        [params["x_auto_loc"][on], params["y_auto_loc"][on], model_radius[on] * drawn_per_model], axis=1
    )
    moved = pd.DataFrame({"x": anchors[:, 0], "y": anchors[:, 1], "radius": anchors[:, 2]})
    active[on & (visible_fraction(moved, *previous.observed.shape[:2]) < LEFT_FIELD_VISIBLE)] = 0.0
    on = active > 0
    if detections is not None:
        _recentred(params, anchors, on, detections, factor, (origin_x, origin_y), model_radius * drawn_per_model)

    new_x, new_y, new_radius = _in_fit_px(new_droplets, factor, (origin_x, origin_y))
    drawn_radius = np.exp(params["radius_auto_loc"]) * drawn_per_model
    grown = new_droplets["grown"].to_numpy(bool) if "grown" in new_droplets else np.ones(len(new_x), bool)
    for x, y, radius in zip(new_x[grown], new_y[grown], new_radius[grown]):
        # What it grew from: the smaller droplets it covers, or whose look overlaps its halo
        # (a coalescence's smaller part can sit that far out, and kept as it was it fits that
        # halo, frame after frame). A neighbour switched off by mistake leaves a residual
        # peak the fit switches on again.
        distance = np.hypot(params["x_auto_loc"] - x, params["y_auto_loc"] - y)
        covered = (distance < HALO_RADII * radius + OVERLAP_FRACTION * drawn_radius) & (drawn_radius < radius)
        active[covered] = 0.0
    typical = {name: np.median(params[name][on], axis=0) for name in per_droplet} if on.any() else {}
    needed = int(active.sum()) + len(new_x)
    slots = bucket_size(needed + max(SPARE_MIN, int(np.ceil(SPARE_FRACTION * needed))))
    if slots > n:
        params, anchors, active = _with_slots(params, anchors, active, per_droplet, typical, slots)
        drawn_ratio = np.concatenate([drawn_ratio, np.full(slots - n, np.nan, np.float32)])
    free = np.flatnonzero(active == 0)[: len(new_x)]
    drawn_ratio[free] = np.nan
    chosen = slice(0, len(free))
    for name in per_droplet:
        if name in typical:
            params[name][free] = typical[name]
    params["x_auto_loc"][free] = new_x[chosen]
    params["y_auto_loc"][free] = new_y[chosen]
    params["radius_auto_loc"][free] = np.log(np.maximum(new_radius[chosen] / drawn_per_model, SMALLEST_RADIUS_PX))
    anchors[free] = np.stack([new_x[chosen], new_y[chosen], new_radius[chosen]], axis=1)
    active[free] = 1.0
    return dataclasses.replace(
        previous,
        params=params,
        warm_start=WarmStartState(anchors, active, previous.warm_start.polarity, drawn_ratio),
        losses=np.zeros(0, np.float32),
    )


def _in_fit_px(table: pd.DataFrame, factor: float, origin_px: tuple[float, float]):
    """``x``, ``y``, ``radius`` ``(n,)`` each of ``table`` (px of the frames) in the fit's px."""
    x = images.to_fit_px(table["x"].to_numpy(float) - origin_px[0], factor)
    y = images.to_fit_px(table["y"].to_numpy(float) - origin_px[1], factor)
    return x, y, table["radius"].to_numpy(float) / factor


def _recentred(
    params: dict,
    anchors: np.ndarray,
    on: np.ndarray,
    detections: pd.DataFrame,
    factor: float,
    origin_px: tuple[float, float],
    drawn_radius: np.ndarray,
) -> None:
    """Move each small active droplet's guide location and anchor (in place) to its detection:
    the mutually nearest one of ``detections`` (px of the frames, as ``moved_warm_start``'s),
    within ``RECENTRE_REACH_RADII`` of its ``drawn_radius`` ``(n,)`` (fit px) and of a like size."""
    detections = detections[detections["p_exists"] >= RECENTRE_MIN_P_EXISTS]
    slots = np.flatnonzero(on & (drawn_radius < RECENTRED_MAX_RADIUS_PX))
    if detections.empty or slots.size == 0:
        return
    found_x, found_y, found_radius = _in_fit_px(detections, factor, origin_px)
    found = np.stack([found_x, found_y], axis=1)
    positions = np.stack([params["x_auto_loc"][slots], params["y_auto_loc"][slots]], axis=1)
    distance, nearest = cKDTree(found).query(positions)
    mutual = cKDTree(positions).query(found)[1][nearest] == np.arange(slots.size)
    ratio = found_radius[nearest] / drawn_radius[slots]
    like = (ratio > 1.0 / RECENTRE_SIZE_RATIO) & (ratio < RECENTRE_SIZE_RATIO)
    taken = mutual & like & (distance < RECENTRE_REACH_RADII * drawn_radius[slots])
    slots, centres = slots[taken], found[nearest[taken]]
    params["x_auto_loc"][slots], params["y_auto_loc"][slots] = centres[:, 0], centres[:, 1]
    anchors[slots, :2] = centres


def _with_slots(params: dict, anchors: np.ndarray, active: np.ndarray, per_droplet: list, typical: dict, slots: int):
    """``params``, ``anchors`` and ``active`` grown to ``slots`` slots: inactive ones with the
    ``typical`` droplet's parameters, anchored like the larger droplets (so their patches can
    draw most droplets)."""
    extra = slots - len(active)
    params = dict(params)
    for name in per_droplet:
        value = params[name]
        fill = typical.get(name, np.zeros(value.shape[1:], value.dtype))
        params[name] = np.concatenate([value, np.broadcast_to(fill, (extra, *value.shape[1:])).astype(value.dtype)])
    spare = np.tile(np.median(anchors[active > 0], axis=0) if (active > 0).any() else anchors[0], (extra, 1))
    if (active > 0).any():
        spare[:, 2] = np.percentile(anchors[active > 0, 2], 90)
    return (
        params,
        np.concatenate([anchors, spare.astype(np.float32)]),
        np.concatenate([active, np.zeros(extra, np.float32)]),
    )
