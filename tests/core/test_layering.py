"""The ROS-free core must stay importable without rclpy, Lightning or rosbags."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = ["lsea_monitor", "lsea_monitor.errors", "lsea_monitor.preprocessing", "lsea_monitor.hooks",
                "lsea_monitor.sampling", "lsea_monitor.entropy", "lsea_monitor.dataset", "lsea_monitor.detectors",
                "lsea_monitor.threshold", "lsea_monitor.metrics", "lsea_monitor.plots", "lsea_monitor.artefact",
                "lsea_monitor.checkpoint", "lsea_monitor.pipeline", "lsea_monitor.compat",
                "lsea_monitor.node_params"]  # the node's parameter specs are plain data (replay reads them)
FORBIDDEN = ["rclpy", "rcl_interfaces", "lightning", "pytorch_lightning", "rosbags", "cv_bridge", "segmentation_models_pytorch"]


def test_core_imports_no_ros_lightning_or_rosbags() -> None:
    code = (
        "import sys\n"
        f"for m in {CORE_MODULES!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core modules imported: {out.stdout.strip()}"
