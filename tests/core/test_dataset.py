"""Tests of lsea_monitor.dataset: LatentPCA against sklearn PCA, and the detection dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from lsea_monitor.dataset import DetectionDataset, LatentPCA, as_feature_matrix, build_detection_dataset
from lsea_monitor.errors import InputValidationError, NotFittedError


def _features(seed: int, n: int, n_features: int = 40, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(n_features, n_features))
    return rng.normal(size=(n, n_features)) @ mixing + shift


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("solver", ["randomized", "full"])
def test_latent_pca_equals_sklearn(whiten: bool, solver: str) -> None:
    # Equal up to BLAS rounding (array memory layouts differ), same fitted components.
    x, x_new = _features(0, 120), _features(1, 30)
    ours = LatentPCA(n_components=16, whiten=whiten, svd_solver=solver, random_state=0).fit(x)
    ref = PCA(n_components=16, whiten=whiten, svd_solver=solver, random_state=0).fit(x)
    np.testing.assert_allclose(ours.transform(x_new), ref.transform(x_new), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-14)
    if whiten:
        np.testing.assert_allclose(ours.transform(x).std(axis=0, ddof=1), 1.0, rtol=1e-5)


def test_transform_torch_matches_numpy() -> None:
    x = _features(2, 80)
    pca = LatentPCA(n_components=8).fit(x)
    out = pca.transform_torch(torch.from_numpy(x).float())
    assert out.dtype == torch.float64 and out.shape == (80, 8)
    np.testing.assert_allclose(out.numpy(), pca.transform(x.astype(np.float32)), atol=1e-9)


def test_state_round_trip_is_json_and_exact() -> None:
    x = _features(3, 60)
    pca = LatentPCA(n_components=5, random_state=7).fit(x)
    params, arrays = pca.get_state()
    json.dumps(params)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    loaded = LatentPCA.from_state(json.loads(json.dumps(params)), {k: a.copy() for k, a in arrays.items()})
    np.testing.assert_array_equal(loaded.transform(x), pca.transform(x))
    assert loaded.get_params() == pca.get_params()


def test_pca_errors() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        LatentPCA().transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        LatentPCA().transform_torch(torch.zeros(2, 3))
    with pytest.raises(InputValidationError, match=r"\[1, 10\], got 16"):
        LatentPCA().fit(np.random.default_rng(0).normal(size=(10, 40)))
    with pytest.raises(InputValidationError, match="svd_solver"):
        LatentPCA(n_components=2, svd_solver="magic").fit(np.ones((5, 3)) + np.eye(5, 3))
    pca = LatentPCA(n_components=2).fit(_features(4, 20, 6))
    with pytest.raises(InputValidationError, match="has 5 features but 6 were seen in fit"):
        pca.transform(np.zeros((3, 5)))
    with pytest.raises(InputValidationError, match=r"shape \(n_samples, 6\)"):
        pca.transform_torch(torch.zeros(3, 5))
    params, arrays = pca.get_state()
    del arrays["components"]
    with pytest.raises(InputValidationError, match="Invalid LatentPCA state"):
        LatentPCA.from_state(params, arrays)


def test_build_order_labels_and_pca_on_train_only() -> None:
    ind_v, ood_v = _features(10, 30), _features(11, 20, shift=3.0)
    ind_t, ood_t = _features(12, 25), _features(13, 15, shift=3.0)
    ds = build_detection_dataset(ind_v, ood_v, ind_t, ood_t)
    assert isinstance(ds, DetectionDataset)
    np.testing.assert_array_equal(ds.y_train, np.r_[np.zeros(30), np.ones(20)])
    np.testing.assert_array_equal(ds.y_test, np.r_[np.zeros(25), np.ones(15)])
    assert ds.y_train.dtype == np.int64
    ref = PCA(n_components=16, whiten=True, svd_solver="randomized", random_state=0)
    ref.fit(np.vstack([ind_v, ood_v]))
    np.testing.assert_allclose(ds.x_train, ref.transform(np.vstack([ind_v, ood_v])), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.x_test, ref.transform(np.vstack([ind_t, ood_t])), rtol=0, atol=1e-12)
    with pytest.raises(AttributeError):
        ds.pca = None  # type: ignore[misc]


def test_build_without_pca_keeps_raw_rows() -> None:
    parts = [_features(s, 4, 5) for s in range(4)]
    ds = build_detection_dataset(*parts, pca_components=None)
    assert ds.pca is None
    np.testing.assert_array_equal(ds.x_train, np.vstack(parts[:2]))
    np.testing.assert_array_equal(ds.x_test, np.vstack(parts[2:]))


def test_build_errors() -> None:
    ok = np.zeros((4, 5))
    with pytest.raises(InputValidationError, match=r"same number of features.*'ood_test': 6"):
        build_detection_dataset(ok, ok, ok, np.zeros((4, 6)), pca_components=None)
    with pytest.raises(InputValidationError, match=r"ind_valid must be 2-D .* shape \(5,\)"):
        build_detection_dataset(np.zeros(5), ok, ok, ok)
    bad = ok.copy()
    bad[1, 1] = np.nan
    with pytest.raises(InputValidationError, match=r"ood_valid contains 1 non-finite"):
        build_detection_dataset(ok, bad, ok, ok)
    with pytest.raises(InputValidationError, match="no samples"):
        build_detection_dataset(ok, ok, np.zeros((0, 5)), ok)


def test_as_feature_matrix_accepts_tensors() -> None:
    out = as_feature_matrix(torch.ones(2, 3, dtype=torch.float32), "x", 3)
    assert out.dtype == np.float64 and out.shape == (2, 3)
