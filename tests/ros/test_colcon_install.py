"""colcon builds ros2_ws as a vehicle would; the executable and parameter file that colcon installed
run the monitor (``ros2 run lsea_monitor lsea_monitor_node`` minus the ``ros2`` front end)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from lsea_ros_testutil import REPO, NodeProcess, Probe, StreamFrames, image_msg, node_command, stamp_key, values
from test_node_stream import wait_active

pytestmark = [pytest.mark.ros, pytest.mark.slow]
COLCON = Path(sys.executable).parent / "colcon"
INSTALLED = ["lib/lsea_monitor/lsea_monitor_node", "share/lsea_monitor/package.xml",
             "share/ament_index/resource_index/packages/lsea_monitor",
             "share/lsea_monitor/launch/lsea_monitor.launch.py", "share/lsea_monitor/launch/lsea_monitor.launch.xml",
             "share/lsea_monitor/config/lsea_monitor.params.yaml", "share/lsea_monitor/config/demo.params.yaml"]


def colcon_build(ws_out: Path, env: dict[str, str]) -> Path:
    if not COLCON.exists():
        pytest.skip(f"colcon is not installed next to {sys.executable} (pip install -e '.[colcon]')")
    ws_out.mkdir(parents=True, exist_ok=True)
    cmd = [str(COLCON), "--log-base", str(ws_out / "log"), "build", "--base-paths", str(REPO / "ros2_ws" / "src"),
           "--build-base", str(ws_out / "build"), "--install-base", str(ws_out / "install")]
    out = subprocess.run(cmd, cwd=ws_out, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"colcon build failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return ws_out / "install"


def sourced(install: Path, command: list[str]) -> list[str]:
    """``command`` run after sourcing the workspace, as on a vehicle (exec: signals reach it)."""
    return ["sh", "-c", f". {shlex.quote(str(install / 'setup.sh'))} && exec {shlex.join(command)}"]


def test_colcon_installed_executable_and_params_file_run_the_monitor(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any, stream_frames: StreamFrames,
    ros_env: dict[str, str], tmp_path: Path,
) -> None:
    install = colcon_build(tmp_path / "ws", ros_env)
    prefix = install / "lsea_monitor"
    for rel in INSTALLED:
        assert (prefix / rel).is_file(), f"colcon did not install {rel}"
    assert os.access(prefix / "lib/lsea_monitor/lsea_monitor_node", os.X_OK)
    for rel in ("launch/lsea_monitor.launch.py", "launch/lsea_monitor.launch.xml", "config/lsea_monitor.params.yaml"):
        assert (prefix / "share/lsea_monitor" / rel).read_bytes() == (REPO / rel).read_bytes(), rel

    # the ament index finds the package once the workspace is sourced (what `ros2 launch` relies on)
    probe_index = subprocess.run(
        sourced(install, [sys.executable, "-c", "from ament_index_python.packages import "
                          "get_package_share_directory as g; print(g('lsea_monitor'))"]),
        env=ros_env, capture_output=True, text=True, timeout=120)
    assert probe_index.returncode == 0, probe_index.stderr
    assert Path(probe_index.stdout.strip()) == prefix / "share/lsea_monitor"

    params_file = prefix / "share/lsea_monitor/config/lsea_monitor.params.yaml"
    cmd = node_command(monitor_files, params_file=params_file,
                       executable=[str(prefix / "lib/lsea_monitor/lsea_monitor_node")],
                       namespace=probe.namespace, artefact=str(stream_frames.artefact), watchdog_timeout_s=600.0)
    node = start_process(sourced(install, cmd), name="installed_node")
    wait_active(probe, node)
    from sensor_msgs.msg import Image

    pub = probe.publisher(Image, probe.image_topic)
    frames = np.load(stream_frames.npz)
    deadline, verdict = time.monotonic() + 60.0, None
    while verdict is None and time.monotonic() < deadline:
        pub.publish(image_msg(frames["high"][0], sec=7, frame_id="installed"))
        time.sleep(0.5)
        verdict = next((r.msg for r in probe.snapshot()[0] if stamp_key(r.msg.header) == (7, 0)), None)
    assert verdict is not None, f"no verdict from the installed node:\n{node.log()[-3000:]}"
    assert values(verdict)["valid"] == "true" and values(verdict)["mc_samples"] == str(monitor_files.mc_samples)
    rc = node.stop(signal.SIGTERM)
    assert rc == 0, f"SIGTERM gave exit code {rc}:\n{node.log()[-3000:]}"
