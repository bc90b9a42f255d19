"""``make bench``'s node section runs end to end (quick sizes): a node process, frames through DDS,
every paced frame judged, the latency split consistent, SIGINT exit 0. Timings are not asserted
(speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsea_monitor.process import die_with_parent

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_bench_node_section_quick(ros_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in ros_env.items() if not k.startswith("LSEA_BENCH_")}
    proc = subprocess.run([sys.executable, "bench/run_bench.py", "--only", "node", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=die_with_parent())  # a killed pytest leaves no bench (nor its node)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())["sections"]["node"]
    assert "error" not in res and "skipped" not in res, res
    paced = res["paced"]
    # one frame in flight at a time: the node drops none (best-effort transport could lose one, rarely)
    assert paced["frames"] >= 7
    for e2e, node_lat, infer in zip(paced["e2e_ms"], paced["node_latency_ms"], paced["inference_ms"]):
        assert 0 < infer <= node_lat <= e2e  # inference within the node's latency within publish -> verdict
    assert res["camera_10hz"]["judged"] >= 1 and res["camera_10hz"]["sent"] >= 40
    assert res["node_exit_code_on_sigint"] == 0
