"""How lsea-calibrate fits the supervised detector: which validation OoD rows, which folds, which bandwidth.

Plain feature arrays, no model: fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from lsea_monitor.artefact import ModelBinding
from lsea_monitor.detectors import KDEClassifier
from lsea_monitor.errors import InputValidationError
from lsea_monitor.preprocessing import Preprocessing
from offline_calibration.calibrate import (compose_mixed, fit_detectors, fit_ood_rows, out_of_fold_scores,
                                           select_kde_bandwidth)
from offline_calibration.config import CalibrationConfig, DetectionConfig

KINDS = ["mud", "fog", "sunflare"]


def _features(n: int = 30, dim: int = 24, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("val", "test"):
        out[f"{split}/ind"] = {"index": np.arange(n), "h_z": rng.normal(size=(n, dim))}
        for j, kind in enumerate(KINDS):
            out[f"{split}/{kind}"] = {"index": np.arange(n), "h_z": rng.normal(loc=1.0 + j, size=(n, dim))}
    return out


def _cfg(**detection) -> CalibrationConfig:
    return CalibrationConfig(output_dir="unused", detection=DetectionConfig(pca_components=4, cross_type=False,
                                                                            **detection))


def _binding() -> ModelBinding:
    return ModelBinding(model_class="m:M", layer="l", checkpoint_sha256="0" * 64, mc_samples=10, entropy_k=None)


def test_every_kind_uses_every_altered_image_and_mixed_the_original_set() -> None:
    f = _features()
    x, groups = fit_ood_rows(f, KINDS, 0, "val", "every_kind")
    assert x.shape == (90, 24)
    np.testing.assert_array_equal(x, np.vstack([f[f"val/{k}"]["h_z"] for k in KINDS]))
    np.testing.assert_array_equal(groups, np.tile(np.arange(30), 3))
    x_mixed, groups_mixed = fit_ood_rows(f, KINDS, 0, "val", "mixed")
    np.testing.assert_array_equal(x_mixed, compose_mixed(f, KINDS, 0, "val")["h_z"])
    np.testing.assert_array_equal(groups_mixed, np.arange(30))


def test_grouped_folds_keep_an_image_and_its_altered_copies_together(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 20
    x = np.random.default_rng(1).normal(size=(3 * n, 5))
    y = np.r_[np.zeros(n, int), np.ones(2 * n, int)]
    groups = np.tile(np.arange(n), 3)
    seen_train: list[np.ndarray] = []

    class Spy(KDEClassifier):
        def fit(self, xt, yt):  # type: ignore[override]
            seen_train.append(xt)
            return super().fit(xt, yt)

        def score_samples(self, xh):  # type: ignore[override]
            # Every held-out row's group must be absent from the rows fitted on.
            fitted = {tuple(r) for r in seen_train[-1]}
            assert not any(tuple(r) in fitted for r in x[np.isin(groups, held_groups(xh))])
            return super().score_samples(xh)

    def held_groups(xh: np.ndarray) -> np.ndarray:
        rows = [int(np.flatnonzero((x == r).all(1))[0]) for r in xh]
        return np.unique(groups[rows])

    scores = out_of_fold_scores(Spy(bandwidth=1.0), None, x, y, 5, 0, groups)
    assert scores.shape == (3 * n,) and np.isfinite(scores).all()
    assert len(seen_train) == 5


def test_bandwidth_chosen_on_validation_by_cross_validated_auroc() -> None:
    f = _features()
    x_ood, g_ood = fit_ood_rows(f, KINDS, 0, "val", "every_kind")
    x = np.vstack([f["val/ind"]["h_z"], x_ood])
    y = np.r_[np.zeros(30, int), np.ones(90, int)]
    groups = np.r_[np.arange(30), g_ood]
    bw, table = select_kde_bandwidth(_cfg(kde_bandwidth_grid=[0.5, 2.0, 1.0]), x, y, groups)
    assert list(table) == ["0.5", "1", "2"]
    assert bw == float(max(table, key=lambda k: (table[k], -float(k))))
    assert all(0.5 <= v <= 1.0 for v in table.values())
    # An empty grid keeps the configured (guide's) bandwidth.
    assert select_kde_bandwidth(_cfg(kde_bandwidth=0.8, kde_bandwidth_grid=[]), x, y, groups) == (0.8, {})


def test_fit_detectors_reports_its_selection_and_uses_the_chosen_bandwidth() -> None:
    f = _features()
    x_ood, g_ood = fit_ood_rows(f, KINDS, 0, "val", "every_kind")
    selection: dict = {}
    arts = fit_detectors(_cfg(kde_bandwidth_grid=[0.7, 1.4]), f["val/ind"]["h_z"], x_ood, _binding(), Preprocessing(),
                         groups=np.r_[np.arange(30), g_ood], selection=selection)
    assert selection["kde_bandwidth"] in (0.7, 1.4)
    assert set(selection["kde_bandwidth_cv_auroc"]) == {"0.7", "1.4"}
    assert (selection["n_val_ind"], selection["n_val_ood_rows"]) == (30, 90)
    assert arts["kde_classifier"].detector.bandwidth == selection["kde_bandwidth"]
    assert arts["one_class_kde"].detector.bandwidth == 1.0  # one-class detectors never see OoD
    with pytest.raises(ValueError, match="groups"):
        fit_detectors(_cfg(), f["val/ind"]["h_z"], x_ood, _binding(), Preprocessing(), groups=np.arange(3))


@pytest.mark.parametrize("detection, message", [({"fit_ood": "some"}, "fit_ood"),
                                                ({"kde_bandwidth_grid": [1.0, 0.0]}, "kde_bandwidth_grid"),
                                                ({"kde_bandwidth_grid": [True]}, "kde_bandwidth_grid")])
def test_detection_options_are_validated(tmp_path, detection: dict, message: str) -> None:
    cfg = _cfg(**detection)
    cfg.dataset.root = str(tmp_path)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    cfg.model.checkpoint = str(ckpt)
    cfg.output_dir = str(tmp_path / "out")
    with pytest.raises(InputValidationError, match=message):
        cfg.validate()


def _fit(n_ind: int, dim: int = 32, **detection) -> dict:
    rng = np.random.default_rng(0)
    ind, ood = rng.normal(size=(n_ind, dim)), rng.normal(2, 1, size=(3 * n_ind, dim))
    groups = np.r_[np.arange(n_ind), np.tile(np.arange(n_ind), 3)]
    cfg = CalibrationConfig(output_dir="unused", detection=DetectionConfig(cross_type=False, **detection))
    return fit_detectors(cfg, ind, ood, _binding(), Preprocessing(64, 128), groups=groups)


@pytest.mark.parametrize("n_ind, detection, message", [
    (4, {"pca_components": 2, "threshold_folds": 5},
     r"4 InD images, but 5 cross-validation folds need at least 5 .* \(detection.threshold_folds: 4 at most\)"),
    (4, {"pca_components": 2, "threshold_folds": 0, "kde_bandwidth_grid": [0.5, 1.0]},
     r"4 InD images, but 5 cross-validation folds .*detection.kde_bandwidth_grid: \[\]"),
    (18, {"pca_components": 16, "threshold_folds": 5},
     r"pca_components is 16, but the validation split has 18 InD images .* as few as 14 .*PPCA detector needs 2 "
     r"more images than components\). Use detection.pca_components <= 12, fewer folds, or more validation images "
     r"\(at least 23\)"),
    (18, {"pca_components": 13, "threshold_folds": 5}, r"pca_components <= 12, .*\(at least 19\)"),
    (10, {"pca_components": 12, "threshold_folds": 0, "kde_bandwidth_grid": []},
     r"pca_components is 12, .* 10 InD images .*pca_components <= 8"),
    (30, {"pca_components": 40, "threshold_folds": 5}, "the hooked layer gives 32 entropy features"),
    (60, {"pca_components": 32, "threshold_folds": 5},
     r"gives 32 entropy features; use detection.pca_components <= 31"),
])
def test_too_few_validation_images_for_the_folds_or_the_pca(n_ind: int, detection: dict, message: str) -> None:
    """Not scikit-learn's 'n_splits=5 ... greater than the number of groups: 4' or 'n_components must be
    ... [1, 14]': the image count, what the folds or the PCA need and what to change."""
    with pytest.raises(InputValidationError, match=message):
        _fit(n_ind, **detection)


@pytest.mark.parametrize("n_ind, detection", [
    (18, {"pca_components": 12, "threshold_folds": 5}),  # the largest PCA the folds allow
    (23, {"pca_components": 16, "threshold_folds": 5}),  # the fewest images for 16 components
    (60, {"pca_components": 31, "threshold_folds": 5}),  # the largest PCA the 32 features allow
    (5, {"pca_components": 0, "threshold_folds": 5}),  # as many folds as images
    (6, {"pca_components": 4, "threshold_folds": 0, "kde_bandwidth_grid": []}),  # in-sample
])
def test_the_size_check_is_exact_at_its_bounds(n_ind: int, detection: dict) -> None:
    arts = _fit(n_ind, **detection)
    # The PPCA models pca_components directions: none without a PCA.
    with_ppca = {"ppca"} if detection["pca_components"] else set()
    assert set(arts) == {"kde_classifier", "one_class_kde", "mahalanobis"} | with_ppca
    assert all(np.isfinite(a.threshold) for a in arts.values())
