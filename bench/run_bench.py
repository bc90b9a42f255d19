"""LSEA Monitor benchmark: ``python bench/run_bench.py --out bench/results.json [--quick] [--only NAME ...]``.

Sections are named functions ``f(ctx: BenchContext) -> dict`` in a registry. This file holds the
sampling and entropy sections; every ``bench/bench_*.py`` next to it is imported too and may add
its own through a module-level ``SECTIONS = {"name": function, ...}``.

A section's result is any JSON-able dict. Two keys are printed as tables when present:
``"table"`` (a list of row dicts) and ``"checks"`` (a list of ``{"check", "value", "target",
"ok"}``). Timings are measured side by side: the variants of a section run interleaved, one
repeat of each in turn (order rotated every repeat), so that a noisy shared machine slows them
alike; medians and ratios of medians are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a
# shared machine (other jobs on the same cores) spinning threads steal the cores that the
# working ones need; measured here, a 2-thread ResNet-50 pass went from ~1.7 s to ~0.6 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project from the tree
    sys.path.insert(0, str(ROOT))

SectionFn = Callable[["BenchContext"], dict[str, Any]]
SECTIONS: dict[str, SectionFn] = {}


def section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Register ``f`` as the section ``name`` of this file."""

    def register(fn: SectionFn) -> SectionFn:
        SECTIONS[name] = fn
        return fn

    return register


@dataclass
class BenchContext:
    """What a section gets: the run mode and a shared timing helper.

    Attributes
    ----------
    quick : bool
        Smoke-test sizes (seconds, not minutes); figures are then not comparable to targets.
    repeats : int
        Default number of timed repeats per variant.
    cache : dict
        Objects shared between sections of one run (e.g. a built model).
    """

    quick: bool = False
    repeats: int = 5
    cache: dict[str, Any] = field(default_factory=dict)

    def time_interleaved(
        self,
        cases: dict[str, Callable[[], Any]],
        repeats: int | None = None,
        warmup: int = 1,
        budget_s: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Time every case ``repeats`` times, interleaved, after ``warmup`` untimed runs each.

        Parameters
        ----------
        cases : dict of name -> callable
        repeats : int, optional
            Rounds (one timed call of every case each); default ``self.repeats``.
        warmup : int, default 1
            Untimed rounds first.
        budget_s : float, optional
            Stop starting new rounds once this many seconds have passed (at least one round
            runs), so that a slow machine shortens the run instead of overrunning it.

        Returns
        -------
        dict
            Per case: ``median_s``, ``min_s``, ``times_s`` (all repeats, seconds).
        """
        repeats = self.repeats if repeats is None else repeats
        names = list(cases)
        for _ in range(warmup):
            for name in names:
                cases[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        started = time.perf_counter()
        for r in range(repeats):
            if r and budget_s is not None and time.perf_counter() - started > budget_s:
                break
            # Rotate the order so that no case always follows the same one (cache, turbo, load).
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - t0)
        return {
            name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts}
            for name, ts in times.items()
        }


def machine_info() -> dict[str, Any]:
    """CPU, threads and library versions of this run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_1_5_15"] = os.getloadavg()
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------------------------
# Sampling sections
# --------------------------------------------------------------------------------------------
def _sampling_setup(ctx: BenchContext) -> dict[str, Any]:
    """The reference network, its input and the three samplers, built once per run."""
    if "sampling" in ctx.cache:
        return ctx.cache["sampling"]
    from offline_calibration.deeplab import DeepLabV3PlusDropBlock

    # ResNet-50 rather than the original's ResNet-101: the same architecture (bottleneck blocks,
    # 2048-channel stride-16 feature) at ~60 % of the cost, so that the naive M = 32 baseline fits
    # the time budget of a 2-core machine. The ratios do not depend on the depth much: both
    # strategies run the same encoder.
    encoder = "resnet18" if ctx.quick else "resnet50"
    height, width = (64, 128) if ctx.quick else (256, 512)
    torch.manual_seed(0)
    model = DeepLabV3PlusDropBlock(encoder, classes=20).eval()
    x = torch.randn(1, 3, height, width)
    with torch.inference_mode():
        model(x)  # first-call allocations and kernel selection, outside every timing
    setup = {"model": model, "x": x, "encoder": encoder, "input_hw": [height, width]}
    ctx.cache["sampling"] = setup
    return setup


def _original_loop(model: torch.nn.Module, x: torch.Tensor, m: int) -> torch.Tensor:
    """The original package: M full forward passes with dropout in train mode, output hook."""
    from lsea_monitor.hooks import Hook, enable_mc_dropout

    enable_mc_dropout(model)
    rows = []
    try:
        with Hook(model.drop_block1) as hook, torch.inference_mode():
            for _ in range(m):
                model(x)
                rows.append(torch.mean(torch.mean(hook.output, dim=2), dim=2))
    finally:
        model.eval()
    return torch.cat(rows)


@section("latent_sampling")
def bench_latent_sampling(ctx: BenchContext) -> dict[str, Any]:
    """Fast vs naive latent MC sampling (and the original's full passes), batch 1."""
    from lsea_monitor.sampling import LatentMCSampler

    setup = _sampling_setup(ctx)
    model, x = setup["model"], setup["x"]
    repeats = 1 if ctx.quick else 3
    rows, checks, raw = [], [], {}
    for m, target in ((10, 10.0), (32, 25.0)):
        fast = LatentMCSampler(model, "drop_block1", m, strategy="fast")
        naive = LatentMCSampler(model, "drop_block1", m, strategy="naive")
        cases = {"fast": lambda s=fast: s.sample(x), "naive": lambda s=naive: s.sample(x)}
        if m == 10:
            # The original runs the whole network M times; one M is enough to show it (M = 32
            # would double the section's time for a ratio that scales the same way).
            cases["original_full_passes"] = lambda m=m: _original_loop(model, x, m)
        # No warm-up round: the model is warm (setup), and a naive M = 32 round would cost as
        # much as a timed repeat.
        t = ctx.time_interleaved(cases, repeats=repeats, warmup=0, budget_s=60.0 if m == 10 else 90.0)
        if fast.strategy_used_ != "fast":
            raise RuntimeError(f"fast sampler fell back: {fast.fallback_reason_}")
        raw[f"M{m}"] = t
        speedup = t["naive"]["median_s"] / t["fast"]["median_s"]
        row = {"M": m, "fast_ms": 1e3 * t["fast"]["median_s"], "naive_ms": 1e3 * t["naive"]["median_s"],
               "naive/fast": speedup}
        if "original_full_passes" in t:
            row["original_ms"] = 1e3 * t["original_full_passes"]["median_s"]
            row["original/fast"] = t["original_full_passes"]["median_s"] / t["fast"]["median_s"]
        row["rounds"] = len(t["fast"]["times_s"])
        rows.append(row)
        checks.append({"check": f"naive/fast at M={m}", "value": speedup, "target": f">= {target:g}",
                       "ok": speedup >= target})
    return {"encoder": setup["encoder"], "input_hw": setup["input_hw"], "batch": 1,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "table": rows, "checks": checks, "timings": raw}


@section("fast_vs_forward")
def bench_fast_vs_forward(ctx: BenchContext) -> dict[str, Any]:
    """Fast sampling at M = 32 vs one plain deterministic forward pass of the whole network."""
    from lsea_monitor.sampling import LatentMCSampler

    setup = _sampling_setup(ctx)
    model, x = setup["model"], setup["x"]
    fast = LatentMCSampler(model, "drop_block1", 32, strategy="fast")

    def forward() -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model(x)

    repeats = 3 if ctx.quick else 7
    t = ctx.time_interleaved({"fast_M32": lambda: fast.sample(x), "full_forward": forward},
                             repeats=repeats, warmup=1)
    ratio = t["fast_M32"]["median_s"] / t["full_forward"]["median_s"]
    return {
        "encoder": setup["encoder"], "input_hw": setup["input_hw"], "batch": 1, "repeats": repeats,
        "table": [{"fast_M32_ms": 1e3 * t["fast_M32"]["median_s"],
                   "full_forward_ms": 1e3 * t["full_forward"]["median_s"], "fast/forward": ratio}],
        "checks": [{"check": "fast M=32 / one full forward", "value": ratio, "target": "<= 1.0",
                    "ok": ratio <= 1.0}],
        "timings": t,
    }


@section("entropy")
def bench_entropy(ctx: BenchContext) -> dict[str, Any]:
    """Vectorised per-dimension k-NN entropy vs the original per-column loop, (1, M, 2048)."""
    from lsea_monitor.entropy import entropy_per_dim, reference_entropy_loop

    rows, checks, raw = [], [], {}
    gen = torch.Generator().manual_seed(0)
    default_threads = torch.get_num_threads()
    # A (1, M, 2048) sort is far too small to gain from several threads; on a loaded machine the
    # OpenMP team of a multi-threaded run mostly waits for a core. Both settings are reported; the
    # target is checked at one thread, the setting the monitor should use for this step.
    thread_settings = sorted({default_threads, 1})
    for m in (10, 32):
        samples = torch.randn(1, m, 2048, generator=gen)
        as_numpy = samples.numpy()
        # Same input, same answer: a benchmark of a wrong result is worthless.
        diff = float(abs(entropy_per_dim(as_numpy) - reference_entropy_loop(as_numpy)).max())
        for threads in thread_settings:
            torch.set_num_threads(threads)
            try:
                t = ctx.time_interleaved(
                    {"vectorised": lambda s=samples: entropy_per_dim(s),
                     "loop": lambda a=as_numpy: reference_entropy_loop(a)},
                    repeats=3 if ctx.quick else 7, warmup=1,
                )
            finally:
                torch.set_num_threads(default_threads)
            raw[f"M{m}_threads{threads}"] = t
            speedup = t["loop"]["median_s"] / t["vectorised"]["median_s"]
            rows.append({"M": m, "threads": threads, "vectorised_ms": 1e3 * t["vectorised"]["median_s"],
                         "loop_ms": 1e3 * t["loop"]["median_s"], "loop/vectorised": speedup,
                         "max_abs_diff_nats": diff})
            if threads == 1:
                checks.append({"check": f"loop/vectorised at M={m}, 1 thread", "value": speedup,
                               "target": ">= 100", "ok": speedup >= 100})
    return {"shape": "(1, M, 2048)", "input": "torch float32 (vectorised), numpy (loop)",
            "table": rows, "checks": checks, "timings": raw}


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------
def load_plugin_sections(folder: Path = HERE) -> dict[str, SectionFn]:
    """``SECTIONS`` of every ``bench_*.py`` in ``folder`` (a name already taken is an error)."""
    found: dict[str, SectionFn] = {}
    for path in sorted(folder.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"lsea_bench_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"Cannot load benchmark module {path}.")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, fn in getattr(module, "SECTIONS", {}).items():
            if name in SECTIONS or name in found:
                raise ValueError(f"Benchmark section {name!r} of {path.name} is defined twice.")
            if not callable(fn):
                raise TypeError(f"Benchmark section {name!r} of {path.name} is not callable.")
            found[name] = fn
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def print_table(rows: list[dict[str, Any]], indent: str = "  ") -> None:
    """Rows of dicts as an aligned text table (columns in first-seen order)."""
    if not rows:
        return
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    cells = [[_fmt(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    print(indent + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in cells:
        print(indent + "  ".join(v.rjust(w) for v, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> int:
    sections = {**SECTIONS, **load_plugin_sections()}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (not for figures)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(sections),
                        help="run only these sections")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in sections.items():
            print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    ctx = BenchContext(quick=args.quick, repeats=3 if args.quick else 5)
    names = args.only or list(sections)
    results: dict[str, Any] = {"machine": machine_info(), "quick": args.quick, "sections": {}}
    print(f"machine: {json.dumps(results['machine'])}")
    started = time.perf_counter()
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"\n[{name}] {(sections[name].__doc__ or '').strip().splitlines()[0]}", flush=True)
        try:
            res = sections[name](ctx)
        except Exception as err:  # one broken section must not lose the others' figures
            res = {"error": f"{type(err).__name__}: {err}"}
            failed.append(name)
            print(f"  ERROR {res['error']}")
        res["section_wall_s"] = time.perf_counter() - t0
        results["sections"][name] = res
        print_table(res.get("table", []))
        if res.get("checks"):
            print_table(res["checks"])
        print(f"  ({res['section_wall_s']:.1f} s)", flush=True)
    results["total_wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\ntotal {results['total_wall_s']:.1f} s; results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
