"""Base class of the OoD detectors. Score direction, everywhere: HIGHER score = MORE OoD (less safe).

A subclass stores its keyword-only constructor arguments unchanged, validates them in ``fit``,
learns state in attributes ending with ``_`` (always ``threshold_`` and ``n_features_in_``), and
implements ``fit``, ``_score`` and the ``_state_arrays`` / ``_load_state`` pair used by
:meth:`OODDetector.get_state` and :meth:`OODDetector.from_state`. A subclass that can also score
tensors on their device (the per-frame GPU path) implements ``_score_torch`` and says when in
``supports_torch``; numpy/scikit-learn ``score_samples`` stays the reference it is tested against.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from lsea_monitor.dataset import as_feature_matrix
from lsea_monitor.errors import InputValidationError, NotFittedError

__all__ = [
    "OODDetector",
    "check_bandwidth",
    "check_kernel",
    "check_labels",
    "check_target_ind_tpr",
    "ind_rows",
    "kde_log_density_torch",
]

DetectorT = TypeVar("DetectorT", bound="OODDetector")

#: Kernels of sklearn.neighbors.KernelDensity.
KDE_KERNELS = ("gaussian", "tophat", "epanechnikov", "exponential", "linear", "cosine")


def check_bandwidth(value: Any) -> float:
    """Return ``value`` as a positive finite float or raise :class:`InputValidationError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise InputValidationError(f"bandwidth must be a finite number > 0, got {value!r}.")
    return float(value)


def check_kernel(value: Any) -> str:
    """Return ``value`` if it is a kernel of ``sklearn.neighbors.KernelDensity``, else raise."""
    if not isinstance(value, str) or value not in KDE_KERNELS:
        raise InputValidationError(f"kernel must be one of {KDE_KERNELS}, got {value!r}.")
    return str(value)


def check_target_ind_tpr(value: Any) -> float:
    """Return ``value`` as a float in (0, 1] or raise :class:`InputValidationError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise InputValidationError(f"target_ind_tpr must be a number in (0, 1], got {value!r}.")
    return float(value)


def check_labels(y: Any, n_samples: int) -> np.ndarray:
    """Validate labels (0 = InD, 1 = OoD) of shape (n_samples,); return them as int64."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y)
    if labels.shape != (n_samples,):
        raise InputValidationError(
            f"y must have shape ({n_samples},) to match X, got {labels.shape}."
        )
    bad = ~np.isin(labels, (0, 1))
    if np.any(bad):
        raise InputValidationError(
            f"y must hold 0 (InD) or 1 (OoD), got value {labels[bad][0].item()!r}."
        )
    return labels.astype(np.int64)


def ind_rows(x: np.ndarray, y: ArrayLike | None, detector: str) -> np.ndarray:
    """Rows of ``x`` with label 0 (all rows when ``y`` is None); raise if none are left."""
    if y is not None:
        x = x[check_labels(y, x.shape[0]) == 0]
    if x.shape[0] < 2:
        raise InputValidationError(
            f"{detector} needs at least 2 InD training samples, got {x.shape[0]}."
        )
    return x


def kde_log_density_torch(x: torch.Tensor, data: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel density of ``data`` at the rows of ``x``, in log: ``KernelDensity.score_samples``.

    ``logsumexp_i(-|x - d_i|^2 / (2 h^2)) - log(n) - (D/2) log(2 pi) - D log(h)``, the formula of
    :class:`sklearn.neighbors.KernelDensity` (gaussian kernel, exact tree: atol = rtol = 0), on
    ``x``'s device without host synchronisation.

    Parameters
    ----------
    x : Tensor, shape (n, D)
    data : Tensor, shape (n_train, D), same device and dtype
    bandwidth : float

    Returns
    -------
    Tensor, shape (n,), nats.
    """
    n_train, dims = data.shape
    # Direct differences (no |a|^2 + |b|^2 - 2ab expansion): the same rounding as the tree's distances.
    dist = torch.cdist(x, data, compute_mode="donot_use_mm_for_euclid_dist")
    log_kernel = -0.5 * (dist * dist) / (bandwidth * bandwidth)
    log_norm = -0.5 * dims * math.log(2.0 * math.pi) - dims * math.log(bandwidth)
    return torch.logsumexp(log_kernel, dim=1) - math.log(n_train) + log_norm


class OODDetector(BaseEstimator):
    """Base of all detectors: ``score_samples`` (higher = more OoD), ``threshold_``, ``predict``.

    Attributes
    ----------
    threshold_ : float
        Default operating point learned in ``fit``: ``predict`` flags ``score > threshold_``.
        Override with :meth:`set_threshold`.
    n_features_in_ : int
        Number of features seen in ``fit``.
    """

    name: ClassVar[str] = ""

    # ------------------------------------------------------------ subclass hooks
    def _score(self, x: np.ndarray) -> np.ndarray:
        """Scores of validated ``x`` (n, n_features_in_) -> (n,); higher = more OoD."""
        raise NotImplementedError

    def _state_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _state_extra(self) -> dict[str, Any]:
        """Learned JSON-able values besides the threshold (none by default)."""
        return {}

    def _score_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of ``x`` (n, n_features_in_) on its device, same dtype -> (n,); see score_torch."""
        raise NotImplementedError

    @property
    def supports_torch(self) -> bool:
        """Whether :meth:`score_torch` works for this detector and its parameters."""
        return False

    def _device_arrays(self, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """Learned arrays (attribute names) as tensors on ``x``'s device and dtype, copied there once."""
        cache: dict[tuple[Any, ...], torch.Tensor] = self.__dict__.setdefault("_torch_cache", {})
        out = []
        for name in names:
            array = getattr(self, name)
            key = (name, str(x.device), x.dtype)
            hit = cache.get(key)
            if hit is None or hit[0] is not array:
                hit = (array, torch.as_tensor(np.asarray(array), dtype=x.dtype, device=x.device))
                cache[key] = hit
            out.append(hit[1])
        return out

    # ------------------------------------------------------------ common API
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "threshold_")

    def _check_is_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(...) or "
                f"{type(self).__name__}.from_state(...) before scoring."
            )

    def _validate_x(self, x: ArrayLike) -> np.ndarray:
        return as_feature_matrix(x, "X", self.n_features_in_)

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """OoD score of each sample.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            Higher = more OoD (less safe).
        """
        self._check_is_fitted()
        return self._score(self._validate_x(X))

    def score_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`score_samples` of a tensor, computed on its device (float64; float32 on MPS).

        For the per-frame GPU path: no host synchronisation, so values are not checked (a
        non-finite row gives a non-finite or meaningless score, for the caller to mask). Equal to
        :meth:`score_samples` to rounding (the tests hold them to 1e-9).

        Parameters
        ----------
        X : Tensor, shape (n_samples, n_features_in_)

        Returns
        -------
        Tensor, shape (n_samples,), on ``X``'s device; higher = more OoD.

        Raises
        ------
        NotImplementedError
            :attr:`supports_torch` is False (e.g. a KDE with a kernel other than gaussian).
        """
        self._check_is_fitted()
        if not self.supports_torch:
            raise NotImplementedError(
                f"{type(self).__name__} with these parameters has no device implementation; "
                "use score_samples on the host."
            )
        if not isinstance(X, torch.Tensor) or X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise InputValidationError(
                f"X must be a tensor of shape (n_samples, {self.n_features_in_}), got "
                f"{type(X).__name__} {tuple(getattr(X, 'shape', ()))}."
            )
        dtype = torch.float32 if X.device.type == "mps" else torch.float64
        return self._score_torch(X.detach().to(dtype))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """1 (OoD) where ``score_samples(X) > threshold_``, else 0; int64 of shape (n_samples,)."""
        self._check_is_fitted()
        return (self.score_samples(X) > self.threshold_).astype(np.int64)

    def set_threshold(self: DetectorT, value: float) -> DetectorT:
        """Replace the operating point ``threshold_`` of a fitted detector; returns self."""
        self._check_is_fitted()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InputValidationError(f"threshold must be a finite number, got {value!r}.")
        self.threshold_ = float(value)
        return self

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(params, arrays)`` to store a fitted detector without pickle.

        Returns
        -------
        params : dict
            JSON-able: ``detector`` (the class ``name``), ``init`` (constructor parameters),
            ``threshold``, ``n_features_in`` and detector-specific learned values.
        arrays : dict of str to ndarray
            The learned arrays.
        """
        self._check_is_fitted()
        params = {
            "detector": self.name,
            "init": self.get_params(),
            "threshold": float(self.threshold_),
            "n_features_in": int(self.n_features_in_),
            **self._state_extra(),
        }
        arrays = {k: np.ascontiguousarray(v) for k, v in self._state_arrays().items()}
        return params, arrays

    @classmethod
    def from_state(cls: type[DetectorT], params: dict[str, Any], arrays: dict[str, np.ndarray]) -> DetectorT:
        """Rebuild a fitted detector from :meth:`get_state` output (scores are identical).

        Raises
        ------
        InputValidationError
            The state belongs to another detector, or keys or arrays are missing or inconsistent.
        """
        if params.get("detector") != cls.name:
            raise InputValidationError(
                f"State is for detector {params.get('detector')!r}, not {cls.name!r}; "
                f"use DETECTORS[params['detector']].from_state(...)."
            )
        try:
            detector = cls(**params["init"])
            threshold = float(params["threshold"])
            n_features = int(params["n_features_in"])
            common = ("detector", "init", "threshold", "n_features_in")
            extra = {k: v for k, v in params.items() if k not in common}
            detector.n_features_in_ = n_features
            detector._load_state(extra, {k: np.asarray(v) for k, v in arrays.items()})
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, InputValidationError):
                raise
            raise InputValidationError(
                f"Invalid {cls.__name__} state: {err!r}; expected the output of get_state()."
            ) from err
        detector.threshold_ = threshold
        return detector
