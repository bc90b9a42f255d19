"""``make demo``'s program end to end at toy size (``--quick``): every step runs and exits 0, and a
rerun skips the cached steps and still succeeds (its replay output is replaced, not refused; a demo
bag of an older anomaly rendering is rebuilt)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsea_monitor.process import die_with_parent
from offline_calibration import demo
from offline_calibration.anomalies import ANOMALY_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.ros]
REPO = Path(__file__).resolve().parents[2]


def _demo(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offline_calibration.demo", "--quick", "--work-dir", str(work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
                          preexec_fn=die_with_parent())  # a killed pytest leaves no demo (nor its node)


def test_quick_demo_runs_every_step_and_a_rerun_uses_the_cache(ros_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
    work = tmp_path / "demo"
    first = _demo(work, ros_env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for path in ("calibration/detector.safetensors", "calibration/report.md", "replay/report/report.json",
                 "replay/report/demo_drive_with_verdicts.mcap"):
        assert (work / path).exists(), path
    assert "[demo] node stopped with exit code 0" in first.stdout
    bag_mtime = (work / "replay" / "report" / "demo_drive_with_verdicts.mcap").stat().st_mtime_ns
    # The calibration and the demo bag name the anomaly rendering they were made with; a bag of an
    # older rendering is rebuilt (its anomalies would not be the ones the detector was fitted on).
    assert json.loads((work / "calibration" / "demo_stamp.json").read_text())["config"]["anomaly_version"] == \
        ANOMALY_VERSION
    bag_stamp = work / "replay" / "demo_bag_stamp.json"
    stamp = json.loads(bag_stamp.read_text())
    assert stamp["config"] == {"anomaly_version": ANOMALY_VERSION, "data": demo.data_config(demo.QUICK)}
    bag_stamp.write_text(json.dumps({**stamp, "config": {**stamp["config"], "anomaly_version": ANOMALY_VERSION - 1}}))

    again = _demo(work, ros_env)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    for step in ("generate data: cached", "train model: cached", "calibrate: cached"):
        assert f"[demo] {step}" in again.stdout, step
    assert "[demo] building the demo rosbag" in again.stdout
    assert json.loads(bag_stamp.read_text())["config"] == demo.demo_bag_stamp_config(demo.QUICK)
    assert (work / "replay" / "report" / "demo_drive_with_verdicts.mcap").stat().st_mtime_ns != bag_mtime
