"""Mahalanobis distance to the InD mean (LaREM-like), fitted on InD only."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from lsea_monitor.dataset import as_feature_matrix
from lsea_monitor.detectors.base import OODDetector, check_target_ind_tpr, ind_rows
from lsea_monitor.errors import InputValidationError
from lsea_monitor.threshold import select_threshold

__all__ = ["MahalanobisDetector"]


class MahalanobisDetector(OODDetector):
    """Score = ``sqrt((x - mean)^T pinv(cov) (x - mean))`` with the empirical InD mean and covariance.

    The covariance is the maximum-likelihood estimate (divided by n, as
    ``sklearn.covariance.EmpiricalCovariance``); its pseudo-inverse keeps rank-deficient features
    (e.g. constant ones) usable.

    Parameters
    ----------
    target_ind_tpr : float, default 0.95
        Fraction of the InD training samples accepted by the default threshold.

    Attributes
    ----------
    location_ : ndarray, shape (n_features,)
    covariance_ : ndarray, shape (n_features, n_features)
    precision_ : ndarray, shape (n_features, n_features)
        ``pinv(covariance_)``.
    threshold_ : float
    n_features_in_ : int
    """

    name = "mahalanobis"

    def __init__(self, *, target_ind_tpr: float = 0.95) -> None:
        self.target_ind_tpr = target_ind_tpr

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> MahalanobisDetector:
        """Estimate mean and covariance of the InD features.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : array_like of {0, 1}, shape (n_samples,), optional
            If given, only the rows with label 0 (InD) are used.

        Returns
        -------
        self
        """
        target = check_target_ind_tpr(self.target_ind_tpr)
        x = ind_rows(as_feature_matrix(X, "X"), y, type(self).__name__)
        self.location_ = x.mean(axis=0)
        centred = x - self.location_
        self.covariance_ = centred.T @ centred / x.shape[0]
        self.precision_ = np.linalg.pinv(self.covariance_, hermitian=True)
        self.n_features_in_ = int(x.shape[1])
        self.threshold_ = select_threshold(self._score(x), target)
        return self

    def _score(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.location_
        squared = np.einsum("ij,jk,ik->i", centred, self.precision_, centred)
        return np.sqrt(np.maximum(squared, 0.0))

    @property
    def supports_torch(self) -> bool:
        return True

    def _score_torch(self, x: torch.Tensor) -> torch.Tensor:
        location, precision = self._device_arrays(x, "location_", "precision_")
        centred = x - location
        squared = ((centred @ precision) * centred).sum(dim=1)
        return torch.sqrt(torch.clamp_min(squared, 0.0))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"location": self.location_, "covariance": self.covariance_, "precision": self.precision_}

    def _load_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        n = self.n_features_in_
        loaded = {k: np.asarray(arrays[k], dtype=np.float64) for k in ("location", "covariance", "precision")}
        expected = {"location": (n,), "covariance": (n, n), "precision": (n, n)}
        for key, shape in expected.items():
            if loaded[key].shape != shape:
                raise InputValidationError(
                    f"MahalanobisDetector state array {key} has shape {loaded[key].shape}, expected {shape}."
                )
        self.location_, self.covariance_, self.precision_ = (
            loaded["location"], loaded["covariance"], loaded["precision"],
        )
