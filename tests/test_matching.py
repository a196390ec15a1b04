"""Droplet matching against hand-made truth tables."""

import math

import numpy as np
import pandas as pd
import pytest

from droplet_core.detection.matching import MatchScore, match_droplets, match_pairs


def table(rows, columns=("x", "y", "radius")):
    return pd.DataFrame(rows, columns=list(columns), dtype=float)


TRUTH = table([(10, 10, 4), (30, 10, 2), (50, 40, 8)])


def test_perfect_match():
    score = match_droplets(TRUTH, TRUTH.copy())
    assert score == MatchScore(3, 3, 3, 1.0, 1.0, 1.0, 0.0)


def test_one_missing():
    score = match_droplets(TRUTH, TRUTH.iloc[[0, 2]])
    assert (score.true_positives, score.precision, score.recall) == (2, 1.0, pytest.approx(2 / 3))
    assert score.f1 == pytest.approx(0.8)


def test_one_extra():
    found = pd.concat([TRUTH, table([(80, 80, 3)])], ignore_index=True)
    score = match_droplets(TRUTH, found)
    assert (score.true_positives, score.precision, score.recall) == (3, 0.75, 1.0)


def test_tolerance_is_half_radius_with_floor():
    # radius 8 -> 4 px; radius 2 -> floor of 1.5 px.
    just_inside = table([(10, 10, 4), (30 + 1.49, 10, 2), (50, 40 + 3.99, 8)])
    assert match_droplets(TRUTH, just_inside).true_positives == 3
    just_outside = table([(10, 10, 4), (30 + 1.51, 10, 2), (50, 40 + 4.01, 8)])
    assert match_droplets(TRUTH, just_outside).true_positives == 1


def test_detection_near_two_truths_counts_once():
    truth = table([(10, 10, 4), (12, 10, 4)])
    score = match_droplets(truth, table([(11, 10, 4)]))
    assert (score.true_positives, score.precision, score.recall) == (1, 1.0, 0.5)


def test_assignment_maximises_pairs_not_greedy_nearest():
    # Greedy nearest-first would give detection 0 to truth 1 and leave truth 0 unmatched.
    truth = table([(0, 0, 4), (1.5, 0, 4)])
    found = table([(1.4, 0, 4), (3.2, 0, 4)])
    true_index, found_index = match_pairs(truth, found)
    assert sorted(zip(true_index, found_index)) == [(0, 0), (1, 1)]


def test_median_radius_error():
    found = TRUTH.assign(radius=TRUTH["radius"] * np.array([1.1, 1.5, 0.9]))
    assert match_droplets(TRUTH, found).median_radius_error == pytest.approx(0.1)


def test_radius_error_nan_without_radius_column():
    score = match_droplets(TRUTH, TRUTH[["x", "y"]])
    assert score.true_positives == 3
    assert math.isnan(score.median_radius_error)


def test_empty_tables():
    score = match_droplets(TRUTH, table([]))
    assert (score.n_found, score.true_positives, score.precision, score.f1) == (0, 0, 0.0, 0.0)
    assert math.isnan(score.median_radius_error)
    assert match_droplets(table([]), TRUTH).precision == 0.0


def test_uses_positions_not_index_labels():
    found = TRUTH.iloc[::-1].set_index(pd.Index([7, 8, 9]))
    assert match_droplets(TRUTH, found).f1 == 1.0
