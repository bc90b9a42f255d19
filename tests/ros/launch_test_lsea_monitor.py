"""launch_testing test: launch/lsea_monitor.launch.py starts the monitor, frames get verdicts, and every
process exits cleanly when the launch shuts down. LSEA_LAUNCH_FILE=lsea_monitor.launch.xml tests the
XML twin the same way.

Needs a ROS 2 install with launch, launch_ros and launch_testing and the sourced colcon workspace
(ros2_ws) on top of the pip-installed repository, as on a vehicle:

    pip install -e '.[all]' && (cd ros2_ws && colcon build) && . ros2_ws/install/setup.sh
    launch_test -i tests/ros/launch_test_lsea_monitor.py   # -i: its own ROS domain; or python -m pytest
    LSEA_LAUNCH_FILE=lsea_monitor.launch.xml launch_test -i tests/ros/launch_test_lsea_monitor.py

The model and artefact come from LSEA_TEST_CHECKPOINT and LSEA_TEST_ARTEFACT, or are built on the
spot with the test suite's tiny monitor (tests/conftest.py, about a minute on a CPU). Here (wheels
from PyPI, no launch packages) the module is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

launch_testing = pytest.importorskip(
    "launch_testing",
    reason="launch_testing is not installed (no ROS 2 launch packages on PyPI); on a ROS 2 install run "
           "`launch_test tests/ros/launch_test_lsea_monitor.py` with the ros2_ws workspace sourced",
)
pytest.importorskip("launch_ros", reason="launch_ros is not installed")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import launch_testing.markers  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import AnyLaunchDescriptionSource  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "launch_test"
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def _monitor_files() -> tuple[str, str]:
    ckpt, art = os.environ.get("LSEA_TEST_CHECKPOINT"), os.environ.get("LSEA_TEST_ARTEFACT")
    if ckpt and art:
        return ckpt, art
    spec = importlib.util.spec_from_file_location("lsea_tests_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    files = module.build_monitor_files(Path(tempfile.mkdtemp(prefix="lsea_launch_test_")))
    return str(files.checkpoint), str(files.artefact)


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> tuple[launch.LaunchDescription, dict]:
    checkpoint, artefact = _monitor_files()
    monitor = IncludeLaunchDescription(
        AnyLaunchDescriptionSource(str(REPO / "launch" / os.environ.get("LSEA_LAUNCH_FILE", "lsea_monitor.launch.py"))),
        launch_arguments={
            "artefact": artefact, "checkpoint": checkpoint, "namespace": NAMESPACE,
            "image_topic": f"/{NAMESPACE}/camera/image_raw",
            "params_file": str(REPO / "config" / "lsea_monitor.params.yaml"),
        }.items(),
    )
    return launch.LaunchDescription([monitor, launch_testing.actions.ReadyToTest()]), {}


class TestVerdicts(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("lsea_launch_test_probe")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_frames_get_stamped_verdicts_and_flags(self) -> None:
        verdicts: list[DiagnosticArray] = []
        flags: list[bool] = []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(DiagnosticArray, f"/{NAMESPACE}/lsea_monitor/verdict", verdicts.append, qos)
        self.node.create_subscription(Bool, f"/{NAMESPACE}/lsea_monitor/ood", lambda m: flags.append(m.data), qos)
        pub = self.node.create_publisher(Image, f"/{NAMESPACE}/camera/image_raw", 10)
        rgb = np.random.default_rng(0).integers(0, 256, (128, 256, 3), dtype=np.uint8)
        deadline = time.monotonic() + 300.0  # model load on a CPU
        sec = 0
        while time.monotonic() < deadline and not any(v.header.frame_id == "launch_test_cam" for v in verdicts):
            sec += 1
            msg = Image(height=128, width=256, encoding="rgb8", step=256 * 3, data=rgb.tobytes())
            msg.header.stamp.sec, msg.header.frame_id = sec, "launch_test_cam"
            pub.publish(msg)
            rclpy.spin_once(self.node, timeout_sec=0.5)
        # The node publishes the verdict, then the flag; spin_once runs one callback, so the flag
        # of the frame that ended the loop may still be waiting.
        flag_deadline = time.monotonic() + 10.0
        while not flags and time.monotonic() < flag_deadline:
            rclpy.spin_once(self.node, timeout_sec=0.1)
        frame_verdicts = [v for v in verdicts if v.header.frame_id == "launch_test_cam"]
        self.assertTrue(frame_verdicts, "no verdict for the published frames")
        values = {kv.key: kv.value for kv in frame_verdicts[0].status[0].values}
        for key in ("is_ood", "score", "threshold", "latency_ms", "mc_samples", "raw_is_ood", "reason"):
            self.assertIn(key, values)
        self.assertLessEqual(frame_verdicts[0].header.stamp.sec, sec)
        self.assertEqual(values["valid"], "true")
        self.assertTrue(flags, "no ~/ood flag published")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info) -> None:  # noqa: ANN001 - launch_testing fixture
        # SIGINT from the launch's shutdown: the monitor exits 0
        launch_testing.asserts.assertExitCodes(proc_info)


if __name__ == "__main__":
    sys.exit("run with: launch_test tests/ros/launch_test_lsea_monitor.py")
