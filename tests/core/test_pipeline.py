"""FrameScorer on a real checkpoint and artefact: scoring, determinism, fail-closed paths, mismatches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lsea_monitor.artefact import DetectorArtefact
from lsea_monitor.errors import ArtefactError, ModelLoadError
from lsea_monitor.pipeline import FrameScorer, frame_seed


@pytest.fixture(scope="module")
def scorer(monitor_files) -> FrameScorer:
    fs = FrameScorer.from_files(checkpoint=str(monitor_files.checkpoint), model_class=monitor_files.model_class,
                                layer=monitor_files.layer, artefact=str(monitor_files.artefact), device="cpu")
    fs.warmup()
    return fs


@pytest.fixture(scope="module")
def frames(monitor_files) -> list[np.ndarray]:
    from offline_calibration.cityscapes import load_rgb

    return [load_rgb(p) for p in sorted((monitor_files.data_root / "leftImg8bit" / "test").rglob("*.png"))[:3]]


def test_scores_equal_the_artefact_applied_to_the_core_features(scorer: FrameScorer, frames: list[np.ndarray]) -> None:
    """Independent path: preprocessing -> extractor -> artefact.score_features, with the same seed."""
    results = scorer.score_images(frames, seed=7)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        h_z, finite = scorer.extractor.features(scorer.preprocessing.batch(frames))
    expected = scorer.artefact.score_features(h_z)
    assert finite.all()
    np.testing.assert_allclose([r.score for r in results], expected, rtol=0, atol=1e-12)
    assert [r.is_ood for r in results] == [bool(s > scorer.threshold) for s in expected]
    assert all(r.valid and r.reason == "" for r in results)


def test_seed_makes_scores_reproducible(scorer: FrameScorer, frames: list[np.ndarray]) -> None:
    a = scorer.score_images(frames[:1], seed=frame_seed(1_700_000_000_123_456_789))
    b = scorer.score_images(frames[:1], seed=frame_seed(1_700_000_000_123_456_789))
    c = scorer.score_images(frames[:1], seed=frame_seed(1_700_000_000_123_456_790))
    assert a == b
    assert a[0].score != c[0].score  # MC draws really depend on the seed


def test_bad_images_are_invalid_and_do_not_spoil_the_batch(scorer: FrameScorer, frames: list[np.ndarray]) -> None:
    out = scorer.score_images([np.zeros((0, 4, 3), np.uint8), frames[0], np.zeros((5, 5), np.float32)], seed=1)
    assert [r.valid for r in out] == [False, True, False]
    assert "zero size" in out[0].reason and "RGB uint8" in out[2].reason
    assert out[0].is_ood and np.isnan(out[0].score)  # fail closed
    assert out[1] == scorer.score_images([frames[0]], seed=1)[0]


def test_nan_latent_gives_invalid_verdict(scorer: FrameScorer, frames: list[np.ndarray]) -> None:
    handle = scorer.extractor.model.deeplab_v3plus_model.encoder.register_forward_hook(
        lambda m, i, o: [t * float("nan") for t in o])
    try:
        out = scorer.score_images(frames[:2])
    finally:
        handle.remove()
    assert [(r.valid, r.is_ood, r.reason) for r in out] == [(False, True, "non-finite latent samples")] * 2
    assert all(np.isnan(r.score) for r in out)


def test_model_exception_is_contained(scorer: FrameScorer, frames: list[np.ndarray]) -> None:
    def boom(*_):
        raise RuntimeError("CUDA error: device-side assert")

    handle = scorer.extractor.model.deeplab_v3plus_model.encoder.register_forward_hook(boom)
    try:
        out = scorer.score_images(frames[:1])
    finally:
        handle.remove()
    assert not out[0].valid and out[0].is_ood and "model error: RuntimeError: CUDA error" in out[0].reason
    assert scorer.score_images(frames[:1])[0].valid  # and the scorer keeps working


def _kw(mf, **over):
    kw = dict(checkpoint=str(mf.checkpoint), model_class=mf.model_class, layer=mf.layer, artefact=str(mf.artefact),
              device="cpu")
    kw.update(over)
    return kw


def test_missing_checkpoint_fails_fast(monitor_files, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="Checkpoint not found"):
        FrameScorer.from_files(**_kw(monitor_files, checkpoint=str(tmp_path / "none.ckpt")))


def test_other_checkpoint_is_a_mismatch(monitor_files, tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    shutil.copy(monitor_files.checkpoint, other)
    with other.open("ab") as f:
        f.write(b"\0")  # any other file: other hash
    with pytest.raises(ArtefactError, match="calibrated with checkpoint sha256"):
        FrameScorer.from_files(**_kw(monitor_files, checkpoint=str(other)))


@pytest.mark.parametrize("over, match", [
    ({"layer": "deeplab_v3plus_model.encoder"}, "calibrated on layer"),
    ({"model_class": "offline_calibration.model:Other"}, "calibrated for model class"),
    ({"mc_samples": 3}, "mc_samples=3 but the artefact was calibrated with M=8"),
    ({"device": "cuda:7" if torch.cuda.is_available() else "cuda"}, "CUDA|GPU"),
    ({"device": "tpu"}, "Unknown device|Unsupported device"),
])
def test_configuration_mismatches_fail_fast(monitor_files, over: dict, match: str) -> None:
    with pytest.raises((ArtefactError, ModelLoadError), match=match):
        FrameScorer.from_files(**_kw(monitor_files, **over))


def test_artefact_for_another_width_fails_at_warmup(monitor_files, tmp_path: Path) -> None:
    """An artefact whose feature count differs from the hooked layer's channels is caught before serving."""
    art = DetectorArtefact.load(monitor_files.artefact)
    fs = FrameScorer.from_files(**_kw(monitor_files))
    fs.extractor.sampler.layer = "x"  # keep the object; swap the hooked module for one with other channels
    from lsea_monitor.sampling import LatentMCSampler

    fs.extractor.sampler = LatentMCSampler(fs.extractor.model, "deeplab_v3plus_model.encoder.layer3",
                                           art.binding.mc_samples)
    with pytest.raises(ArtefactError, match="yields 256 channels but the artefact expects 512"):
        fs.warmup(iterations=1)
