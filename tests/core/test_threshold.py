"""Tests of lsea_monitor.threshold.select_threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsea_monitor.errors import InputValidationError
from lsea_monitor.threshold import select_threshold


def test_ninety_five_of_hundred() -> None:
    scores = np.arange(100, dtype=float)
    t = select_threshold(scores, 0.95)
    assert t == 94.0  # 95 scores (0..94) <= 94; 93 would accept only 94
    assert np.mean(scores <= t) >= 0.95 and np.mean(scores <= 93.0) < 0.95


def test_float_rounding_of_target_times_n() -> None:
    # 0.95 * 20 is not exactly 19 in floating point; 19 of 20 must still be enough.
    scores = np.arange(20, dtype=float)
    assert select_threshold(scores, 0.95) == 18.0
    assert select_threshold(scores, 1.0) == 19.0
    assert select_threshold(scores, 1e-9) == 0.0


def test_ties_and_order_do_not_matter() -> None:
    scores = np.array([3.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    assert select_threshold(scores, 0.5) == 2.0
    assert select_threshold(scores[::-1].tolist(), 0.5) == 2.0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
    st.floats(0.001, 1.0),
)
def test_smallest_threshold_reaching_target(values: list[float], target: float) -> None:
    scores = np.asarray(values)
    t = select_threshold(scores, target)
    assert t in scores
    assert np.count_nonzero(scores <= t) >= target * scores.size - 1e-9
    below = scores[scores < t]
    if below.size:  # any smaller candidate falls short of the target
        assert np.count_nonzero(scores <= below.max()) < target * scores.size - 1e-9


@pytest.mark.parametrize(
    ("scores", "target", "match"),
    [
        ([], 0.95, "empty"),
        ([[1.0, 2.0]], 0.95, r"1-D .* shape \(1, 2\)"),
        ([1.0, np.nan, np.inf], 0.95, r"2 non-finite value\(s\) out of 3"),
        ([1.0], 0.0, r"\(0, 1\], got 0"),
        ([1.0], 95, r"use 0.95 for 95 %"),
        ([1.0], True, "must be a number"),
        ([1.0], "0.9", "must be a number"),
        (["a"], 0.9, "numeric"),
    ],
)
def test_errors(scores: object, target: object, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        select_threshold(scores, target)  # type: ignore[arg-type]
