"""bench/gpu_bench.py: the case list covers what issue 6 asks to measure, and the script runs (tiny
sizes on the CPU; the figures come from a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from gpu_bench import FULL, QUICK, build_cases, checks  # noqa: E402


def test_full_case_list_covers_the_issue() -> None:
    cases = build_cases(FULL, with_compile=True)
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert {c.encoder for c in cases} == {"resnet50", "resnet101"}
    assert {c.hw for c in cases} == {(256, 512), (483, 640)}
    assert {c.mc_samples for c in cases if c.kind != "forward"} == {16, 32}
    assert {"fp32", "bf16"} <= {c.precision for c in cases}
    assert {c.sampler for c in cases} == {"fast", "naive"}
    assert {c.cameras for c in cases} == {1, 4}
    assert {c.compile_mode for c in cases} >= {None, "default", "reduce-overhead"}
    assert any(c.channels_last for c in cases)
    first = cases[:6]  # the targets come first, before the budget can run out
    assert {(c.kind, c.precision) for c in first} >= {("forward", "fp32"), ("sampler", "bf16"), ("monitor", "bf16")}
    for enc in ("resnet50", "resnet101"):
        for hw in ((256, 512), (483, 640)):
            for prec in ("fp32", "bf16"):  # every forward has its fast M=32 counterpart for the ratio
                assert any(c.kind == "forward" and (c.encoder, c.hw, c.precision) == (enc, hw, prec) for c in cases)
                assert any(c.kind == "sampler" and c.mc_samples == 32 and (c.encoder, c.hw, c.precision) ==
                           (enc, hw, prec) for c in cases)


def test_checks_read_the_targets_from_the_rows() -> None:
    rows = [{"name": "forward resnet101 256x512 bf16 cams1", "p50_ms": 4.0},
            {"name": "sampler resnet101 256x512 bf16 M32 fast cams1", "p50_ms": 4.2},
            {"name": "monitor resnet101 256x512 bf16 M16 fast cams1", "kind": "monitor", "encoder": "resnet101",
             "hw": [256, 512], "mc_samples": 16, "precision": "bf16", "sampler": "fast", "cameras": 1,
             "p50_ms": 4.5, "p99_ms": 6.0, "fps_per_camera": 222.2}]
    out = {c["check"].split(",")[0]: c for c in checks(rows, FULL, quick=False)}
    assert out["fast M=32 / one forward"]["value"] == pytest.approx(1.05) and out["fast M=32 / one forward"]["ok"]
    assert out["frames/s per camera"]["ok"] and out["monitor p99 ms"]["ok"]
    assert all(c["ok"] is None for c in checks(rows, FULL, quick=True))


@pytest.mark.slow
def test_quick_run_on_the_cpu_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_bench.py"), "--quick", "--device", "cpu",
                           "--priority", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["device"] == "cpu" and not result["errors"]
    rows = [r for r in result["cases"] if "p50_ms" in r]
    assert len(rows) == len(build_cases(QUICK, with_compile=False)[:5])
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert any(c["check"].startswith("fast M=8 / one forward") for c in result["checks"])


def test_full_run_refuses_a_machine_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_bench.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr
