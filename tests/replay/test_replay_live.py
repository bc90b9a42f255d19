"""Live mode against the real node process (``python -m lsea_monitor.node``), over real rclpy middleware.

Every process here runs with the ``ros_env`` environment (LOCALHOST discovery, a DDS domain of its
own) and is stopped by the test (the tool stops the node it starts; the test stops the one it starts).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lsea_monitor.process import die_with_parent

pytest.importorskip("rclpy", reason="live mode needs the ROS 2 wheels (pip install lsea-monitor[ros])")

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def monitor_args(m) -> list[str]:
    return ["--artefact", str(m.artefact), "--checkpoint", str(m.checkpoint), "--model-class", m.model_class,
            "--layer", m.layer, "--device", "cpu"]


def run_tool(args: list[str], env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsea_monitor.replay.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, preexec_fn=die_with_parent())


def stop(proc: subprocess.Popen) -> None:
    """SIGINT a process this test started, SIGKILL it if it has not exited 30 s later."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_until_node_ready(tool: subprocess.Popen, timeout_s: float = 300) -> tuple[threading.Thread, list[str]]:
    """Read the tool's stderr in a thread (it goes on reading) until the tool reports its node ready;
    the reader and the lines read so far."""
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in tool.stderr:
            lines.append(line)
            if "node ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(timeout=timeout_s), "".join(lines)[-3000:]
    return reader, lines


def node_seeds_frames() -> bool:
    """Whether the node seeds each frame's MC draws from its stamp (then it must agree with offline to 1e-5)."""
    import inspect

    from lsea_monitor import node

    return "frame_seed" in inspect.getsource(node)


def test_both_modes_against_a_started_node(replay_monitor, demo_bags, tmp_path: Path, ros_env) -> None:
    bag = demo_bags["mcap_raw"]
    out = tmp_path / "eval"
    proc = run_tool([str(bag), "--image-topic", "/camera/image_raw", "--gt-topic", "/ground_truth/ood", "--mode",
                     "both", "--rate", "1.0", "--out", str(out), "--output-bag", str(out / "verdicts.mcap"),
                     *monitor_args(replay_monitor)], ros_env)
    report = json.loads((out / "report.json").read_text())
    live = report["modes"]["live"]
    run = live["run"]
    assert run["published"] == 16 and run["node_exit_code"] == 0, proc.stderr[-3000:]
    assert run["started_node"] and run["ros_domain_id"] == ros_env["ROS_DOMAIN_ID"]
    assert 0 < live["n_judged"] <= 16 and live["judged_fraction"] == live["n_judged"] / 16
    assert live["dropped"] == 16 - live["n_judged"]
    assert math.isfinite(live["latency"]["p50_ms"]) and live["latency"]["p99_ms"] >= live["latency"]["p50_ms"]
    assert live["node_latency"]["n"] == live["n_judged"]
    assert run["ood_topic_consistent"] and run["unmatched_verdicts"] == 0
    assert report["modes"]["offline"]["n_judged"] == 16
    ag = report["agreement"]
    assert ag["n_common"] > 0 and ag["tolerance"] == 1e-5
    md = (out / "report.md").read_text()
    assert ("Offline vs live: AGREE" if ag["ok"] else "Offline vs live: DISAGREE") in md
    if node_seeds_frames():
        assert ag["ok"], ag
        assert proc.returncode == 0 and report["status"]["complete"]
    else:  # the node's draws are not seeded per frame yet: the check must say so, with its own exit code
        assert not ag["ok"] and proc.returncode == 4 and "seed" in ag["note"]
    assert (out / "timeline.png").is_file() and (out / "frames_live.csv").is_file()
    from lsea_monitor.replay.bag_io import BagReader

    with BagReader(out / "verdicts.mcap") as b:
        topics = b.topics()
    assert topics["/lsea_monitor/verdict"].count == 16
    assert topics["/lsea_monitor/live/verdict"].count == live["n_judged"]


def test_live_attached_to_a_running_compressed_node(replay_monitor, demo_bags, tmp_path: Path, ros_env) -> None:
    m = replay_monitor
    node = subprocess.Popen(
        [sys.executable, "-m", "lsea_monitor.node", "--ros-args", "-r", "__ns:=/robot", "-p", f"checkpoint:={m.checkpoint}",
         "-p", f"artefact:={m.artefact}", "-p", "device:=cpu", "-p", "input_type:=compressed",
         "-p", "qos.reliability:=reliable", "-r", "image:=/camera/image_raw/compressed"],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=die_with_parent())
    try:
        out = tmp_path / "eval"
        proc = run_tool([str(demo_bags["sqlite3_png"]), "--image-topic", "/camera/image_raw/compressed", "--gt-file",
                         str(demo_bags["sqlite3_png"] / "ground_truth.csv"), "--mode", "live", "--attach",
                         "--namespace", "robot", "--rate", "2.0", "--out", str(out)], ros_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        live = report["modes"]["live"]
        assert report["status"]["complete"] and not live["run"]["started_node"]
        assert live["run"]["node"] == "/robot/lsea_monitor" and live["run"]["published"] == 16
        assert live["n_judged"] > 0 and live["detection_delay"]["summary"]["n_intervals"] == 3
        assert math.isfinite(report["monitor"]["threshold"])  # taken from the node's verdicts
        assert node.poll() is None  # the tool leaves a node it did not start running
    finally:
        stop(node)


def test_attached_node_that_stops_mid_replay_is_a_live_error(replay_monitor, demo_bags, tmp_path: Path,
                                                             ros_env) -> None:
    """A node the tool did not start is watched through the graph: once it stops subscribing to the
    images, the frames played afterwards cannot be judged, and the run must not be reported as a result."""
    import time

    m = replay_monitor
    node = subprocess.Popen(
        [sys.executable, "-m", "lsea_monitor.node", "--ros-args", "-p", f"checkpoint:={m.checkpoint}",
         "-p", f"artefact:={m.artefact}", "-p", "device:=cpu", "-p", "qos.reliability:=reliable",
         "-r", "image:=/camera/image_raw"],
        env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent())
    tool = None
    try:
        out = tmp_path / "eval"
        # 16 frames at 10 Hz played at 0.2x: 8 s of playback, the node is stopped about 1 s in
        tool = subprocess.Popen([sys.executable, "-m", "lsea_monitor.replay.cli", str(demo_bags["mcap_raw"]),
                                 "--image-topic", "/camera/image_raw", "--gt-topic", "/ground_truth/ood", "--mode",
                                 "live", "--attach", "--rate", "0.2", "--out", str(out)],
                                env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=die_with_parent())
        reader, stderr_lines = wait_until_node_ready(tool)
        time.sleep(1.0)
        node.send_signal(signal.SIGINT)  # a clean exit: its endpoints leave the graph at once
        node.wait(timeout=60)
        stdout = tool.communicate(timeout=300)[0]
        reader.join(timeout=10)
        err_text = "".join(stderr_lines)
        assert tool.returncode == 5, err_text[-3000:] + stdout[-2000:]
        assert "left the ROS graph during playback" in err_text
        report = json.loads((out / "report.json").read_text())
        assert report["status"]["error_type"] == "LiveModeError" and not report["status"]["complete"]
    finally:
        for p in (tool, node):
            if p is not None:
                stop(p)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_node_the_tool_started_dies_with_a_killed_tool(replay_monitor, demo_bags, tmp_path: Path,
                                                            ros_env) -> None:
    """SIGKILL gives the tool no chance to stop its node; the kernel's parent-death signal does, so no
    orphaned monitor goes on holding the ROS domain (and, on a vehicle's GPU, its memory)."""
    import time

    tool = subprocess.Popen([sys.executable, "-m", "lsea_monitor.replay.cli", str(demo_bags["mcap_raw"]),
                             "--image-topic", "/camera/image_raw", "--mode", "live", "--rate", "0.2",
                             "--out", str(tmp_path / "eval"), *monitor_args(replay_monitor)],
                            env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent())
    node_pids: list[int] = []
    try:
        wait_until_node_ready(tool)
        node_pids = [pid for pid in _children(tool.pid) if _running(pid)]
        assert node_pids, "the tool reported its node ready but has no running child"
        tool.kill()
        tool.wait(timeout=30)
        deadline = time.monotonic() + 30.0
        while any(_running(pid) for pid in node_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in node_pids), "the node outlived the SIGKILLed tool"
    finally:
        stop(tool)
        for pid in node_pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_node_that_cannot_start_is_a_clear_live_error(replay_monitor, demo_bags, tmp_path: Path, ros_env) -> None:
    out = tmp_path / "eval"
    proc = run_tool([str(demo_bags["mcap_raw"]), "--image-topic", "/camera/image_raw", "--mode", "live", "--out",
                     str(out), "--artefact", str(tmp_path / "missing.safetensors"), "--checkpoint",
                     str(replay_monitor.checkpoint), "--startup-timeout", "120"], ros_env, timeout_s=300)
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert "monitor node exited" in proc.stderr and "missing.safetensors" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["error_type"] == "LiveModeError" and not report["status"]["complete"]


def test_repeated_header_stamps_are_not_evaluated_live(replay_monitor, tmp_path: Path, ros_env) -> None:
    """Live verdicts are matched to frames by header stamp: with every frame on one stamp a verdict
    could land on another frame, so the tool refuses to call it a result (exit 6) unless --restamp."""
    from lsea_replay_testutil import CAMERA, START_NS, write_bag

    bag = write_bag(tmp_path / "same_stamp", n=6, header_stamps_ns=[START_NS] * 6).path
    out = tmp_path / "eval"
    proc = run_tool([str(bag), "--image-topic", CAMERA, "--mode", "live", "--rate", "1.0", "--out", str(out),
                     *monitor_args(replay_monitor)], ros_env)
    assert proc.returncode == 6, proc.stderr[-3000:] + proc.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["modes"]["live"]["run"]["duplicate_header_stamps"] == 5
    assert any("repeat a header stamp" in p and "--restamp" in p for p in report["status"]["problems"])
    assert "INCOMPLETE (exit 6)" in proc.stdout
