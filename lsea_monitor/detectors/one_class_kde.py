"""One-class KDE detector fitted on InD only (LaRED-like): score = -log density."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.neighbors import KernelDensity

from lsea_monitor.dataset import as_feature_matrix
from lsea_monitor.detectors.base import (
    OODDetector,
    check_bandwidth,
    check_kernel,
    check_target_ind_tpr,
    ind_rows,
    kde_log_density_torch,
)
from lsea_monitor.errors import InputValidationError
from lsea_monitor.threshold import select_threshold

__all__ = ["OneClassKDE"]


class OneClassKDE(OODDetector):
    """Kernel density of the InD features; the score is the negative log density (nats).

    Parameters
    ----------
    bandwidth : float, default 1.0
        Kernel bandwidth, in feature units.
    kernel : str, default "gaussian"
        A :class:`sklearn.neighbors.KernelDensity` kernel. With a compact kernel, samples outside
        the support score the largest finite float64 (always flagged; finite so that thresholds
        and metrics can use it).
    target_ind_tpr : float, default 0.95
        Fraction of the InD training samples accepted by the default threshold.

    Attributes
    ----------
    kde_ : KernelDensity
    x_train_ : ndarray, shape (n_ind, n_features)
        InD training rows (stored by ``get_state``; the density refits on them).
    threshold_ : float
        :func:`~lsea_monitor.threshold.select_threshold` of the training scores.
    n_features_in_ : int
    """

    name = "one_class_kde"

    def __init__(
        self, *, bandwidth: float = 1.0, kernel: str = "gaussian", target_ind_tpr: float = 0.95
    ) -> None:
        self.bandwidth = bandwidth
        self.kernel = kernel
        self.target_ind_tpr = target_ind_tpr

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> OneClassKDE:
        """Fit the InD density.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
            InD features (or mixed, with ``y``).
        y : array_like of {0, 1}, shape (n_samples,), optional
            If given, only the rows with label 0 (InD) are used.

        Returns
        -------
        self
        """
        check_bandwidth(self.bandwidth)
        check_kernel(self.kernel)
        target = check_target_ind_tpr(self.target_ind_tpr)
        x = ind_rows(as_feature_matrix(X, "X"), y, type(self).__name__)
        self._set_data(x)
        self.threshold_ = select_threshold(self._score(x), target)
        return self

    def _set_data(self, x: np.ndarray) -> None:
        self.x_train_ = x
        self.kde_ = KernelDensity(bandwidth=float(self.bandwidth), kernel=self.kernel).fit(x)
        self.n_features_in_ = int(x.shape[1])

    def _score(self, x: np.ndarray) -> np.ndarray:
        # Zero density (outside a compact kernel's support) is -inf log density: the largest finite score.
        return np.minimum(-self.kde_.score_samples(x), np.finfo(np.float64).max)

    @property
    def supports_torch(self) -> bool:
        return self.kernel == "gaussian"

    def _score_torch(self, x: torch.Tensor) -> torch.Tensor:
        (data,) = self._device_arrays(x, "x_train_")
        return -kde_log_density_torch(x, data, float(self.bandwidth))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"x_train": self.x_train_}

    def _load_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        x = np.asarray(arrays["x_train"], dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.n_features_in_:
            raise InputValidationError(
                f"OneClassKDE state array x_train has shape {x.shape}, "
                f"expected (n >= 1, {self.n_features_in_})."
            )
        check_bandwidth(self.bandwidth)
        check_kernel(self.kernel)
        self._set_data(x)
