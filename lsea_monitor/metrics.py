"""OoD detection metrics: pure functions plus an accumulator with fixed keys.

Conventions: ``is_ood`` is 1 (True) for OoD and 0 for InD samples; scores are OoD-ness (higher =
less safe); a sample is flagged iff ``score > threshold``. Unlike pytorch-ood (OoD labels < 0),
labels here are the project's 0/1.

"FPR at 95 % TPR" is reported in both conventions found in the literature:

* ``fpr_at_95_tpr_ood_positive`` (pytorch-ood, OpenOOD v1.5): OoD is positive; the fraction of InD
  samples flagged at the first ROC threshold that flags at least 95 % of the OoD samples.
* ``fpr_at_95_tpr_ind_positive`` (the original package's later versions): InD is positive (scores
  negated); the fraction of OoD samples accepted at the first threshold that accepts at least 95 %
  of the InD samples.

AUPR values are average precision (``sklearn.metrics.average_precision_score``, a step-wise sum);
pytorch-ood integrates the same curve with the trapezoidal rule: close for continuous scores,
but far apart when scores tie across the classes (a KDE posterior saturating at 1.0: 0.77 against
0.89 with 30 % of the InD scores tied with the OoD ones).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lsea_monitor.errors import InputValidationError
from lsea_monitor.threshold import select_threshold

__all__ = ["METRIC_KEYS", "OODMetrics", "ood_metrics", "roc_curve_points"]

METRIC_KEYS: tuple[str, ...] = (
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_95_tpr_ood_positive",
    "fpr_at_95_tpr_ind_positive",
    "accuracy",
    "mcc",
    "f1",
    "n_ind",
    "n_ood",
    "threshold",
)

_TPR_TARGET = 0.95


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _check_inputs(scores: ArrayLike, is_ood: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and validate; return float64 scores and boolean OoD mask, both of shape (n,)."""
    try:
        s = _to_numpy(scores).astype(np.float64)
    except (TypeError, ValueError) as err:
        raise InputValidationError(f"scores must be numeric: {err}.") from err
    labels = _to_numpy(is_ood)
    if s.shape != labels.shape:
        raise InputValidationError(
            f"scores and is_ood must have the same shape, got {s.shape} and {labels.shape}."
        )
    s, labels = s.reshape(-1), labels.reshape(-1)
    if labels.dtype != bool:
        bad = ~np.isin(labels, (0, 1))
        if np.any(bad):
            raise InputValidationError(
                f"is_ood must hold 0 (InD) or 1 (OoD), got value {labels[bad][0].item()!r}; "
                f"pytorch-ood style labels (< 0 = OoD) convert with `labels < 0`."
            )
        labels = labels.astype(bool)
    n_bad = int(np.count_nonzero(~np.isfinite(s)))
    if n_bad:
        raise InputValidationError(f"scores contain {n_bad} non-finite value(s) out of {s.size}.")
    n_ood = int(labels.sum())
    if n_ood == 0 or n_ood == labels.size:
        raise InputValidationError(
            f"OoD metrics need both InD and OoD samples, got n_ind={labels.size - n_ood}, "
            f"n_ood={n_ood}; evaluate on a set that holds both."
        )
    return s, labels


def _counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tps, fps) at each unique score, thresholds in decreasing order (>= t flags)."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    idx = np.flatnonzero(last)
    tps = np.cumsum(positive[order], dtype=np.int64)[idx]
    fps = idx + 1 - tps
    return tps, fps, sorted_scores[idx]


def _roc(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tps, fps, thresholds = _counts(scores, positive)
    fpr = np.r_[0, fps] / fps[-1]
    tpr = np.r_[0, tps] / tps[-1]
    return fpr, tpr, np.r_[np.inf, thresholds]


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    tps, fps, _ = _counts(scores, positive)
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_steps * precision))


def _fpr_at_tpr(scores: np.ndarray, positive: np.ndarray, tpr_target: float) -> float:
    fpr, tpr, _ = _roc(scores, positive)
    return float(fpr[np.searchsorted(tpr, tpr_target, side="left")])


def roc_curve_points(scores: ArrayLike, is_ood: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with OoD as the positive class, one point per distinct score.

    Parameters
    ----------
    scores : array_like, shape (n,)
        OoD scores (higher = more OoD).
    is_ood : array_like of {0, 1} or bool, shape (n,)

    Returns
    -------
    fpr : ndarray, shape (m + 1,)
        Fraction of InD samples with ``score >= thresholds[j]``, starting at 0.
    tpr : ndarray, shape (m + 1,)
        Fraction of OoD samples with ``score >= thresholds[j]``, starting at 0.
    thresholds : ndarray, shape (m + 1,)
        ``inf`` then the m distinct scores in decreasing order (as ``sklearn.metrics.roc_curve``
        with ``drop_intermediate=False``).
    """
    s, labels = _check_inputs(scores, is_ood)
    return _roc(s, labels)


def _mcc(tp: int, fp: int, tn: int, fn: int) -> float:
    denominator = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under y(x). Written out: np.trapezoid needs NumPy >= 2.0 (np.trapz is deprecated
    there), while a ROS 2 venv on Ubuntu 24.04 sees the system's NumPy 1.26."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def ood_metrics(
    scores: ArrayLike, is_ood: ArrayLike, threshold: float | None = None
) -> dict[str, float | int]:
    """All OoD metrics of one evaluation set, under the keys :data:`METRIC_KEYS`.

    Parameters
    ----------
    scores : array_like, shape (n,)
        OoD scores (higher = more OoD), finite; a tensor is moved to the CPU.
    is_ood : array_like of {0, 1} or bool, shape (n,)
        1 for OoD, 0 for InD; both classes must be present.
    threshold : float or None, default None
        Operating point for accuracy, MCC and F1 (flag iff ``score > threshold``). None selects
        the threshold that accepts 95 % of the InD scores given here
        (:func:`~lsea_monitor.threshold.select_threshold`).

    Returns
    -------
    dict
        ``auroc``, ``aupr_in`` (InD positive, scores negated), ``aupr_out`` (OoD positive),
        ``fpr_at_95_tpr_ood_positive``, ``fpr_at_95_tpr_ind_positive`` (see the module docstring),
        ``accuracy``, ``mcc``, ``f1`` (OoD positive, at ``threshold``), ``n_ind``, ``n_ood`` (int),
        ``threshold`` (float).

    Raises
    ------
    InputValidationError
        Shape mismatch, labels other than 0/1, non-finite scores or threshold, one class only.
    """
    s, ood = _check_inputs(scores, is_ood)
    if threshold is None:
        threshold = select_threshold(s[~ood], _TPR_TARGET)
    elif not math.isfinite(float(threshold)):
        raise InputValidationError(f"threshold must be finite, got {threshold!r}.")
    fpr, tpr, _ = _roc(s, ood)
    predicted = s > float(threshold)
    tp = int(np.count_nonzero(predicted & ood))
    fp = int(np.count_nonzero(predicted & ~ood))
    fn = int(np.count_nonzero(~predicted & ood))
    tn = int(np.count_nonzero(~predicted & ~ood))
    f1_denominator = 2 * tp + fp + fn
    return {
        "auroc": _area(fpr, tpr),
        "aupr_in": _average_precision(-s, ~ood),
        "aupr_out": _average_precision(s, ood),
        "fpr_at_95_tpr_ood_positive": _fpr_at_tpr(s, ood, _TPR_TARGET),
        "fpr_at_95_tpr_ind_positive": _fpr_at_tpr(-s, ~ood, _TPR_TARGET),
        "accuracy": (tp + tn) / s.size,
        "mcc": _mcc(tp, fp, tn, fn),
        "f1": 0.0 if f1_denominator == 0 else 2 * tp / f1_denominator,
        "n_ind": int(np.count_nonzero(~ood)),
        "n_ood": int(np.count_nonzero(ood)),
        "threshold": float(threshold),
    }


class OODMetrics:
    """Accumulates scores and labels over batches, then computes :func:`ood_metrics` once.

    Parameters
    ----------
    threshold : float or None, default None
        Passed to :func:`ood_metrics` by :meth:`compute`.

    Examples
    --------
    >>> m = OODMetrics()
    >>> for scores, is_ood in batches:  # doctest: +SKIP
    ...     m.update(scores, is_ood)
    >>> m.compute()["auroc"]  # doctest: +SKIP
    """

    keys: tuple[str, ...] = METRIC_KEYS

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, scores: ArrayLike, is_ood: ArrayLike) -> OODMetrics:
        """Add a batch: ``scores`` and ``is_ood`` of equal shape (flattened). Returns self."""
        s, labels = _to_numpy(scores), _to_numpy(is_ood)
        if s.shape != labels.shape:
            raise InputValidationError(
                f"scores and is_ood must have the same shape, got {s.shape} and {labels.shape}."
            )
        self._scores.append(s.reshape(-1))
        self._labels.append(labels.reshape(-1))
        return self

    def compute(self) -> dict[str, float | int]:
        """:func:`ood_metrics` over every batch added since the last :meth:`reset`."""
        if not self._scores:
            raise InputValidationError("OODMetrics.compute() called before any update(); add data first.")
        return ood_metrics(np.concatenate(self._scores), np.concatenate(self._labels), self.threshold)

    def reset(self) -> None:
        """Forget all batches (the threshold is kept)."""
        self._scores.clear()
        self._labels.clear()
