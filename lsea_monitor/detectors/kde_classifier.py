"""Supervised two-class KDE classifier: the original package's ``KDEClassifier``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import logsumexp
from sklearn.neighbors import KernelDensity

from lsea_monitor.dataset import as_feature_matrix
from lsea_monitor.detectors.base import (
    OODDetector,
    check_bandwidth,
    check_kernel,
    check_labels,
    kde_log_density_torch,
)
from lsea_monitor.errors import InputValidationError

__all__ = ["KDEClassifier"]


class KDEClassifier(OODDetector):
    """Bayes classifier with one kernel density per class (InD = 0, OoD = 1).

    ``log p(c | x) = log p(x | c) + log(n_c / n) - logsumexp_c(...)``, each ``p(x | c)`` a
    :class:`sklearn.neighbors.KernelDensity` with the same scalar bandwidth in every dimension.
    The score is the OoD posterior ``p(1 | x)``; the default threshold 0.5 is the original's
    argmax prediction.

    Parameters
    ----------
    bandwidth : float, default 1.0
        Kernel bandwidth, in feature units (the guide uses 0.8 on whitened PCA components).
    kernel : str, default "gaussian"
        A ``KernelDensity`` kernel.

    Attributes
    ----------
    kdes_ : list of KernelDensity, length 2
        The densities of class 0 (InD) and class 1 (OoD).
    x_by_class_ : list of ndarray, length 2
        The training rows of each class (stored by ``get_state``; the densities refit on them).
    class_log_prior_ : ndarray, shape (2,)
        ``log(n_c / n)``, nats.
    classes_ : ndarray, shape (2,)
        ``[0, 1]``.
    threshold_ : float
        0.5 after ``fit``.
    n_features_in_ : int
    """

    name = "kde_classifier"

    def __init__(self, *, bandwidth: float = 1.0, kernel: str = "gaussian") -> None:
        self.bandwidth = bandwidth
        self.kernel = kernel

    def fit(self, X: ArrayLike, y: ArrayLike) -> KDEClassifier:
        """Fit one density per class.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : array_like of {0, 1}, shape (n_samples,)
            0 = InD, 1 = OoD; both classes must be present.

        Returns
        -------
        self
        """
        check_bandwidth(self.bandwidth)
        check_kernel(self.kernel)
        x = as_feature_matrix(X, "X")
        labels = check_labels(y, x.shape[0])
        counts = np.bincount(labels, minlength=2)
        if np.any(counts == 0):
            raise InputValidationError(
                f"KDEClassifier needs InD (0) and OoD (1) training samples, got n_ind={counts[0]}, "
                f"n_ood={counts[1]}; use OneClassKDE or MahalanobisDetector for InD-only data."
            )
        self._set_class_data([x[labels == 0], x[labels == 1]])
        self.threshold_ = 0.5
        return self

    def _set_class_data(self, class_data: list[np.ndarray]) -> None:
        counts = np.array([len(d) for d in class_data], dtype=np.float64)
        self.kdes_ = [
            KernelDensity(bandwidth=float(self.bandwidth), kernel=self.kernel).fit(d) for d in class_data
        ]
        self.class_log_prior_ = np.log(counts / counts.sum())
        self.classes_ = np.array([0, 1], dtype=np.int64)
        self.n_features_in_ = int(class_data[0].shape[1])
        self.x_by_class_ = class_data

    def _joint_log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """``log p(x | c) + log p(c)``, shape (n, 2), nats."""
        return np.stack(
            [kde.score_samples(x) + prior for kde, prior in zip(self.kdes_, self.class_log_prior_)],
            axis=1,
        )

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log posteriors ``log p(c | x)``, shape (n_samples, 2), columns InD, OoD; nats.

        Samples outside the support of both densities (possible with compact kernels) get
        ``log p(OoD | x) = 0``: unlike anything seen in fit counts as OoD.
        """
        self._check_is_fitted()
        return self._log_proba(self._validate_x(X))

    def _log_proba(self, x: np.ndarray) -> np.ndarray:
        jll = self._joint_log_likelihood(x)
        outside = np.all(np.isneginf(jll), axis=1)
        jll[outside] = (-np.inf, 0.0)
        return jll - logsumexp(jll, axis=1, keepdims=True)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Posteriors ``p(c | x)``, shape (n_samples, 2), columns InD, OoD; rows sum to 1."""
        self._check_is_fitted()
        return np.exp(self.predict_log_proba(X))

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Log posterior odds ``log p(1 | x) - log p(0 | x)``, shape (n_samples,), nats.

        Monotone in :meth:`score_samples` but does not saturate at 0 or 1 far from the data.
        """
        self._check_is_fitted()
        log_proba = self.predict_log_proba(X)
        return log_proba[:, 1] - log_proba[:, 0]

    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self._log_proba(x)[:, 1])

    @property
    def supports_torch(self) -> bool:
        return self.kernel == "gaussian"

    def _score_torch(self, x: torch.Tensor) -> torch.Tensor:
        # A gaussian density is never zero in log space: no row is outside both supports.
        jll = torch.stack([
            kde_log_density_torch(x, data, float(self.bandwidth)) + float(prior)
            for data, prior in zip(self._device_arrays(x, "_x_class0", "_x_class1"), self.class_log_prior_)
        ], dim=1)
        return torch.exp(jll[:, 1] - torch.logsumexp(jll, dim=1))

    @property
    def _x_class0(self) -> np.ndarray:
        return self.x_by_class_[0]

    @property
    def _x_class1(self) -> np.ndarray:
        return self.x_by_class_[1]

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"x_class0": self.x_by_class_[0], "x_class1": self.x_by_class_[1]}

    def _load_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        class_data = [np.asarray(arrays[f"x_class{c}"], dtype=np.float64) for c in (0, 1)]
        n_features = self.n_features_in_
        for c, d in enumerate(class_data):
            if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] != n_features:
                raise InputValidationError(
                    f"KDEClassifier state array x_class{c} has shape {d.shape}, expected "
                    f"(n >= 1, {n_features})."
                )
        check_bandwidth(self.bandwidth)
        check_kernel(self.kernel)
        self._set_class_data(class_data)
