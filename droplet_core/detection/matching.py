"""Score detected droplets against known truth (synthetic scenes, benchmarks, tests).

A true droplet is found when a detection lies within ``max(1.5 px, r_true / 2)`` of its
centre. Each true droplet takes at most one detection and each detection at most one
true droplet; among all such pairings the one with the most pairs, then the smallest
total distance, is used, so a detection sitting between two true droplets counts once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

# Below about 3 px diameter a half-radius tolerance is smaller than the pixel grid's own
# rounding, so every tolerance gets this floor.
MIN_TOLERANCE_PX = 1.5


@dataclass(frozen=True)
class MatchScore:
    """Detection quality of one droplet table against the truth.

    Attributes
    ----------
    n_true : number of true droplets.
    n_found : number of detections.
    true_positives : number of matched pairs.
    precision : ``true_positives / n_found`` (0 when nothing was found).
    recall : ``true_positives / n_true`` (0 when there is no truth).
    f1 : harmonic mean of precision and recall (0 when both are 0).
    median_radius_error : median of ``|r_found - r_true| / r_true`` over matched pairs;
        NaN when either table lacks a ``radius`` column or nothing matched.
    """

    n_true: int
    n_found: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    median_radius_error: float


def match_tolerance(truth: pd.DataFrame) -> np.ndarray:
    """Per true droplet, the largest centre distance (px) at which a detection matches it.

    Parameters
    ----------
    truth : table with ``x``, ``y`` and optionally ``radius`` (px).

    Returns
    -------
    ``(len(truth),)`` float array: ``max(1.5, radius / 2)``, or 1.5 without radii.
    """
    if "radius" not in truth.columns:
        return np.full(len(truth), MIN_TOLERANCE_PX)
    return np.maximum(MIN_TOLERANCE_PX, truth["radius"].to_numpy(float) / 2.0)


def match_pairs(truth: pd.DataFrame, found: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one pairing of true droplets with detections within tolerance.

    Parameters
    ----------
    truth : true droplets, columns ``x`` (column), ``y`` (row), optionally ``radius``, px.
    found : detections, columns ``x``, ``y``, px.

    Returns
    -------
    true_index, found_index : equal-length integer arrays of row positions (not labels)
        into ``truth`` and ``found``, one entry per matched pair.
    """
    empty = np.zeros(0, dtype=int)
    if len(truth) == 0 or len(found) == 0:
        return empty, empty
    true_xy = truth[["x", "y"]].to_numpy(float)
    found_xy = found[["x", "y"]].to_numpy(float)
    tolerance = match_tolerance(truth)

    candidates = cKDTree(found_xy).query_ball_point(true_xy, tolerance)
    rows = np.repeat(np.arange(len(truth)), [len(c) for c in candidates])
    cols = np.fromiter((j for c in candidates for j in c), dtype=int, count=len(rows))
    if len(rows) == 0:
        return empty, empty
    distance = np.hypot(*(true_xy[rows] - found_xy[cols]).T)

    # Pairings only interact within a connected group of candidate pairs, so solving
    # each group separately keeps every assignment problem small in crowded scenes.
    n_true = len(truth)
    graph = coo_matrix((np.ones(len(rows)), (rows, n_true + cols)), shape=(n_true + len(found),) * 2)
    _, label = connected_components(graph, directed=False)
    pair_group = label[rows]

    true_out, found_out = [], []
    for group in np.unique(pair_group):
        in_group = pair_group == group
        t, t_local = np.unique(rows[in_group], return_inverse=True)
        f, f_local = np.unique(cols[in_group], return_inverse=True)
        d = distance[in_group]
        # A forbidden pair costs more than all allowed pairs together, so the solver
        # first maximises the number of pairs and only then minimises total distance.
        forbidden = d.sum() + 1.0
        cost = np.full((len(t), len(f)), forbidden)
        cost[t_local, f_local] = d
        r, c = linear_sum_assignment(cost)
        keep = cost[r, c] < forbidden
        true_out.append(t[r[keep]])
        found_out.append(f[c[keep]])
    return np.concatenate(true_out), np.concatenate(found_out)


def match_droplets(truth: pd.DataFrame, found: pd.DataFrame) -> MatchScore:
    """Precision, recall, F1 and radius error of ``found`` against ``truth``.

    Parameters
    ----------
    truth : true droplets, columns ``x`` (column), ``y`` (row), ``radius``, px.
    found : detections, columns ``x``, ``y`` and optionally ``radius``, px.

    Returns
    -------
    MatchScore
    """
    true_index, found_index = match_pairs(truth, found)
    tp = len(true_index)
    precision = tp / len(found) if len(found) else 0.0
    recall = tp / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    radius_error = math.nan
    if tp and "radius" in truth.columns and "radius" in found.columns:
        r_true = truth["radius"].to_numpy(float)[true_index]
        r_found = found["radius"].to_numpy(float)[found_index]
        radius_error = float(np.median(np.abs(r_found - r_true) / r_true))
    return MatchScore(
        n_true=len(truth),
        n_found=len(found),
        true_positives=tp,
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        median_radius_error=radius_error,
    )
