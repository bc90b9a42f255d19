"""Tests of lsea_monitor.detectors: references, fitted-state rules, storage, error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity

from lsea_monitor.dataset import LatentPCA
from lsea_monitor.detectors import (DETECTORS, KDEClassifier, MahalanobisDetector, OneClassKDE, OODDetector,
                                     PPCADetector)
from lsea_monitor.errors import InputValidationError, NotFittedError
from lsea_monitor.metrics import ood_metrics
from lsea_monitor.threshold import select_threshold

ALL = [KDEClassifier, OneClassKDE, MahalanobisDetector, PPCADetector]


def _blobs(seed: int = 0, n_ind: int = 120, n_ood: int = 80, d: int = 5, gap: float = 4.0):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(0.0, 1.0, (n_ind, d)), rng.normal(gap, 1.0, (n_ood, d))]
    y = np.r_[np.zeros(n_ind, np.int64), np.ones(n_ood, np.int64)]
    return x, y


def _make(cls: type[OODDetector]) -> OODDetector:
    """Default parameters, except a PPCA small enough for the blobs' 5 features."""
    return cls(n_components=2) if cls is PPCADetector else cls()


def _fitted(cls: type[OODDetector], seed: int = 0) -> OODDetector:
    x, y = _blobs(seed)
    return _make(cls).fit(x, y)


# ---------------------------------------------------------------- references


def _gaussian_log_density(x: np.ndarray, data: np.ndarray, h: float) -> np.ndarray:
    """Slow reference: log of the mean of isotropic Gaussian kernels, nats."""
    sq = ((x[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    d = data.shape[1]
    return logsumexp(-sq / (2 * h * h), axis=1) - np.log(len(data)) - 0.5 * d * np.log(2 * np.pi * h * h)


def test_kde_classifier_posterior_matches_per_class_kernel_density() -> None:
    x, y = _blobs(1, gap=1.5)
    x_new = np.random.default_rng(2).normal(0.75, 2.0, (50, 5))
    clf = KDEClassifier(bandwidth=0.8).fit(x, y)
    log_prior = np.log(np.bincount(y) / len(y))
    jll = np.stack(
        [KernelDensity(bandwidth=0.8).fit(x[y == c]).score_samples(x_new) + log_prior[c] for c in (0, 1)], 1
    )
    expected = np.exp(jll - logsumexp(jll, axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(x_new), expected, rtol=1e-10, atol=1e-14)
    # independent of sklearn: explicit Gaussian kernel sums
    slow = np.stack([_gaussian_log_density(x_new, x[y == c], 0.8) + log_prior[c] for c in (0, 1)], 1)
    slow_log_posterior = slow - logsumexp(slow, 1, keepdims=True)
    np.testing.assert_allclose(clf.predict_log_proba(x_new), slow_log_posterior, atol=1e-9)
    np.testing.assert_allclose(clf.score_samples(x_new), expected[:, 1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(clf.decision_function(x_new), jll[:, 1] - jll[:, 0], rtol=1e-9, atol=1e-9)
    # original predict = argmax posterior
    np.testing.assert_array_equal(clf.predict(x_new), expected.argmax(axis=1))
    assert clf.threshold_ == 0.5 and list(clf.classes_) == [0, 1]


def test_kde_classifier_decision_function_does_not_saturate() -> None:
    clf = KDEClassifier(bandwidth=0.5).fit(*_blobs(3))
    far = np.outer(np.array([10.0, 20.0, 40.0]), np.ones(5))
    assert np.all(clf.score_samples(far) == 1.0)
    odds = clf.decision_function(far)
    assert np.all(np.isfinite(odds)) and np.all(np.diff(odds) > 0)


def test_kde_classifier_outside_compact_support_is_ood() -> None:
    clf = KDEClassifier(bandwidth=0.5, kernel="tophat").fit(*_blobs(4))
    proba = clf.predict_proba(np.full((1, 5), 100.0))
    np.testing.assert_array_equal(proba, [[0.0, 1.0]])
    assert clf.predict(np.full((1, 5), 100.0))[0] == 1


def test_one_class_kde_is_negative_log_density_of_ind() -> None:
    x, y = _blobs(5)
    det = OneClassKDE(bandwidth=0.7).fit(x, y)  # y given: only InD rows are used
    ind_only = OneClassKDE(bandwidth=0.7).fit(x[y == 0])
    x_new = np.random.default_rng(6).normal(1.0, 2.0, (40, 5))
    np.testing.assert_array_equal(det.score_samples(x_new), ind_only.score_samples(x_new))
    slow = -_gaussian_log_density(x_new, x[y == 0], 0.7)
    np.testing.assert_allclose(det.score_samples(x_new), slow, atol=1e-9)
    assert det.threshold_ == select_threshold(-_gaussian_log_density(x[y == 0], x[y == 0], 0.7), 0.95)


def test_one_class_kde_outside_compact_support_is_the_largest_finite_score() -> None:
    x, y = _blobs(4)
    det = OneClassKDE(bandwidth=0.5, kernel="tophat").fit(x[y == 0])
    far, near = np.full((1, 5), 100.0), x[y == 0][:1]
    scores = det.score_samples(np.vstack([near, far]))
    assert np.isfinite(scores).all() and scores[1] == np.finfo(np.float64).max and scores[0] < scores[1]
    assert det.predict(far)[0] == 1
    assert ood_metrics(scores, [0, 1])["auroc"] == 1.0  # usable by the metrics (they refuse inf)


def test_mahalanobis_matches_empirical_covariance() -> None:
    x, y = _blobs(7)
    x[:, 2] = 0.5 * x[:, 0] + 0.1 * x[:, 1]  # correlated
    det = MahalanobisDetector(target_ind_tpr=0.9).fit(x[y == 0])
    ref = EmpiricalCovariance().fit(x[y == 0])
    np.testing.assert_allclose(det.covariance_, ref.covariance_, atol=1e-12)
    np.testing.assert_allclose(det.score_samples(x), np.sqrt(ref.mahalanobis(x)), rtol=1e-8)
    train_scores = det.score_samples(x[y == 0])
    assert det.threshold_ == select_threshold(train_scores, 0.9)
    assert np.mean(train_scores <= det.threshold_) >= 0.9


def test_mahalanobis_rank_deficient_features_are_finite() -> None:
    x, _ = _blobs(8)
    x[:, 3] = 1.0  # constant feature: singular covariance, pinv handles it
    det = MahalanobisDetector().fit(x)
    assert np.all(np.isfinite(det.score_samples(x)))


def _anisotropic(rng: np.random.Generator, n: int, d: int = 120) -> np.ndarray:
    """Correlated Gaussian features with a decaying spectrum (as latent entropies have)."""
    mixing = np.random.default_rng(99).normal(size=(d, d)) * np.geomspace(1.0, 0.01, d)
    return rng.normal(size=(n, d)) @ mixing + np.linspace(-1.0, 1.0, d)


def test_ppca_is_the_negative_sklearn_pca_log_likelihood_with_more_samples_than_features() -> None:
    rng = np.random.default_rng(3)
    x, x_new = _anisotropic(rng, 400), np.r_[_anisotropic(rng, 30), 0.3 * rng.normal(size=(30, 120))]
    det = PPCADetector(n_components=16, target_ind_tpr=0.9).fit(x)
    ref = PCA(n_components=16, svd_solver="full").fit(x)
    np.testing.assert_allclose(det.noise_variance_, ref.noise_variance_, rtol=1e-10)
    np.testing.assert_allclose(det.explained_variance_, ref.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(det.score_samples(x_new), -ref.score_samples(x_new), rtol=1e-9)
    assert det.threshold_ == select_threshold(det.score_samples(x), 0.9)


def test_ppca_with_fewer_samples_than_features_is_tipping_and_bishops_gaussian() -> None:
    """Independent oracle: the covariance's eigendecomposition, the d - q smallest eigenvalues
    (zeros included) averaged, and scipy's Gaussian log-density with the full d x d covariance."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(5)
    x, x_new = _anisotropic(rng, 60), np.r_[_anisotropic(rng, 20), 0.3 * rng.normal(size=(20, 120))]
    det = PPCADetector(n_components=8).fit(x)
    eigval, eigvec = np.linalg.eigh(np.cov(x, rowvar=False))
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    noise = np.clip(eigval[8:], 0.0, None).mean()
    np.testing.assert_allclose(det.noise_variance_, noise, rtol=1e-8)
    v = eigvec[:, :8]
    cov = v @ np.diag(eigval[:8]) @ v.T + noise * (np.eye(120) - v @ v.T)
    ref = multivariate_normal(mean=x.mean(axis=0), cov=cov).logpdf(x_new)
    np.testing.assert_allclose(det.score_samples(x_new), -ref, rtol=1e-7)


def test_ppca_threshold_from_folds_holds_on_new_ind_samples() -> None:
    """The calibration sets the threshold at 95 % of out-of-fold InD scores, from detectors fitted on
    folds of fewer images; with far fewer samples than features (80 images, 1280 entropies in the
    demo) scikit-learn's residual variance grows as the sample shrinks, and that threshold accepted
    100 % of new InD samples here (so it flagged few anomalies); Tipping & Bishop's about 98 %."""
    rng = np.random.default_rng(6)
    x, x_new = _anisotropic(rng, 80, d=600), _anisotropic(rng, 2000, d=600)
    oof = np.empty(len(x))
    for fold in np.array_split(rng.permutation(len(x)), 5):
        keep = np.setdiff1d(np.arange(len(x)), fold)
        oof[fold] = PPCADetector(n_components=16).fit(x[keep]).score_samples(x[fold])
    threshold = select_threshold(oof, 0.95)
    accepted = np.mean(PPCADetector(n_components=16).fit(x).score_samples(x_new) <= threshold)
    assert 0.9 <= accepted <= 0.99, accepted


def test_ppca_sees_the_residual_that_a_pca_then_mahalanobis_misses() -> None:
    """InD varies in a 2-D plane of 6-D space (plus a little noise); a frame pushed off the plane
    keeps its in-plane coordinates, so a detector on the top PCA components cannot tell it apart."""
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    x = rng.normal(size=(200, 2)) * [3.0, 2.0] @ basis[:, :2].T + 0.05 * rng.normal(size=(200, 6))
    on_plane = rng.normal(size=(50, 2)) * [3.0, 2.0] @ basis[:, :2].T
    off_plane = on_plane + 1.0 * basis[:, 2]
    y = np.r_[np.zeros(50), np.ones(50)]
    ppca = PPCADetector(n_components=2).fit(x)
    assert roc_auc_score(y, ppca.score_samples(np.r_[on_plane, off_plane])) == 1.0
    pca = LatentPCA(n_components=2).fit(x)
    maha = MahalanobisDetector().fit(pca.transform(x))
    assert roc_auc_score(y, maha.score_samples(pca.transform(np.r_[on_plane, off_plane]))) < 0.6


def test_ppca_fit_and_state_errors() -> None:
    x, _ = _blobs()  # 200 samples of 5 features
    with pytest.raises(InputValidationError, match=r"n_components < min\(n_samples - 1, n_features\) = 5"):
        PPCADetector(n_components=5).fit(x)
    with pytest.raises(InputValidationError, match=r"= 3 .* \(got 4 samples of 5 features\)"):
        PPCADetector(n_components=3).fit(x[:4])
    flat = np.c_[x[:, :2], np.zeros((200, 3))]  # varies in 2 directions only
    with pytest.raises(InputValidationError, match="vary in at most 2 directions"):
        PPCADetector(n_components=2).fit(flat)
    params, arrays = PPCADetector(n_components=2).fit(x).get_state()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(InputValidationError, match="non-positive or non-finite"):
            PPCADetector.from_state({**params, "noise_variance": bad}, arrays)
    with pytest.raises(InputValidationError, match="non-positive or non-finite"):
        PPCADetector.from_state(params, {**arrays, "explained_variance": np.array([1.0, 0.0])})


# ---------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("cls", ALL)
def test_auroc_floor_on_separable_blobs(cls: type[OODDetector]) -> None:
    x, y = _blobs(10)
    x_test, y_test = _blobs(11)
    det = _make(cls).fit(x, y)
    scores = det.score_samples(x_test)
    assert scores.shape == (len(x_test),) and scores.dtype == np.float64
    assert roc_auc_score(y_test, scores) > 0.99  # higher score = more OoD
    assert np.mean(det.predict(x_test) == y_test) > 0.9


@pytest.mark.parametrize("cls", ALL)
def test_init_only_stores_params(cls: type[OODDetector]) -> None:
    params = {"kde_classifier": {"bandwidth": -1.0}, "one_class_kde": {"bandwidth": -1.0},
              "mahalanobis": {"target_ind_tpr": 7.0}, "ppca": {"n_components": 0}}[cls.name]
    det = cls(**params)  # invalid, but only checked in fit
    assert det.get_params() | params == det.get_params()
    assert clone(det).get_params() == det.get_params()
    with pytest.raises(TypeError):
        cls(1.0)  # keyword-only
    expected = (r"bandwidth must be a finite number > 0, got -1.0|target_ind_tpr .* \(0, 1\], got 7.0"
                r"|n_components must be an integer >= 1, got 0")
    with pytest.raises(InputValidationError, match=expected):
        det.fit(*_blobs())


@pytest.mark.parametrize("cls", ALL)
def test_unfitted_use_raises(cls: type[OODDetector]) -> None:
    det = cls()
    x = np.zeros((2, 5))
    calls = [det.score_samples, det.predict, lambda _: det.set_threshold(0.1), lambda _: det.get_state()]
    if isinstance(det, KDEClassifier):
        calls += [det.predict_proba, det.predict_log_proba, det.decision_function]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted yet") as info:
            call(x)
        assert isinstance(info.value, SklearnNotFittedError)


@pytest.mark.parametrize("cls", ALL)
def test_state_round_trip_gives_identical_scores(cls: type[OODDetector]) -> None:
    det = _fitted(cls).set_threshold(0.25)
    params, arrays = det.get_state()
    params = json.loads(json.dumps(params))  # must survive JSON
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    loaded = DETECTORS[params["detector"]].from_state(params, arrays)
    assert type(loaded) is cls and loaded.get_params() == det.get_params()
    x_new = np.random.default_rng(12).normal(1.0, 3.0, (64, 5))
    np.testing.assert_array_equal(loaded.score_samples(x_new), det.score_samples(x_new))
    np.testing.assert_array_equal(loaded.predict(x_new), det.predict(x_new))
    assert loaded.threshold_ == 0.25 and loaded.n_features_in_ == 5


@pytest.mark.parametrize("cls", ALL)
def test_threshold_override_changes_predictions(cls: type[OODDetector]) -> None:
    det = _fitted(cls)
    x, _ = _blobs(13)
    scores = det.score_samples(x)
    np.testing.assert_array_equal(det.predict(x), (scores > det.threshold_).astype(int))
    det.set_threshold(float(np.max(scores)))
    assert det.predict(x).sum() == 0
    with pytest.raises(InputValidationError, match="threshold must be a finite number, got nan"):
        det.set_threshold(float("nan"))


@pytest.mark.parametrize("cls", ALL)
def test_scoring_input_errors(cls: type[OODDetector]) -> None:
    det = _fitted(cls)
    with pytest.raises(InputValidationError, match="X has 4 features but 5 were seen in fit"):
        det.score_samples(np.zeros((3, 4)))
    bad = np.zeros((3, 5))
    bad[0, 0] = np.inf
    with pytest.raises(InputValidationError, match=r"1 non-finite value"):
        det.predict(bad)
    with pytest.raises(InputValidationError, match="must be 2-D"):
        det.score_samples(np.zeros(5))


@pytest.mark.parametrize("cls", ALL)
def test_fit_input_errors(cls: type[OODDetector]) -> None:
    x, y = _blobs()
    with pytest.raises(InputValidationError, match=r"y must hold 0 \(InD\) or 1 \(OoD\), got value 2"):
        cls().fit(x, np.where(y == 1, 2, 0))
    with pytest.raises(InputValidationError, match=r"y must have shape \(200,\)"):
        cls().fit(x, y[:10])
    x_nan = x.copy()
    x_nan[3, 3] = np.nan
    with pytest.raises(InputValidationError, match="non-finite"):
        cls().fit(x_nan, y)
    with pytest.raises(InputValidationError, match=r"has no features \(shape \(200, 0\)\)"):
        cls().fit(x[:, :0], y)


@pytest.mark.parametrize("cls", ALL)
def test_from_state_errors(cls: type[OODDetector]) -> None:
    params, arrays = _fitted(cls).get_state()
    other = next(c for c in ALL if c is not cls)
    with pytest.raises(InputValidationError, match=f"State is for detector '{cls.name}'"):
        other.from_state(params, arrays)
    with pytest.raises(InputValidationError, match=f"Invalid {cls.__name__} state"):
        cls.from_state(params, {})
    wrong = {k: v[..., :2] for k, v in arrays.items()}
    with pytest.raises(InputValidationError, match="has shape"):
        cls.from_state(params, wrong)


def test_detector_specific_fit_errors() -> None:
    x, y = _blobs()
    with pytest.raises(InputValidationError, match=r"n_ind=120, n_ood=0; use OneClassKDE"):
        KDEClassifier().fit(x[y == 0], y[y == 0])
    with pytest.raises(InputValidationError, match="kernel must be one of"):
        KDEClassifier(kernel="box").fit(x, y)
    with pytest.raises(InputValidationError, match="at least 2 InD training samples, got 0"):
        OneClassKDE().fit(x[y == 1], y[y == 1])
    with pytest.raises(InputValidationError, match=r"target_ind_tpr must be a number in \(0, 1\], got 0"):
        MahalanobisDetector(target_ind_tpr=0).fit(x)


def test_registry_names() -> None:
    assert DETECTORS == {
        "kde_classifier": KDEClassifier,
        "one_class_kde": OneClassKDE,
        "mahalanobis": MahalanobisDetector,
        "ppca": PPCADetector,
    }
