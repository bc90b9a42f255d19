"""Operating point of a detector: the score threshold that keeps a target share of InD frames."""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike

from lsea_monitor.errors import InputValidationError

__all__ = ["select_threshold"]

#: Slack on ``target * n`` so that e.g. 0.95 * 20 = 19.000000000000004 still means 19 samples.
_COUNT_SLACK = 1e-9


def select_threshold(ind_scores: ArrayLike, target_ind_tpr: float = 0.95) -> float:
    """Smallest threshold that accepts at least ``target_ind_tpr`` of the InD scores.

    A frame is flagged as OoD iff ``score > threshold``, so the InD acceptance rate (InD true
    positive rate) at threshold ``t`` is ``mean(ind_scores <= t)``. The result is one of the given
    scores: the ``ceil(target * n)``-th smallest.

    Parameters
    ----------
    ind_scores : array_like, shape (n,)
        Detector scores of InD samples (higher = more OoD), finite.
    target_ind_tpr : float, default 0.95
        Fraction of InD samples to accept, ``0 < target_ind_tpr <= 1``.

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    InputValidationError
        Empty, non-1-D or non-finite scores, or a target outside ``(0, 1]``.
    """
    if isinstance(target_ind_tpr, bool) or not isinstance(target_ind_tpr, numbers.Real):
        raise InputValidationError(
            f"target_ind_tpr must be a number in (0, 1], got {target_ind_tpr!r}."
        )
    target = float(target_ind_tpr)
    if not 0.0 < target <= 1.0:
        hint = f"; use {target / 100:g} for {target:g} %" if 1.0 < target <= 100.0 else ""
        raise InputValidationError(f"target_ind_tpr must be in (0, 1], got {target:g}{hint}.")
    try:
        scores = np.asarray(ind_scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputValidationError(f"ind_scores must be numeric: {err}.") from err
    if scores.ndim != 1:
        raise InputValidationError(
            f"ind_scores must be 1-D (one score per InD sample), got shape {scores.shape}."
        )
    if scores.size == 0:
        raise InputValidationError("ind_scores is empty; give the scores of at least one InD sample.")
    n_bad = int(np.count_nonzero(~np.isfinite(scores)))
    if n_bad:
        raise InputValidationError(
            f"ind_scores contain {n_bad} non-finite value(s) out of {scores.size}; "
            f"fix the detector input before choosing a threshold."
        )
    n_accept = max(1, math.ceil(target * scores.size - _COUNT_SLACK))
    return float(np.partition(scores, n_accept - 1)[n_accept - 1])
