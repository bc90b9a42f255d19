"""Offline replay must not need rclpy: reading, decoding and scoring a bag import no ROS client library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_offline_path_imports_no_rclpy(make_bag) -> None:
    spec = make_bag(n=2)
    code = (
        "import sys\n"
        "import lsea_monitor.replay.cli, lsea_monitor.replay.report, lsea_monitor.replay.evaluate\n"
        "from lsea_monitor.replay.bag_io import BagReader\n"
        "from lsea_monitor.replay.offline import iter_frames\n"
        f"with BagReader({str(spec.path)!r}) as bag:\n"
        "    frames = list(iter_frames(bag, '/cam/image'))\n"
        "assert all(f.rgb is not None for f in frames)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosbag2_py'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("_ROS_WHEELS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the offline replay path imported: {out.stdout.strip()}"
