"""OoD detection dataset from entropy features: stacking, labels, and a storable PCA.

Reproduces the original ``build_ood_detection_ds``: train = vstack(InD-valid, OoD-valid), test =
vstack(InD-test, OoD-test) in that order, no shuffling, labels InD = 0 and OoD = 1, and a PCA
(16 components, whitened, randomized SVD) fitted on train only.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.decomposition import PCA

from lsea_monitor.errors import InputValidationError, NotFittedError

__all__ = ["DetectionDataset", "LatentPCA", "as_feature_matrix", "build_detection_dataset"]

_SVD_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")


def as_feature_matrix(
    x: Any, name: str, n_features: int | None = None, expected_source: str = "seen in fit"
) -> np.ndarray:
    """Validate a feature matrix and return it as float64 of shape (n_samples, n_features).

    Parameters
    ----------
    x : array_like or Tensor, shape (n_samples, n_features)
    name : str
        Name used in error messages.
    n_features : int or None
        Required number of columns (e.g. the count seen in ``fit``), or None for any.
    expected_source : str, default "seen in fit"
        Where ``n_features`` comes from, for the error message.

    Raises
    ------
    InputValidationError
        Not numeric, not 2-D, no rows, wrong column count, or non-finite values.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputValidationError(f"{name} must be a numeric array: {err}.") from err
    if arr.ndim != 2:
        raise InputValidationError(
            f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}; "
            f"reshape a single sample with x.reshape(1, -1)."
        )
    if arr.shape[0] == 0:
        raise InputValidationError(f"{name} has no samples (shape {arr.shape}).")
    if arr.shape[1] == 0:
        raise InputValidationError(f"{name} has no features (shape {arr.shape}).")
    if n_features is not None and arr.shape[1] != n_features:
        raise InputValidationError(
            f"{name} has {arr.shape[1]} features but {n_features} were {expected_source}; "
            f"use features built the same way (entropy layer, PCA) everywhere."
        )
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise InputValidationError(
            f"{name} contains {n_bad} non-finite value(s) (NaN or inf) out of {arr.size}."
        )
    return arr


class LatentPCA:
    """PCA of entropy features that stores as plain arrays (no pickle); equals sklearn's ``PCA``.

    Parameters
    ----------
    n_components : int, default 16
        Number of components, ``1 <= n_components <= min(n_samples, n_features)``.
    whiten : bool, default True
        Divide each component by its standard deviation (unit variance on train).
    svd_solver : str, default "randomized"
        Passed to :class:`sklearn.decomposition.PCA`.
    random_state : int or None, default 0
        Seed of the randomized solver.

    Attributes
    ----------
    mean_ : ndarray, shape (n_features,)
    components_ : ndarray, shape (n_components, n_features)
    explained_variance_ : ndarray, shape (n_components,)
    explained_variance_ratio_ : ndarray, shape (n_components,)
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        n_components: int = 16,
        whiten: bool = True,
        svd_solver: str = "randomized",
        random_state: int | None = 0,
    ) -> None:
        self.n_components = n_components
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.random_state = random_state

    def _validate_params(self, n_samples: int, n_features: int) -> None:
        n = self.n_components
        limit = min(n_samples, n_features)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= limit:
            raise InputValidationError(
                f"n_components must be an integer in [1, min(n_samples, n_features)] = [1, {limit}], "
                f"got {n!r}; lower it or give more samples/features."
            )
        if not isinstance(self.whiten, bool):
            raise InputValidationError(f"whiten must be a bool, got {self.whiten!r}.")
        if self.svd_solver not in _SVD_SOLVERS:
            raise InputValidationError(f"svd_solver must be one of {_SVD_SOLVERS}, got {self.svd_solver!r}.")
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral)):
            raise InputValidationError(f"random_state must be an int or None, got {rs!r}.")

    def fit(self, x: ArrayLike, y: Any = None) -> LatentPCA:
        """Fit on ``x`` of shape (n_samples, n_features) (float64). ``y`` is ignored. Returns self."""
        arr = as_feature_matrix(x, "x")
        self._validate_params(*arr.shape)
        pca = PCA(
            n_components=int(self.n_components),
            whiten=self.whiten,
            svd_solver=self.svd_solver,
            random_state=self.random_state,
        ).fit(arr)
        self.mean_ = pca.mean_.copy()
        self.components_ = pca.components_.copy()
        self.explained_variance_ = pca.explained_variance_.copy()
        self.explained_variance_ratio_ = pca.explained_variance_ratio_.copy()
        self.n_features_in_ = int(arr.shape[1])
        return self

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("This LatentPCA is not fitted yet; call fit(x) or from_state() first.")

    def _scale(self) -> np.ndarray:
        scale = np.sqrt(self.explained_variance_)
        return np.maximum(scale, np.finfo(scale.dtype).eps)  # sklearn's clip of tiny variances

    def transform(self, x: ArrayLike) -> np.ndarray:
        """Project ``x`` (n_samples, n_features_in_) to (n_samples, n_components), float64.

        Same operations, in the same order, as ``sklearn.decomposition.PCA.transform``.
        """
        self._check_is_fitted()
        arr = as_feature_matrix(x, "x", self.n_features_in_)
        out = arr @ self.components_.T
        out -= self.mean_.reshape(1, -1) @ self.components_.T
        if self.whiten:
            out /= self._scale()
        return out

    def fit_transform(self, x: ArrayLike, y: Any = None) -> np.ndarray:
        """``fit(x).transform(x)``."""
        return self.fit(x).transform(x)

    def transform_torch(self, x: torch.Tensor, *, check_finite: bool = True) -> torch.Tensor:
        """:meth:`transform` on a tensor's device (float64; float32 on MPS); shape (n, n_components).

        Parameters
        ----------
        x : Tensor, shape (n_samples, n_features_in_)
        check_finite : bool, default True
            Refuse non-finite values. Counting them reads a device value back to the host; the
            per-frame GPU path passes False and masks non-finite rows itself (they map to
            non-finite or meaningless rows, never raise).

        Notes
        -----
        The learned arrays are copied to the device once and kept (per device and dtype), so a
        call costs no host-to-device copy.
        """
        self._check_is_fitted()
        if not isinstance(x, torch.Tensor):
            raise InputValidationError(
                f"transform_torch needs a torch.Tensor, got {type(x).__name__}; use transform()."
            )
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise InputValidationError(
                f"x must have shape (n_samples, {self.n_features_in_}), got {tuple(x.shape)}."
            )
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
        x = x.detach().to(dtype=dtype)
        if check_finite:
            n_bad = int((~torch.isfinite(x)).sum().item())
            if n_bad:
                raise InputValidationError(f"x contains {n_bad} non-finite value(s) out of {x.numel()}.")
        components_t, mean_projected, scale = self._device_state(x.device, dtype)
        out = x @ components_t - mean_projected
        if self.whiten:
            out = out / scale
        return out

    def _device_state(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(components.T, mean @ components.T, scale) on ``device``, computed once per device/dtype."""
        key = (str(device), dtype, id(self.components_), id(self.mean_), id(self.explained_variance_))
        cached = getattr(self, "_torch_state", None)
        if cached is None or cached[0] != key:
            components = torch.as_tensor(self.components_, dtype=dtype, device=device)
            mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)
            scale = torch.as_tensor(self._scale(), dtype=dtype, device=device)
            cached = (key, (components.T, mean.reshape(1, -1) @ components.T, scale))
            self._torch_state = cached
        return cached[1]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able)."""
        return {
            "n_components": self.n_components,
            "whiten": self.whiten,
            "svd_solver": self.svd_solver,
            "random_state": self.random_state,
        }

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(params, arrays)``: JSON-able parameters and the learned arrays, for an artefact."""
        self._check_is_fitted()
        arrays = {
            "mean": self.mean_,
            "components": self.components_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
        }
        return self.get_params(), {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LatentPCA:
        """Rebuild a fitted instance from :meth:`get_state` output, without refitting."""
        try:
            pca = cls(**params)
            mean = np.asarray(arrays["mean"], dtype=np.float64)
            components = np.asarray(arrays["components"], dtype=np.float64)
            variance = np.asarray(arrays["explained_variance"], dtype=np.float64)
            ratio = np.asarray(arrays["explained_variance_ratio"], dtype=np.float64)
        except (TypeError, KeyError) as err:
            raise InputValidationError(
                f"Invalid LatentPCA state: {err!r}; expected get_state() output."
            ) from err
        n_components = components.shape[0] if components.ndim == 2 else -1
        if (
            mean.ndim != 1
            or components.shape != (n_components, mean.shape[0])
            or variance.shape != (n_components,)
            or ratio.shape != (n_components,)
            or n_components != params.get("n_components")
        ):
            raise InputValidationError(
                f"Inconsistent LatentPCA state: mean {mean.shape}, components {components.shape}, "
                f"explained_variance {variance.shape}, n_components={params.get('n_components')!r}."
            )
        pca.mean_, pca.components_ = mean, components
        pca.explained_variance_, pca.explained_variance_ratio_ = variance, ratio
        pca.n_features_in_ = int(mean.shape[0])
        return pca


@dataclass(frozen=True)
class DetectionDataset:
    """Train/test features and labels for a detector (label 0 = InD, 1 = OoD).

    Attributes
    ----------
    x_train : ndarray, shape (n_train, n_features)
        PCA-projected if ``pca`` is not None.
    y_train : ndarray of int64, shape (n_train,)
    x_test : ndarray, shape (n_test, n_features)
    y_test : ndarray of int64, shape (n_test,)
    pca : LatentPCA or None
        The PCA fitted on the raw train features, or None when disabled.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pca: LatentPCA | None


def build_detection_dataset(
    ind_valid: ArrayLike,
    ood_valid: ArrayLike,
    ind_test: ArrayLike,
    ood_test: ArrayLike,
    *,
    pca_components: int | None = 16,
    whiten: bool = True,
    random_state: int | None = 0,
) -> DetectionDataset:
    """Stack InD and OoD entropy features into a labelled train/test set, with optional PCA.

    Parameters
    ----------
    ind_valid, ood_valid : array_like, shape (n_i, n_features)
        Features (e.g. ``h_z``, nats) of the InD and OoD validation images: the train set.
    ind_test, ood_test : array_like, shape (n_j, n_features)
        Features of the InD and OoD test images: the test set.
    pca_components : int or None, default 16
        Components of a randomized-SVD PCA fitted on train only; None disables PCA.
    whiten : bool, default True
        Whiten the PCA components.
    random_state : int or None, default 0
        Seed of the PCA.

    Returns
    -------
    DetectionDataset
        train = vstack(ind_valid, ood_valid), test = vstack(ind_test, ood_test), in that order;
        labels 0 for InD rows and 1 for OoD rows.

    Raises
    ------
    InputValidationError
        An input not 2-D, empty or non-finite, feature counts that differ, bad PCA parameters.
    """
    named = {"ind_valid": ind_valid, "ood_valid": ood_valid, "ind_test": ind_test, "ood_test": ood_test}
    arrays = {name: as_feature_matrix(value, name) for name, value in named.items()}
    widths = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(widths.values())) != 1:
        raise InputValidationError(
            f"All four feature sets must have the same number of features, got {widths}; "
            f"compute them from the same layer with the same entropy settings."
        )
    x_train = np.vstack([arrays["ind_valid"], arrays["ood_valid"]])
    x_test = np.vstack([arrays["ind_test"], arrays["ood_test"]])
    y_train = np.r_[np.zeros(len(arrays["ind_valid"]), np.int64), np.ones(len(arrays["ood_valid"]), np.int64)]
    y_test = np.r_[np.zeros(len(arrays["ind_test"]), np.int64), np.ones(len(arrays["ood_test"]), np.int64)]
    pca: LatentPCA | None = None
    if pca_components is not None:
        pca = LatentPCA(n_components=pca_components, whiten=whiten, random_state=random_state).fit(x_train)
        x_train, x_test = pca.transform(x_train), pca.transform(x_test)
    return DetectionDataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, pca=pca)
