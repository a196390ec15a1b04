"""Synthetic time-lapse stacks with known tracks and events, and scoring against them.

Droplets in the seed family's look (``droplet_core.synthetic.scenes``) drift with the whole field,
wander by Brownian motion, grow or shrink each at its own rate, enter and leave the field
with the drift, and scripted pairs of neighbours coalesce (volume conserved, the merged
droplet at their volume-weighted centre).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from droplet_core.detection.matching import match_pairs
from droplet_core.synthetic.scene_geometry import draw_radii, place_random
from droplet_core.synthetic.scenes import SceneSettings, render_seed_droplets

TRUTH_COLUMNS = ("frame", "track", "x", "y", "radius")
# Rendered beyond the field on every side, so droplets enter and leave it whole.
MARGIN_PX = 24


@dataclass(frozen=True)
class StackSceneSettings:
    """A synthetic movie.

    Attributes
    ----------
    scene : size, droplet count and radii (of the first frame, over the field and the strip
        the drift brings in) and the look.
    n_frames : frames.
    drift_px : the field's shift per frame (dx, dy).
    brownian_sd_px : sd of each droplet's own step per frame and axis.
    growth_sd : sd of the droplets' growth rates (relative radius change per frame). A growing
        droplet stops where it would come closer to a neighbour than the scene places droplets
        (``scene.min_distance_fraction``): only the scripted coalescences merge droplets.
    vanish_radius_fraction : a droplet that shrinks below this fraction of the scene's smallest
        radius dissolves (a ``disappearance`` event where it was in the field).
    coalescences : pairs of neighbours that coalesce, spread over the movie.
    coalescing_radius_px : the smallest radius of a droplet that coalesces (0: any).
    """

    scene: SceneSettings = SceneSettings(
        width_px=200,
        height_px=160,
        n_droplets=70,
        radius_min_px=3.0,
        radius_max_px=8.0,
        radius_median_px=4.5,
        radius_log_sd=0.3,
        min_distance_fraction=1.25,
    )
    n_frames: int = 8
    drift_px: tuple[float, float] = (1.0, 0.5)
    brownian_sd_px: float = 0.25
    growth_sd: float = 0.01
    vanish_radius_fraction: float = 1.0
    coalescences: int = 2
    coalescing_radius_px: float = 0.0

    def __post_init__(self) -> None:
        if self.n_frames < 2:
            raise ValueError("a stack needs at least 2 frames")
        if self.coalescences < 0 or self.brownian_sd_px < 0 or self.growth_sd < 0:
            raise ValueError("coalescences, brownian_sd_px and growth_sd must not be negative")


def make_stack(
    seed: int, settings: StackSceneSettings = StackSceneSettings()
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Render a synthetic movie.

    Returns
    -------
    frames : uint8 ``(t, h, w, 3)``.
    truth : ``TRUTH_COLUMNS``, one row per droplet whose centre is in a frame.
    events : ``frame`` (the first frame after it), ``kind`` (``coalescence`` or
        ``disappearance``), ``tracks_before`` (``;``-joined track ids: a coalescence's two, the
        dissolved droplet's), ``tracks_after`` (the merged droplet's; empty for a disappearance),
        ``x``, ``y`` (where the merged droplet begins, where the dissolved one was last).
    """
    rng = np.random.default_rng(seed)
    scene, t = settings.scene, settings.n_frames
    width, height = scene.width_px, scene.height_px
    dx, dy = settings.drift_px
    # Droplets start over the field and the strip that the drift carries into it.
    extra_x, extra_y = int(np.ceil(abs(dx) * t)), int(np.ceil(abs(dy) * t))
    area_scale = (width + extra_x) * (height + extra_y) / (width * height)
    radii = np.sort(
        draw_radii(
            rng,
            int(scene.n_droplets * area_scale),
            scene.radius_median_px,
            scene.radius_log_sd,
            scene.radius_min_px,
            scene.radius_max_px,
        )
    )[::-1]
    x0, y0, r0, _ = place_random(rng, radii, width + extra_x, height + extra_y, scene.min_distance_fraction)
    x0 = x0 - (extra_x if dx > 0 else 0)
    y0 = y0 - (extra_y if dy > 0 else 0)
    n = len(r0)
    steps = rng.normal(0.0, settings.brownian_sd_px, size=(t, n, 2))
    steps[0] = 0.0
    x = x0[None, :] + dx * np.arange(t)[:, None] + np.cumsum(steps[..., 0], axis=0)
    y = y0[None, :] + dy * np.arange(t)[:, None] + np.cumsum(steps[..., 1], axis=0)
    rates = rng.normal(0.0, settings.growth_sd, n)
    composition = rng.dirichlet(scene.composition_concentration, size=n)
    radius = np.full((t, n), np.nan)
    radius[0] = r0
    alive = np.zeros((t, n), bool)
    alive[0] = True

    event_frames = set(np.linspace(1, t - 1, settings.coalescences + 2)[1:-1].round().astype(int)) if t > 2 else set()
    events = []
    for frame in range(1, t):
        radius[frame], alive[frame] = _grown(
            x[frame], y[frame], radius[frame - 1], rates, alive[frame - 1], scene, settings.vanish_radius_fraction
        )
        seen_gone = (
            alive[frame - 1] & ~alive[frame] & _inside(x[frame - 1], y[frame - 1], 0.0, width - 1.0, height - 1.0)
        )
        for gone in np.flatnonzero(seen_gone):
            events.append((frame, "disappearance", str(gone), "", x[frame - 1, gone], y[frame - 1, gone]))
        if frame not in event_frames:
            continue
        pair = _coalescing_pair(
            x[frame], y[frame], radius[frame], alive[frame], width, height, settings.coalescing_radius_px
        )
        if pair is None:
            continue
        a, b = pair
        volume = radius[frame - 1, a] ** 3 + radius[frame - 1, b] ** 3
        weight = radius[frame - 1, a] ** 3 / volume
        merged_x = weight * x[frame - 1, a] + (1 - weight) * x[frame - 1, b]
        merged_y = weight * y[frame - 1, a] + (1 - weight) * y[frame - 1, b]
        # The merged droplet: a new track from `frame` on, moving with the field from where the pair was.
        later = np.arange(frame, t)
        x, y, radius = (np.concatenate([values, np.full((t, 1), np.nan)], axis=1) for values in (x, y, radius))
        x[later, -1] = merged_x + dx * (later - frame + 1)
        y[later, -1] = merged_y + dy * (later - frame + 1)
        radius[frame, -1] = np.cbrt(volume)
        rates = np.append(rates, 0.0)
        alive = np.concatenate([alive, np.zeros((t, 1), bool)], axis=1)
        alive[frame, -1] = True
        alive[frame, [a, b]] = False
        composition = np.concatenate([composition, (weight * composition[a] + (1 - weight) * composition[b])[None]])
        events.append(
            (frame, "coalescence", f"{min(a, b)};{max(a, b)}", str(alive.shape[1] - 1), x[frame, -1], y[frame, -1])
        )

    render = dataclasses.replace(scene, width_px=width + 2 * MARGIN_PX, height_px=height + 2 * MARGIN_PX)
    frames, rows = [], []
    for frame in range(t):
        show = alive[frame] & _inside(x[frame], y[frame], -MARGIN_PX / 2, width + MARGIN_PX / 2, height + MARGIN_PX / 2)
        image = render_seed_droplets(
            x[frame, show] + MARGIN_PX,
            y[frame, show] + MARGIN_PX,
            radius[frame, show],
            composition[show],
            render,
            background_seed=seed,
            noise_seed=seed * 1000 + frame,
        )
        frames.append(image[MARGIN_PX : MARGIN_PX + height, MARGIN_PX : MARGIN_PX + width])
        seen = np.flatnonzero(alive[frame] & _inside(x[frame], y[frame], 0.0, width - 1.0, height - 1.0))
        rows.extend((frame, int(i), x[frame, i], y[frame, i], radius[frame, i]) for i in seen)
    truth = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    event_table = pd.DataFrame(events, columns=["frame", "kind", "tracks_before", "tracks_after", "x", "y"])
    return np.stack(frames), truth, event_table


def _grown(
    x: np.ndarray,
    y: np.ndarray,
    radius_px: np.ndarray,
    rates: np.ndarray,
    alive: np.ndarray,
    scene: SceneSettings,
    vanish_radius_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The droplets ``(n,)`` a frame later, at positions ``x``, ``y`` px: their radii px (NaN for
    the dead) and which are alive. Each living droplet's radius changes by its relative ``rate``,
    a growing one only while it keeps the scene's ``min_distance_fraction`` from every neighbour
    (as they were); one below ``vanish_radius_fraction`` of ``scene.radius_min_px`` dissolves."""
    living = np.flatnonzero(alive)
    if living.size == 0:
        return np.full(radius_px.shape, np.nan), alive.copy()
    before = radius_px[living]
    after = before * (1.0 + rates[living])
    spacing = scene.min_distance_fraction
    centres = np.column_stack([x[living], y[living]])
    pairs = cKDTree(centres).query_pairs(spacing * 2.0 * max(after.max(), before.max()), output_type="ndarray")
    distance = np.hypot(*(centres[pairs[:, 0]] - centres[pairs[:, 1]]).T)
    room = np.full(len(living), np.inf)
    np.minimum.at(room, pairs[:, 0], distance / spacing - before[pairs[:, 1]])
    np.minimum.at(room, pairs[:, 1], distance / spacing - before[pairs[:, 0]])
    after = np.where(after > before, np.minimum(after, np.maximum(before, room)), after)
    radius = np.full(radius_px.shape, np.nan)
    radius[living] = after
    now_alive = np.zeros_like(alive)
    now_alive[living] = after >= vanish_radius_fraction * scene.radius_min_px
    radius[~now_alive] = np.nan
    return radius, now_alive


def _inside(x: np.ndarray, y: np.ndarray, low: float, high_x: float, high_y: float) -> np.ndarray:
    return (x >= low) & (x <= high_x) & (y >= low) & (y <= high_y)


def _coalescing_pair(x, y, radius, alive, width: int, height: int, min_radius_px: float) -> tuple[int, int] | None:
    """The two living droplets of at least ``min_radius_px`` well inside the field whose gap is
    the smallest, and whose merged droplet would not touch a third."""
    margin = 3.0 * np.nanmax(radius)
    ok = np.flatnonzero(
        alive
        & _inside(x, y, margin, width - 1 - margin, height - 1 - margin)
        & (np.nan_to_num(radius) >= min_radius_px)
    )
    best, best_gap = None, np.inf
    for a in ok:
        others = np.flatnonzero(alive)
        others = others[others != a]
        gaps = np.hypot(x[others] - x[a], y[others] - y[a]) - radius[others] - radius[a]
        for b in others[np.argsort(gaps)[:2]]:
            if b not in ok:
                continue
            merged = np.cbrt(radius[a] ** 3 + radius[b] ** 3)
            weight = radius[a] ** 3 / merged**3
            cx, cy = weight * x[a] + (1 - weight) * x[b], weight * y[a] + (1 - weight) * y[b]
            rest = others[others != b]
            clear = np.hypot(x[rest] - cx, y[rest] - cy) - radius[rest] - merged
            gap = np.hypot(x[b] - x[a], y[b] - y[a]) - radius[a] - radius[b]
            if clear.min(initial=np.inf) > 1.0 and gap < best_gap:
                best, best_gap = (int(a), int(b)), gap
    return best


@dataclass(frozen=True)
class TrackScore:
    """How well linked tracks follow the true ones.

    ``followed_fraction``: true tracks (seen in at least 2 frames) matched in every frame
    but at most one, always to one track; ``switches_per_1000``: identity switches (a true
    track's match changing track) per 1000 true droplet-frames; ``coalescence_precision`` /
    ``recall``: found coalescences within one frame and two merged radii of a true one.
    """

    followed_fraction: float
    switches_per_1000: float
    coalescence_precision: float
    coalescence_recall: float
    true_tracks: int
    droplet_frames: int


def score_tracks(
    tracks: pd.DataFrame, events: pd.DataFrame, truth: pd.DataFrame, true_events: pd.DataFrame
) -> TrackScore:
    """Score ``link_droplets``' tracks (``x_px``, ``y_px``, ``radius_px``, ``track``, ``frame``) and
    ``find_events``' events against ``make_stack``'s truth."""
    assigned = {}
    for frame, true_frame in truth.groupby("frame"):
        found = tracks[tracks["frame"] == frame]
        found_xy = pd.DataFrame({"x": found["x_px"].to_numpy(), "y": found["y_px"].to_numpy()})
        true_index, found_index = match_pairs(true_frame[["x", "y", "radius"]].reset_index(drop=True), found_xy)
        for t_i, f_i in zip(true_index, found_index):
            assigned[(frame, int(true_frame["track"].iloc[t_i]))] = int(found["track"].iloc[f_i])
    followed, switches, counted = 0, 0, 0
    for track, rows in truth.groupby("track"):
        if len(rows) < 2:
            continue
        counted += 1
        matches = [assigned.get((frame, track)) for frame in rows["frame"]]
        seen = [m for m in matches if m is not None]
        switches += sum(a != b for a, b in zip(seen, seen[1:]))
        followed += len(set(seen)) == 1 and len(seen) >= len(matches) - 1
    found_coalescences = events[events["kind"] == "coalescence"] if len(events) else events
    true_events = true_events[true_events["kind"] == "coalescence"]
    hits = 0
    for row in true_events.itertuples(index=False):
        near = found_coalescences[
            (abs(found_coalescences["frame"] - row.frame) <= 1)
            & (
                np.hypot(found_coalescences["x_px"] - row.x, found_coalescences["y_px"] - row.y)
                <= 2.0 * truth["radius"].max()
            )
        ]
        hits += not near.empty
    found_true = 0
    for row in found_coalescences.itertuples(index=False):
        near = true_events[
            (abs(true_events["frame"] - row.frame) <= 1)
            & (np.hypot(true_events["x"] - row.x_px, true_events["y"] - row.y_px) <= 2.0 * truth["radius"].max())
        ]
        found_true += not near.empty
    precision = found_true / len(found_coalescences) if len(found_coalescences) else float(len(true_events) == 0)
    recall = hits / len(true_events) if len(true_events) else 1.0
    return TrackScore(
        followed / counted if counted else 1.0,
        1000.0 * switches / max(len(truth), 1),
        precision,
        recall,
        counted,
        len(truth),
    )
