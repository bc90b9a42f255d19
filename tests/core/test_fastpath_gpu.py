"""The per-frame fast path on a CUDA GPU: no host synchronisation before the verdict (CUDA's sync
debug mode), device scoring == host scoring, per-frame seeds in batches, bf16 AUROC, pinned
staging, torch.compile and CUDA graphs. Skipped, with the reason, where no CUDA GPU is present;
test_fastpath.py checks the same logic on the CPU."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from lsea_monitor.metrics import ood_metrics
from lsea_monitor.pipeline import FrameScorer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]


def _scorer(mf: Any, **kw: Any) -> FrameScorer:
    return FrameScorer.from_files(checkpoint=str(mf.checkpoint), model_class=mf.model_class, layer=mf.layer,
                                  artefact=str(mf.artefact), device="cuda", **kw)


def test_auto_scoring_is_on_the_device(monitor_files: Any) -> None:
    s = _scorer(monitor_files)
    assert s.scoring == "device" and s._staging is not None


def test_no_host_sync_before_the_verdict(monitor_files: Any, frames: list[np.ndarray]) -> None:
    s = _scorer(monitor_files)
    s.warmup(batch_sizes=(1, 2))  # first-call copies (constants, PCA and detector arrays) happen here
    resized = [s.preprocessing.resize(f) for f in frames[:2]]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = s._upload(resized)
        samples = s.extractor.samples(x, seeds=[1, 2])
        h_z, finite = s.extractor.entropy_device(samples)
        scores = s.artefact.score_features_torch(h_z)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert scores.device.type == "cuda" and bool(finite.all())
    # the whole call: exactly one synchronising read-back (the verdict)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = s.score_images(frames[:2], seeds=[3, 4])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert all(r.valid for r in out)


def test_device_scoring_equals_host_scoring_on_the_gpu(monitor_files: Any, frames: list[np.ndarray]) -> None:
    dev, host = _scorer(monitor_files), _scorer(monitor_files, scoring="host")
    host.extractor.model.load_state_dict(dev.extractor.model.state_dict())
    seeds = list(range(len(frames)))
    a, b = host.score_images(frames, seeds=seeds), dev.score_images(frames, seeds=seeds)
    np.testing.assert_allclose([r.score for r in b], [r.score for r in a], rtol=1e-7, atol=1e-9)


def test_gpu_scores_are_close_to_cpu_scores(monitor_files: Any, frames: list[np.ndarray]) -> None:
    """Same seeds, same draws (per-image generators seeded alike); TF32 convolutions round differently."""
    gpu = _scorer(monitor_files)
    cpu = FrameScorer.from_files(checkpoint=str(monitor_files.checkpoint), model_class=monitor_files.model_class,
                                 layer=monitor_files.layer, artefact=str(monitor_files.artefact), device="cpu")
    seeds = list(range(len(frames)))
    a, b = gpu.score_images(frames, seeds=seeds), cpu.score_images(frames, seeds=seeds)
    assert all(r.valid for r in a)
    np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=0.05, atol=0.05)


def test_per_frame_seeds_on_the_gpu(monitor_files: Any, frames: list[np.ndarray]) -> None:
    s = _scorer(monitor_files)
    seeds = [11, 22, 33]
    single = [s.score_images([f], seed=sd)[0].score for f, sd in zip(frames[:3], seeds)]
    batched = [r.score for r in s.score_images(frames[:3], seeds=seeds)]
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-6)  # batched convolutions may round differently
    assert s.score_images(frames[:1], seeds=[11])[0].score == single[0]


def test_reduced_precision_keeps_the_auroc_of_the_calibration_set_on_the_gpu(monitor_files: Any) -> None:
    """The real fp16/bf16 autocast (the CPU test emulates it where the CPU lacks bf16); bounds as there."""
    from offline_calibration.cityscapes import CityscapesDataset

    from test_fastpath import AUROC_TARGET, BF16_AUROC_BOUND

    kinds = ("fog", "mud", "sunflare")
    scorers = {p: _scorer(monitor_files, precision=p) for p in ("fp32", "bf16", "fp16")}
    pp = scorers["fp32"].preprocessing
    images, labels = [], []
    for split in ("val", "test"):
        ind = CityscapesDataset(monitor_files.data_root, split, pp, return_labels=False)
        bad = {k: CityscapesDataset(monitor_files.data_root, split, pp, anomaly=k, return_labels=False) for k in kinds}
        images += [ind.rgb(i) for i in range(len(ind))] + [bad[kinds[i % 3]].rgb(i) for i in range(len(ind))]
        labels += [0] * len(ind) + [1] * len(ind)
    seeds = list(range(len(images)))
    scores = {name: np.array([r.score for r in s.score_images(images, seeds=seeds)]) for name, s in scorers.items()}
    y = np.asarray(labels)
    auroc = {k: ood_metrics(v, y)["auroc"] for k, v in scores.items()}
    for name in ("bf16", "fp16"):
        print(f"\nGPU {name}: AUROC {auroc[name]:.4f} vs fp32 {auroc['fp32']:.4f}, max |score diff| "
              f"{np.abs(scores[name] - scores['fp32']).max():.3g}")
    assert abs(auroc["fp16"] - auroc["fp32"]) <= AUROC_TARGET
    assert abs(auroc["bf16"] - auroc["fp32"]) <= BF16_AUROC_BOUND


def test_pinned_staging_reuses_its_buffer_and_copies_right() -> None:
    from lsea_monitor.accel import PinnedStaging

    st = PinnedStaging()
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (8, 16, 3), dtype=np.uint8) for _ in range(2)]
    b = [rng.integers(0, 256, (8, 16, 3), dtype=np.uint8) for _ in range(2)]
    ga = st.upload(a, torch.device("cuda"))
    buf = st._buffers[(2, 8, 16, 3)][0]
    assert buf.is_pinned()
    gb = st.upload(b, torch.device("cuda"))
    assert st._buffers[(2, 8, 16, 3)][0].data_ptr() == buf.data_ptr()
    assert np.array_equal(ga.cpu().numpy(), np.stack(a)) and np.array_equal(gb.cpu().numpy(), np.stack(b))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_scorer_scores_like_eager(monitor_files: Any, frames: list[np.ndarray], mode: str) -> None:
    eager, compiled = _scorer(monitor_files), _scorer(monitor_files, compile_mode=mode)
    assert "deeplab_v3plus_model.encoder" in compiled.extractor.compiled
    compiled.warmup(batch_sizes=(1, 2))
    seeds = [5, 6]
    a, b = eager.score_images(frames[:2], seeds=seeds), compiled.score_images(frames[:2], seeds=seeds)
    np.testing.assert_allclose([r.score for r in b], [r.score for r in a], rtol=1e-3, atol=1e-4)
    assert compiled.score_images(frames[2:3], seeds=[7])[0].valid  # and again (CUDA graph replay)
