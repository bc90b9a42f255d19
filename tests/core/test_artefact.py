"""Artefact round trip and every way a bad artefact must be refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from lsea_monitor.artefact import DetectorArtefact, ModelBinding
from lsea_monitor.dataset import LatentPCA
from lsea_monitor.detectors import KDEClassifier, MahalanobisDetector, OneClassKDE, PPCADetector
from lsea_monitor.errors import ArtefactError, InputValidationError
from lsea_monitor.preprocessing import Preprocessing

SHA = "ab" * 32


def _features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ind = rng.normal(0.0, 1.0, (60, 24))
    ood = rng.normal(1.5, 1.3, (60, 24))
    return ind, ood


def _artefact(detector_name: str = "kde_classifier") -> DetectorArtefact:
    ind, ood = _features()
    x = np.vstack([ind, ood])
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    pca = LatentPCA(n_components=6).fit(x if detector_name == "kde_classifier" else ind)
    if detector_name == "kde_classifier":
        det = KDEClassifier(bandwidth=0.8).fit(pca.transform(x), y)
    elif detector_name == "one_class_kde":
        det = OneClassKDE(bandwidth=1.0).fit(pca.transform(ind))
    elif detector_name == "mahalanobis":
        det = MahalanobisDetector().fit(pca.transform(ind))
    else:  # as calibrated: on the raw features, the residual off its subspace is its signal
        pca = None
        det = PPCADetector(n_components=6).fit(ind)
    binding = ModelBinding(model_class="pkg.mod:Model", layer="net.drop_block1", checkpoint_sha256=SHA, mc_samples=10)
    return DetectorArtefact(detector=det, pca=pca, threshold=float(det.threshold_), binding=binding,
                            preprocessing=Preprocessing(height=64, width=128), metrics={"auroc": 0.9})


@pytest.mark.parametrize("name", ["kde_classifier", "one_class_kde", "mahalanobis", "ppca"])
def test_round_trip_gives_identical_scores(tmp_path: Path, name: str) -> None:
    art = _artefact(name)
    path = art.save(tmp_path / "a.safetensors")
    loaded = DetectorArtefact.load(path, expect_checkpoint_sha256=SHA, expect_layer="net.drop_block1")
    ind, ood = _features(1)
    x = np.vstack([ind, ood])
    np.testing.assert_array_equal(loaded.score_features(x), art.score_features(x))
    assert loaded.threshold == art.threshold
    assert loaded.binding == art.binding
    assert loaded.preprocessing == art.preprocessing
    assert loaded.metrics == {"auroc": 0.9}
    assert "numpy" in loaded.info["package_versions"]


def test_score_features_rejects_wrong_width() -> None:
    with pytest.raises(InputValidationError, match=r"expects \(N, 24\)"):
        _artefact().score_features(np.zeros((3, 23)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="not found.*lsea-calibrate"):
        DetectorArtefact.load(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path: Path) -> None:
    path = _artefact().save(tmp_path / "a.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtefactError, match="truncated, corrupted or not a safetensors"):
        DetectorArtefact.load(path)


def test_tampered_array_fails_integrity_check(tmp_path: Path) -> None:
    path = _artefact().save(tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="integrity check"):
        DetectorArtefact.load(path)


def test_tampered_threshold_in_manifest_fails_integrity_check(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = _artefact().save(tmp_path / "a.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    meta["manifest"] = meta["manifest"].replace('"threshold": ', '"threshold": 1e9, "x": ')
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ArtefactError, match="integrity check"):
        DetectorArtefact.load(path)


def test_crafted_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ArtefactError, match="pickles are never loaded"):
        DetectorArtefact.load(path)
    assert not marker.exists()


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = _artefact().save(tmp_path / "a.safetensors")
    with pytest.raises(ArtefactError, match="over the 100-byte limit"):
        DetectorArtefact.load(path, max_bytes=100)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(ArtefactError, match="without an LSEA manifest"):
        DetectorArtefact.load(path)


def test_other_checkpoint_or_layer_is_a_mismatch(tmp_path: Path) -> None:
    path = _artefact().save(tmp_path / "a.safetensors")
    with pytest.raises(ArtefactError, match="calibrated with checkpoint sha256 abababababab.*Re-run lsea-calibrate"):
        DetectorArtefact.load(path, expect_checkpoint_sha256="cd" * 32)
    with pytest.raises(ArtefactError, match="calibrated on layer 'net.drop_block1'.*'net.other'"):
        DetectorArtefact.load(path, expect_layer="net.other")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    _artefact().save(tmp_path / "a.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_common_mc_seed_round_trips_and_defaults_to_none(tmp_path: Path) -> None:
    """``binding.mc_seed`` (calibration's common MC seed) survives save/load; an artefact without one
    loads with None (each frame then seeded from its stamp)."""
    from dataclasses import replace

    art = _artefact()
    assert art.binding.mc_seed is None
    assert DetectorArtefact.load(art.save(tmp_path / "none.safetensors")).binding.mc_seed is None
    seeded = replace(art, binding=replace(art.binding, mc_seed=1234))
    assert DetectorArtefact.load(seeded.save(tmp_path / "seeded.safetensors")).binding.mc_seed == 1234


def _resigned(path: Path, out: Path, edit) -> Path:
    """A copy of a saved artefact whose manifest JSON is ``edit(manifest)`` (a JSON string or object),
    re-signed: its content digest recomputed as an attacker or a buggy tool could, so the integrity
    check passes and the manifest's own checks are what is tested."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from lsea_monitor.artefact import _content_digest

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    arrays = load_file(str(path))
    manifest = edit(json.loads(meta["manifest"]))
    manifest_json = manifest if isinstance(manifest, str) else json.dumps(manifest, allow_nan=True)
    save_file(arrays, str(out), metadata={"format": meta["format"], "manifest": manifest_json,
                                          "content_sha256": _content_digest(manifest_json, arrays)})
    return out


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf"), "0.5", True, None])
def test_non_finite_threshold_is_refused_at_load(tmp_path: Path, threshold) -> None:
    """``score > nan`` is always False: a NaN threshold would never flag a frame (fail-open)."""
    path = _artefact().save(tmp_path / "a.safetensors")
    bad = _resigned(path, tmp_path / "bad.safetensors", lambda m: {**m, "threshold": threshold})
    with pytest.raises(ArtefactError, match="not a finite number.*Re-run lsea-calibrate"):
        DetectorArtefact.load(bad)
    assert DetectorArtefact.load(_resigned(path, tmp_path / "ok.safetensors", lambda m: m)).threshold == \
        _artefact().threshold  # the re-signing itself is sound


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -float("inf"), "1.0", True])
def test_non_finite_threshold_is_refused_at_construction(threshold) -> None:
    from dataclasses import replace

    art = _artefact()
    with pytest.raises(InputValidationError, match="threshold must be a finite number.*Re-run lsea-calibrate"):
        art.with_threshold(threshold)
    with pytest.raises(InputValidationError, match="threshold must be a finite number"):
        replace(art, threshold=threshold)
    assert art.with_threshold(3).threshold == 3.0


@pytest.mark.parametrize("edit, message", [
    (lambda m: "[]", "malformed manifest: a JSON list, not an object"),
    (lambda m: "7", "malformed manifest: a JSON int, not an object"),
    (lambda m: {k: v for k, v in m.items() if k != "binding"}, r"lacks \['binding'\]"),
    (lambda m: {k: v for k, v in m.items() if k not in ("threshold", "pca")}, r"lacks \['pca', 'threshold'\]"),
    (lambda m: {**m, "binding": "pkg.mod:Model"}, "'binding' is a str, not an object"),
    (lambda m: {**m, "detector": ["kde_classifier"]}, "'detector' is a list, not an object"),
    (lambda m: {**m, "preprocessing": None}, "'preprocessing' is a NoneType, not an object"),
    (lambda m: {**m, "binding": {**m["binding"], "checkpoint_sha256": 5}}, "checkpoint_sha256 must be a string"),
    (lambda m: {**m, "binding": {**m["binding"], "mc_samples": "10"}}, "mc_samples must be an integer"),
    (lambda m: {**m, "binding": {**m["binding"], "mc_seed": -1}}, "mc_seed must be an integer >= 0 or None"),
    (lambda m: {**m, "binding": {**m["binding"], "extra": 1}}, "inconsistent"),
    (lambda m: {**m, "detector": {**m["detector"], "name": ["x"]}}, "unknown detector"),
    (lambda m: {**m, "preprocessing": {**m["preprocessing"], "mean": 3}}, "inconsistent"),
    (lambda m: {**m, "metrics": [1]}, "metrics must be a dict"),
])
def test_malformed_manifest_is_an_artefact_error(tmp_path: Path, edit, message: str) -> None:
    path = _artefact().save(tmp_path / "a.safetensors")
    bad = _resigned(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ArtefactError, match=message):
        DetectorArtefact.load(bad, expect_checkpoint_sha256="cd" * 32, expect_layer="net.drop_block1")
