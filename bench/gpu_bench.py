"""GPU benchmark of the monitor's per-frame path: ``python bench/gpu_bench.py --out bench/results_gpu.json``.

Per-frame latency (p50/p99) of :class:`~lsea_monitor.pipeline.FrameScorer` on a CUDA GPU, from
``uint8`` camera frames in host memory to the verdict score back on the host (pinned upload,
normalisation, MC latent samples, entropies, PCA and detector on the device, one read-back):

* DeepLabV3+ with a ResNet-50 and a ResNet-101 encoder (untrained weights: the timings do not
  depend on them), ``drop_block1`` hooked, a synthetic artefact of calibration size;
* 256 x 512 and 483 x 640 frames (483 is not a multiple of 32: the model wrapper pads to 512 x 640,
  as a WoodScape model must; the padding is part of the timing);
* M = 16 and 32; fp32, bf16 (and one fp16 case); fast vs naive sampler; one camera vs a batch of
  four (one frame per camera, per-frame seeds); ``torch.compile`` off/on (and CUDA graphs through
  mode "reduce-overhead"); channels_last;
* one deterministic full forward pass of the same model for the target "fast sampler at M = 32
  costs <= 1.1x one forward pass" (sampler alone vs forward alone, both synchronised).

Cases run in priority order (the targets first) under a global time budget (``--budget-s``,
default 270 s, so that the whole script stays under 5 minutes on an H200); cases left when it
runs out are listed as skipped. ``--quick`` runs tiny sizes (ResNet-18, 64 x 128 and 97 x 128,
M = 4 and 8) on whatever device is there, the CPU included, in well under a minute: a smoke test
of the script, not figures. Results: a JSON file (``--out``) with the machine, every case and the
target checks; a table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see run_bench.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAYER = "net.drop_block1"
TARGET_RATIO = 1.1  # fast M=32 vs one deterministic forward
TARGET_FPS = 200.0  # per camera, 256x512, ResNet-101, M=16, bf16, H200
TARGET_P99_MS = 10.0
COMPILE_RESERVE_S = 90.0  # a compiled case starts only with this much budget left (compilation takes tens of s)


# --------------------------------------------------------------------------------------------
# Model, artefact, frames
# --------------------------------------------------------------------------------------------
class Pad32(nn.Module):
    """Zero-pads the input to multiples of 32 (DeepLabV3+ needs them), then runs ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = (-x.shape[-2]) % 32, (-x.shape[-1]) % 32
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.net(x)


def build_model(encoder: str, block_size: int) -> nn.Module:
    from offline_calibration.deeplab import DeepLabV3PlusDropBlock

    torch.manual_seed(0)
    return Pad32(DeepLabV3PlusDropBlock(encoder, classes=20, block_size=block_size)).eval()


@functools.lru_cache(maxsize=16)
def synthetic_artefact(n_features: int, mc_samples: int, height: int, width: int, *, n_train: int = 1000,
                       pca_components: int = 16) -> Any:
    """A KDEClassifier artefact of calibration size (PCA 16, bandwidth 0.8) on random features.

    The scores mean nothing; the cost of scoring (a PCA projection and two kernel densities over
    ``n_train`` rows) is that of a real artefact.
    """
    from lsea_monitor.artefact import DetectorArtefact, ModelBinding
    from lsea_monitor.dataset import LatentPCA
    from lsea_monitor.detectors import KDEClassifier
    from lsea_monitor.preprocessing import Preprocessing

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(n_train // 2, np.int64), np.ones(n_train - n_train // 2, np.int64)]
    x = rng.normal(size=(n_train, n_features)) + 0.5 * y[:, None]
    pca = LatentPCA(n_components=pca_components).fit(x)
    detector = KDEClassifier(bandwidth=0.8).fit(pca.transform(x), y)
    binding = ModelBinding(model_class="bench.gpu_bench:Pad32", layer=LAYER, checkpoint_sha256="0" * 64,
                           mc_samples=mc_samples)
    return DetectorArtefact(detector=detector, pca=pca, threshold=0.5, binding=binding,
                            preprocessing=Preprocessing(height, width))


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One measurement. ``kind``: monitor (whole FrameScorer path), sampler (latent samples only),
    forward (one deterministic full forward pass)."""

    kind: str
    encoder: str
    hw: tuple[int, int]
    precision: str
    mc_samples: int = 0
    sampler: str = "fast"
    cameras: int = 1
    compile_mode: str | None = None
    channels_last: bool = False
    priority: int = 1

    @property
    def name(self) -> str:
        parts = [self.kind, self.encoder, f"{self.hw[0]}x{self.hw[1]}", self.precision]
        if self.kind != "forward":
            parts += [f"M{self.mc_samples}", self.sampler]
        parts += [f"cams{self.cameras}"]
        if self.compile_mode:
            parts.append(f"compile={self.compile_mode}")
        if self.channels_last:
            parts.append("channels_last")
        return " ".join(parts)


@dataclass(frozen=True)
class Sizes:
    encoders: tuple[str, ...]
    target_encoder: str
    other_encoder: str
    hws: tuple[tuple[int, int], ...]
    ms: tuple[int, int]  # the "M = 16" and "M = 32" of this run
    block_size: int
    cameras: int
    min_iters: int
    max_iters: int
    case_budget_s: float
    warmup: int
    grid_precisions: tuple[str, ...] = ("fp32", "bf16")  # beyond the priority-1 cases




FULL = Sizes(encoders=("resnet101", "resnet50"), target_encoder="resnet101", other_encoder="resnet50",
             hws=((256, 512), (483, 640)), ms=(16, 32), block_size=12, cameras=4, min_iters=10, max_iters=300,
             case_budget_s=1.5, warmup=5)
# bf16 only in the priority-1 cases: a CPU without native bf16 (no AVX512-BF16/AMX) runs reference
# convolutions for it, ~25x slower than fp32, and the smoke test must stay under a minute.
QUICK = Sizes(encoders=("resnet18",), target_encoder="resnet18", other_encoder="resnet18",
              hws=((64, 128), (97, 128)), ms=(4, 8), block_size=3, cameras=2, min_iters=2, max_iters=3,
              case_budget_s=0.5, warmup=1, grid_precisions=("fp32",))


def build_cases(sz: Sizes, with_compile: bool) -> list[Case]:
    """Every case, in priority order (1 = the targets)."""
    big, small_hw, large_hw = sz.target_encoder, sz.hws[0], sz.hws[1]
    m16, m32 = sz.ms
    precs, low = sz.grid_precisions, sz.grid_precisions[-1]  # low: the reduced precision of the grid
    cases: list[Case] = []
    add = cases.append
    # 1. targets: forward vs fast M=32 (ratio), monitor M=16 bf16 (fps, p99), compiled
    for prec in ("fp32", "bf16"):
        add(Case("forward", big, small_hw, prec, priority=1))
        add(Case("sampler", big, small_hw, prec, m32, priority=1))
    add(Case("monitor", big, small_hw, "bf16", m16, priority=1))
    if with_compile:
        add(Case("monitor", big, small_hw, "bf16", m16, compile_mode="default", priority=1))
    # 2. the grid: encoders x sizes x M x precision, fast, one camera; forward and sampler for each
    for enc in sz.encoders:
        for hw in sz.hws:
            for prec in precs:
                add(Case("forward", enc, hw, prec, priority=2))
                add(Case("sampler", enc, hw, prec, m32, priority=2))
                for m in (m16, m32):
                    add(Case("monitor", enc, hw, prec, m, priority=2))
    if "bf16" in precs:
        add(Case("monitor", big, small_hw, "fp16", m16, priority=2))
    add(Case("monitor", big, small_hw, low, m16, channels_last=True, priority=2))
    # 3. naive sampler (the original's M passes, batched)
    for prec in precs:
        for m in (m16, m32):
            add(Case("monitor", big, small_hw, prec, m, sampler="naive", priority=3))
    add(Case("sampler", big, small_hw, low, m32, sampler="naive", priority=3))
    # 4. several cameras, one batched pass
    for enc in sz.encoders:
        for hw in sz.hws:
            add(Case("monitor", enc, hw, low, m16, cameras=sz.cameras, priority=4))
    add(Case("monitor", big, small_hw, low, m32, cameras=sz.cameras, priority=4))
    add(Case("forward", big, small_hw, low, cameras=sz.cameras, priority=4))
    # 5. more compiled variants (each compilation costs tens of seconds)
    if with_compile:
        add(Case("monitor", big, small_hw, low, m16, compile_mode="reduce-overhead", priority=5))
        add(Case("monitor", big, small_hw, low, m16, cameras=sz.cameras, compile_mode="default", priority=5))
        add(Case("monitor", big, large_hw, low, m16, compile_mode="default", priority=5))
    seen, unique = set(), []
    for c in cases:  # an encoder list of one (quick) repeats cases
        if c.name not in seen:
            seen.add(c.name)
            unique.append(c)
    return unique


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


@dataclass
class Bench:
    device: torch.device
    sz: Sizes
    models: dict[tuple[str, int], nn.Module] = field(default_factory=dict)

    def model(self, encoder: str) -> nn.Module:
        key = (encoder, self.sz.block_size)
        if key not in self.models:
            self.models[key] = build_model(encoder, self.sz.block_size).to(self.device)
        return self.models[key]

    def run_case(self, case: Case) -> dict[str, Any]:
        """Warm up, then time the case's call ``min_iters``..``max_iters`` times within its budget."""
        from lsea_monitor.pipeline import PRECISIONS, FrameScorer

        h, w = case.hw
        model = self.model(case.encoder)
        if case.compile_mode or case.channels_last:
            model = copy.deepcopy(model)  # both change the module in place
        rng = np.random.default_rng(1)
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(case.cameras)]
        counter = iter(range(10**9))
        if case.kind == "forward":
            x = torch.randn(case.cameras, 3, h, w, device=self.device)
            autocast = (torch.autocast(self.device.type, dtype=PRECISIONS[case.precision])
                        if case.precision != "fp32" else None)

            def call() -> None:
                with torch.inference_mode():
                    if autocast is None:
                        model(x)
                    else:
                        with autocast:
                            model(x)
                _sync(self.device)
        else:
            n_features = model.net.encoder.out_channels[-1]
            art = synthetic_artefact(n_features, case.mc_samples, h, w)
            scorer = FrameScorer(model, art, device=self.device, precision=case.precision, strategy=case.sampler,
                                 channels_last=case.channels_last, compile_mode=case.compile_mode)
            if case.kind == "sampler":
                x = scorer.preprocessing.batch(frames).to(self.device)

                def call() -> None:
                    scorer.extractor.samples(x)
                    _sync(self.device)
            else:
                def call() -> None:
                    base = next(counter) * case.cameras
                    scorer.score_images(frames, seeds=[base + c for c in range(case.cameras)])
                    _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.sz.warmup):
            call()
        warmup_s = time.perf_counter() - t0
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < self.sz.max_iters and (
                len(times) < self.sz.min_iters or time.perf_counter() - started < self.sz.case_budget_s):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        ms = [1e3 * t for t in times]
        p50 = percentile(ms, 50)
        row: dict[str, Any] = {**asdict(case), "hw": list(case.hw), "name": case.name, "iters": len(ms),
                               "p50_ms": p50, "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms),
                               "min_ms": min(ms), "warmup_s": warmup_s}
        if case.kind == "monitor":
            row["fps_per_camera"] = 1e3 / p50  # each call judges one frame of every camera
            row["frames_per_s"] = case.cameras * 1e3 / p50
            if scorer.extractor.sampler.strategy_used_ != case.sampler:
                row["note"] = f"sampler fell back: {scorer.extractor.sampler.fallback_reason_}"
            row["scoring"] = scorer.scoring
            row["compiled_modules"] = len(scorer.extractor.compiled)
        if self.device.type == "cuda":
            row["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return row


def checks(rows: list[dict[str, Any]], sz: Sizes, quick: bool) -> list[dict[str, Any]]:
    """The issue's targets, from the measured rows (absent cases give no check)."""
    by_name = {r["name"]: r for r in rows if "p50_ms" in r}
    out = []
    m16, m32 = sz.ms
    for enc in sz.encoders:
        for hw in sz.hws:
            for prec in ("fp32", "bf16"):
                fwd = by_name.get(Case("forward", enc, hw, prec).name)
                smp = by_name.get(Case("sampler", enc, hw, prec, m32).name)
                if fwd and smp:
                    ratio = smp["p50_ms"] / fwd["p50_ms"]
                    out.append({"check": f"fast M={m32} / one forward, {enc} {hw[0]}x{hw[1]} {prec}",
                                "value": ratio, "target": f"<= {TARGET_RATIO}", "ok": ratio <= TARGET_RATIO})
    hw = sz.hws[0]
    want = {"kind": "monitor", "encoder": sz.target_encoder, "mc_samples": m16, "precision": "bf16",
            "sampler": "fast", "cameras": 1}
    candidates = [r for r in rows if "p50_ms" in r and all(r.get(k) == v for k, v in want.items())
                  and tuple(r.get("hw", ())) == hw]
    if candidates:
        best = min(candidates, key=lambda r: r["p99_ms"])
        label = f"{sz.target_encoder} {hw[0]}x{hw[1]} M={m16} bf16 ({best['name']})"
        out.append({"check": f"frames/s per camera, {label}", "value": best["fps_per_camera"],
                    "target": f">= {TARGET_FPS:g} (H200)", "ok": best["fps_per_camera"] >= TARGET_FPS})
        out.append({"check": f"monitor p99 ms, {label}", "value": best["p99_ms"],
                    "target": f"<= {TARGET_P99_MS:g} (H200)", "ok": best["p99_ms"] <= TARGET_P99_MS})
    if quick:
        for c in out:
            c["ok"] = None  # tiny sizes: not comparable to the targets
            c["target"] += " (not applicable to --quick)"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({
            "gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        })
    return info


def run(*, quick: bool, device: str = "auto", budget_s: float = 270.0, with_compile: bool | None = None,
        only_priority: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result (see the module docstring)."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    sz = QUICK if quick else FULL
    if with_compile is None:
        with_compile = not quick  # compiling on a CPU takes minutes: --quick leaves it out unless asked
    cases = build_cases(sz, with_compile)
    if only_priority is not None:
        cases = [c for c in cases if c.priority <= only_priority]
    bench = Bench(dev, sz)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    log(f"{len(cases)} cases on {dev} ({'quick' if quick else 'full'} sizes), budget {budget_s:.0f} s")
    for i, case in enumerate(cases):
        elapsed = time.perf_counter() - started
        if elapsed > budget_s or (case.compile_mode and not quick and elapsed > budget_s - COMPILE_RESERVE_S):
            rows.append({**asdict(case), "hw": list(case.hw), "name": case.name,
                         "skipped": f"time budget ({budget_s:.0f} s) used up"})
            continue
        try:
            row = bench.run_case(case)
        except Exception as err:  # one failing case must not lose the others
            row = {**asdict(case), "hw": list(case.hw), "name": case.name, "error": f"{type(err).__name__}: {err}"}
        rows.append(row)
        if "p50_ms" in row:
            extra = f"  {row['fps_per_camera']:.1f} fps/cam" if "fps_per_camera" in row else ""
            log(f"[{i + 1}/{len(cases)}] {case.name}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms "
                f"({row['iters']} iters, warm-up {row['warmup_s']:.1f} s){extra}")
        else:
            log(f"[{i + 1}/{len(cases)}] {case.name}: {row.get('error')}")
    result = {
        "machine": machine(), "device": str(dev), "quick": quick, "with_compile": with_compile,
        "budget_s": budget_s, "sizes": asdict(sz), "cases": rows, "checks": checks(rows, sz, quick),
        "skipped": [r["name"] for r in rows if "skipped" in r],
        "errors": {r["name"]: r["error"] for r in rows if "error" in r},
        "total_wall_s": time.perf_counter() - started,
    }
    return result


def print_summary(result: dict[str, Any]) -> None:
    cols = ("name", "p50_ms", "p99_ms", "fps_per_camera", "iters")
    print("\n" + "  ".join(f"{c:>12}" if c != "name" else f"{c:<62}" for c in cols))
    for r in result["cases"]:
        if "p50_ms" not in r:
            continue
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:<62}" if c == "name" else (f"{v:>12.3f}" if isinstance(v, float) else f"{v!s:>12}"))
        print("  ".join(cells))
    for c in result["checks"]:
        status = "n/a" if c["ok"] is None else ("ok" if c["ok"] else "MISSED")
        print(f"check: {c['check']}: {c['value']:.4g} (target {c['target']}) {status}")
    if result["skipped"]:
        print(f"skipped (budget): {len(result['skipped'])} cases")
    if result["errors"]:
        print(f"errors: {json.dumps(result['errors'], indent=1)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results_gpu.json", help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, any device (a smoke test, not figures)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cuda, cuda:N or cpu")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting cases after this many seconds")
    parser.add_argument("--compile", dest="with_compile", action="store_true", default=None,
                        help="include torch.compile cases (default: yes, except with --quick)")
    parser.add_argument("--no-compile", dest="with_compile", action="store_false", help="leave torch.compile out")
    parser.add_argument("--priority", type=int, default=None, help="only cases of this priority or more urgent (1-5)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    args = parser.parse_args(argv)
    if not args.quick and args.device in ("auto", "cpu") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU here. Run it on a GPU machine, or use --quick for a smoke test on the CPU.",
              file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    result = run(quick=args.quick, device=args.device, budget_s=args.budget_s, with_compile=args.with_compile,
                 only_priority=args.priority)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print_summary(result)
    print(f"\ntotal {result['total_wall_s']:.1f} s; results in {args.out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
