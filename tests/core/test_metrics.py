"""Tests of lsea_monitor.metrics against scikit-learn and pytorch-ood."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_ood.metrics import OODMetrics as PodMetrics
from sklearn import metrics as skm

from lsea_monitor.errors import InputValidationError
from lsea_monitor.metrics import METRIC_KEYS, OODMetrics, ood_metrics, roc_curve_points


def _data(seed: int, n_ind: int = 300, n_ood: int = 200, rounding: int | None = None):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.0, 1.0, n_ind), rng.normal(1.5, 1.0, n_ood)]
    if rounding is not None:
        scores = np.round(scores, rounding)  # many ties
    is_ood = np.r_[np.zeros(n_ind, int), np.ones(n_ood, int)]
    perm = rng.permutation(scores.size)
    return scores[perm], is_ood[perm]


def _pytorch_ood(scores: np.ndarray, is_ood: np.ndarray) -> dict[str, float]:
    labels = torch.from_numpy(np.where(is_ood == 1, -1, 0))  # pytorch-ood: OoD labels are < 0
    return PodMetrics().update(torch.from_numpy(scores), labels).compute()


@pytest.mark.parametrize(("seed", "rounding"), [(0, None), (1, 1), (2, 0)])
def test_against_sklearn(seed: int, rounding: int | None) -> None:
    scores, is_ood = _data(seed, rounding=rounding)
    threshold = 0.7
    m = ood_metrics(scores, is_ood, threshold)
    assert tuple(m) == METRIC_KEYS
    pred = (scores > threshold).astype(int)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(is_ood, scores), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(skm.average_precision_score(is_ood, scores), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(skm.average_precision_score(1 - is_ood, -scores), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(is_ood, pred), abs=1e-12)
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(is_ood, pred), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(is_ood, pred), abs=1e-12)
    assert (m["n_ind"], m["n_ood"], m["threshold"]) == (300, 200, 0.7)
    # FPR@95 with InD positive, straight from sklearn's ROC curve (the original's later recipe)
    fpr, tpr, _ = skm.roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    assert m["fpr_at_95_tpr_ind_positive"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(is_ood, scores, drop_intermediate=False)
    assert m["fpr_at_95_tpr_ood_positive"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


@pytest.mark.parametrize(("seed", "rounding"), [(3, None), (4, 1)])
def test_against_pytorch_ood(seed: int, rounding: int | None) -> None:
    scores, is_ood = _data(seed, rounding=rounding)
    m = ood_metrics(scores, is_ood)
    ref = _pytorch_ood(scores, is_ood)
    assert m["auroc"] == pytest.approx(ref["AUROC"], abs=1e-12)
    assert m["fpr_at_95_tpr_ood_positive"] == pytest.approx(ref["FPR95TPR"], abs=1e-12)
    # pytorch-ood integrates the PR curve with trapezoids, we report average precision: close only
    # without ties across the classes (these data have few; the AUROC and FPR95 match exactly)
    assert m["aupr_out"] == pytest.approx(ref["AUPR-OUT"], abs=0.01)
    assert m["aupr_in"] == pytest.approx(ref["AUPR-IN"], abs=0.01)
    # the InD-positive convention is pytorch-ood's with the roles swapped and the scores negated
    swapped = _pytorch_ood(-scores, 1 - is_ood)
    assert m["fpr_at_95_tpr_ind_positive"] == pytest.approx(swapped["FPR95TPR"], abs=1e-12)


def test_two_fpr_conventions_differ_and_are_named() -> None:
    # InD tight around 0, OoD spread widely: the two conventions give different numbers.
    rng = np.random.default_rng(8)
    scores = np.r_[rng.normal(0, 0.1, 500), rng.normal(0.5, 2.0, 500)]
    is_ood = np.r_[np.zeros(500), np.ones(500)]
    m = ood_metrics(scores, is_ood)
    assert m["fpr_at_95_tpr_ood_positive"] > 0.5 > m["fpr_at_95_tpr_ind_positive"]


def test_default_threshold_accepts_95_percent_of_ind() -> None:
    scores, is_ood = _data(5)
    m = ood_metrics(scores, is_ood)
    assert np.mean(scores[is_ood == 0] <= m["threshold"]) >= 0.95


def test_perfect_and_reversed_detectors() -> None:
    is_ood = np.r_[np.zeros(50), np.ones(50)].astype(bool)
    scores = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 50)]
    m = ood_metrics(scores, is_ood, 1.5)
    assert (m["auroc"], m["aupr_in"], m["aupr_out"], m["accuracy"], m["mcc"], m["f1"]) == (1, 1, 1, 1, 1, 1)
    assert m["fpr_at_95_tpr_ood_positive"] == 0 and m["fpr_at_95_tpr_ind_positive"] == 0
    assert ood_metrics(-scores, is_ood)["auroc"] == 0


def test_roc_curve_points_match_sklearn() -> None:
    scores, is_ood = _data(6, rounding=1)
    fpr, tpr, thr = roc_curve_points(scores, is_ood)
    e_fpr, e_tpr, e_thr = skm.roc_curve(is_ood, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, e_fpr)
    np.testing.assert_allclose(tpr, e_tpr)
    np.testing.assert_array_equal(thr, e_thr)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.integers(2, 40))
def test_random_sets_match_sklearn(seed: int, n_ind: int, n_ood: int) -> None:
    scores, is_ood = _data(seed, n_ind, n_ood, rounding=0)
    m = ood_metrics(scores, is_ood, 0.0)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(is_ood, scores), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(skm.average_precision_score(is_ood, scores), abs=1e-12)
    pred = scores > 0.0
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(is_ood, pred), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(is_ood, pred, zero_division=0.0), abs=1e-12)


def test_accumulator_equals_one_shot_and_resets() -> None:
    scores, is_ood = _data(7)
    acc = OODMetrics(threshold=0.5)
    for part in np.array_split(np.arange(scores.size), 4):
        acc.update(torch.from_numpy(scores[part]), is_ood[part].astype(bool))
    result = acc.compute()
    assert tuple(result) == OODMetrics.keys == METRIC_KEYS
    assert result == ood_metrics(scores, is_ood, 0.5)
    acc.reset()
    with pytest.raises(InputValidationError, match="before any update"):
        acc.compute()


@pytest.mark.parametrize(
    ("scores", "is_ood", "match"),
    [
        ([0.1, 0.2], [0, 0], r"both InD and OoD .* n_ind=2, n_ood=0"),
        ([0.1, 0.2], [1, 1], r"n_ind=0, n_ood=2"),
        ([0.1, 0.2], [0, -1], r"0 \(InD\) or 1 \(OoD\), got value -1"),
        ([0.1, 0.2, 0.3], [0, 1], r"same shape, got \(3,\) and \(2,\)"),
        ([0.1, np.nan], [0, 1], r"1 non-finite"),
    ],
)
def test_errors(scores: list[float], is_ood: list[int], match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        ood_metrics(scores, is_ood, 0.5)


def test_bad_threshold_and_batch_shapes() -> None:
    with pytest.raises(InputValidationError, match="threshold must be finite"):
        ood_metrics([0.1, 0.9], [0, 1], float("nan"))
    with pytest.raises(InputValidationError, match="same shape"):
        OODMetrics().update(np.zeros(3), np.zeros(2))


def test_metrics_need_neither_trapezoid_nor_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    """np.trapezoid is NumPy >= 2 only and np.trapz deprecated there; a ROS 2 venv on Ubuntu 24.04
    sees NumPy 1.26. The AUROC must not depend on either."""
    scores, is_ood = _data(5, rounding=None)
    expected = ood_metrics(scores, is_ood)["auroc"]
    monkeypatch.delattr(np, "trapezoid", raising=False)
    monkeypatch.delattr(np, "trapz", raising=False)
    assert ood_metrics(scores, is_ood)["auroc"] == expected
    assert expected == pytest.approx(skm.roc_auc_score(is_ood, scores), abs=1e-12)
