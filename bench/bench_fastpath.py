"""Benchmark sections of the per-frame fast path, measurable on a CPU.

``frame_path``
    Per-frame latency of :class:`~lsea_monitor.pipeline.FrameScorer` (uint8 frame -> score):
    host scoring (numpy/scikit-learn, the CPU default) vs device scoring (the GPU path, here on
    CPU tensors) vs channels_last; and the part after the MC samples alone (entropy, PCA,
    detector) for both paths.
``compile``
    ``torch.compile`` of the deterministic parts vs eager, latent sampling of a small model
    (compiling a ResNet-50 on 2 CPU cores takes minutes), with the compile time.
``multi_camera``
    Four cameras' frames in one batched call (per-frame seeds) vs four single-frame calls.

The GPU figures come from ``bench/gpu_bench.py`` (section ``gpu``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _scorer(encoder: str, hw: tuple[int, int], m: int, **kw: Any) -> Any:
    import torch

    from bench.gpu_bench import build_model, synthetic_artefact
    from lsea_monitor.pipeline import FrameScorer

    model = build_model(encoder, block_size=3 if hw[0] < 128 else 7)
    art = synthetic_artefact(model.net.encoder.out_channels[-1], m, *hw, n_train=400)
    return FrameScorer(model, art, device=torch.device("cpu"), **kw)


def _frames(hw: tuple[int, int], n: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def bench_frame_path(ctx: Any) -> dict[str, Any]:
    """FrameScorer per-frame latency on the CPU: host vs device scoring vs channels_last; post-sampling part."""
    import numpy as np
    import torch

    encoder, hw, m = ("resnet18", (64, 128), 8) if ctx.quick else ("resnet50", (256, 512), 16)
    host = _scorer(encoder, hw, m, scoring="host")
    model = host.extractor.model
    device = type(host)(model, host.artefact, device=torch.device("cpu"), scoring="device")
    cl_model = _scorer(encoder, hw, m).extractor.model
    cl_model.load_state_dict(model.state_dict())
    chl = type(host)(cl_model, host.artefact, device=torch.device("cpu"), channels_last=True)
    (frame,) = _frames(hw, 1)
    seeds = iter(range(10**9))
    cases = {"host": lambda: host.score_images([frame], seed=next(seeds)),
             "device_on_cpu": lambda: device.score_images([frame], seed=next(seeds)),
             "channels_last": lambda: chl.score_images([frame], seed=next(seeds))}
    t = ctx.time_interleaved(cases, repeats=3 if ctx.quick else 7, warmup=1)
    a, b = host.score_images([frame], seed=5)[0].score, device.score_images([frame], seed=5)[0].score
    # the part after the samples: entropy + PCA + detector, on (1, M, C) samples
    samples = host.extractor.samples(host.preprocessing.batch([frame]), seeds=[1])

    def host_tail() -> Any:
        h_z, _ = host.extractor.entropy(samples)
        return host.artefact.score_features(h_z)

    def device_tail() -> Any:
        h_z, finite = device.extractor.entropy_device(samples)
        return device.artefact.score_features_torch(h_z).cpu()

    tail = ctx.time_interleaved({"host_tail": host_tail, "device_tail_on_cpu": device_tail},
                                repeats=10 if ctx.quick else 30, warmup=2)
    rows = [{"variant": k, "median_ms": 1e3 * v["median_s"], "min_ms": 1e3 * v["min_s"]} for k, v in t.items()]
    rows += [{"variant": k, "median_ms": 1e3 * v["median_s"], "min_ms": 1e3 * v["min_s"]} for k, v in tail.items()]
    native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return {
        "encoder": encoder, "input_hw": list(hw), "mc_samples": m, "threads": torch.get_num_threads(),
        "table": rows,
        "checks": [{"check": "device scoring == host scoring (|diff|)", "value": abs(a - b), "target": "<= 1e-9",
                    "ok": bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))}],
        "bf16_on_this_cpu": "native" if native_bf16 else
        "no native bf16 (no AVX512-BF16/AMX): torch uses reference convolutions, ~25x slower than fp32; "
        "bf16 is for GPUs", "timings": {**t, **tail},
    }


def bench_compile(ctx: Any) -> dict[str, Any]:
    """torch.compile (inductor) of the deterministic parts vs eager: latent sampling of a ResNet-18 DeepLabV3+."""
    import copy

    import torch

    from bench.gpu_bench import build_model
    from lsea_monitor.pipeline import LatentFeatureExtractor

    hw, m = ((64, 128), 8) if ctx.quick else ((128, 256), 16)
    model = build_model("resnet18", block_size=3)
    eager = LatentFeatureExtractor(model, "net.drop_block1", m)
    compiled = LatentFeatureExtractor(copy.deepcopy(model), "net.drop_block1", m, compile_mode="default")
    x = torch.randn(1, 3, *hw)
    t0 = time.perf_counter()
    try:
        compiled.samples(x, seeds=[0])
    except Exception as err:  # e.g. no C compiler for inductor
        return {"error": f"torch.compile failed: {type(err).__name__}: {err}"}
    compile_s = time.perf_counter() - t0
    diff = float((compiled.samples(x, seeds=[1]) - eager.samples(x, seeds=[1])).abs().max())
    t = ctx.time_interleaved({"eager": lambda: eager.samples(x), "compiled": lambda: compiled.samples(x)},
                             repeats=5 if ctx.quick else 10, warmup=1)
    ratio = t["compiled"]["median_s"] / t["eager"]["median_s"]
    return {
        "encoder": "resnet18", "input_hw": list(hw), "mc_samples": m, "compiled_modules": compiled.compiled,
        "compile_s": compile_s,
        "table": [{"eager_ms": 1e3 * t["eager"]["median_s"], "compiled_ms": 1e3 * t["compiled"]["median_s"],
                   "compiled/eager": ratio, "compile_s": compile_s, "max_abs_diff": diff}],
        "checks": [{"check": "compiled samples == eager samples", "value": diff, "target": "<= 1e-4",
                    "ok": diff <= 1e-4}],
        "note": "CPU figures; compile is meant for GPUs (fewer kernel launches, CUDA graphs with "
                "mode reduce-overhead), measured by bench/gpu_bench.py",
        "timings": t,
    }


def bench_multi_camera(ctx: Any) -> dict[str, Any]:
    """Four cameras: one batched call with per-frame seeds vs four single-frame calls."""
    import numpy as np

    hw, m, k = ((64, 128), 8, 4) if ctx.quick else ((128, 256), 8, 4)
    s = _scorer("resnet18", hw, m)
    frames = _frames(hw, k)
    base = iter(range(0, 10**9, k))

    def batched() -> Any:
        b = next(base)
        return s.score_images(frames, seeds=list(range(b, b + k)))

    def single() -> Any:
        b = next(base)
        return [s.score_images([f], seed=b + i)[0] for i, f in enumerate(frames)]

    t = ctx.time_interleaved({"batched": batched, "single_calls": single}, repeats=3 if ctx.quick else 7, warmup=1)
    a = [r.score for r in s.score_images(frames, seeds=[1, 2, 3, 4])]
    b = [s.score_images([f], seed=i + 1)[0].score for i, f in enumerate(frames)]
    speedup = t["single_calls"]["median_s"] / t["batched"]["median_s"]
    return {
        "encoder": "resnet18", "input_hw": list(hw), "mc_samples": m, "cameras": k,
        "table": [{"batched_ms": 1e3 * t["batched"]["median_s"], "single_calls_ms": 1e3 * t["single_calls"]["median_s"],
                   "single/batched": speedup}],
        "checks": [{"check": "batched scores == single-frame scores (max rel diff)",
                    "value": float(np.max(np.abs(np.subtract(a, b)) / np.maximum(np.abs(b), 1e-12))),
                    "target": "<= 1e-5 (batched convolutions round differently)",
                    "ok": bool(np.allclose(a, b, rtol=1e-5, atol=1e-12))}],
        "timings": t,
    }


SECTIONS = {"frame_path": bench_frame_path, "compile": bench_compile, "multi_camera": bench_multi_camera}
