"""Benchmark section ``gpu``: ``bench/gpu_bench.py`` (the monitor's per-frame path on a CUDA GPU).

Skipped, with the reason, where no CUDA GPU is present: run ``python bench/gpu_bench.py --quick``
for a CPU smoke test of the script, and the full script on a GPU machine for the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_gpu(ctx: Any) -> dict[str, Any]:
    """GPU per-frame latency p50/p99 (bench/gpu_bench.py); skipped without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        reason = ("skipped: needs a CUDA GPU (none on this machine); run python bench/gpu_bench.py on a GPU "
                  "machine (or --quick for a smoke test on the CPU)")
        print(f"  {reason}")
        return {"skipped": reason}
    from bench.gpu_bench import run

    result = run(quick=ctx.quick, budget_s=60.0 if ctx.quick else 270.0)
    rows = [{k: r.get(k) for k in ("name", "p50_ms", "p99_ms", "fps_per_camera")} for r in result["cases"]
            if "p50_ms" in r]
    return {**result, "table": rows, "checks": result["checks"]}


SECTIONS = {"gpu": bench_gpu}
