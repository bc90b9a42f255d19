"""Demo step 4: the ROS 2 node on the calibrated artefact, fed InD then OoD frames over real DDS.

The node runs as its own process (``python -m lsea_monitor.node``) with the same parameter files
the launch files use; this process publishes ``sensor_msgs/Image`` frames and listens to
``~/verdict`` and ``~/ood``. Frames are sent one at a time, each after the previous verdict, so
every frame is judged; the summary gives per-phase verdicts and the end-to-end latency.
Discovery stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on a DDS domain of
the demo's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lsea_monitor.process import die_with_parent

REPO = Path(__file__).resolve().parents[1]
NODE_NAME = "lsea_monitor"
IMAGE_TOPIC = "/demo/camera/image"


def ros_child_env(domain_id: int) -> dict[str, str]:
    """Environment for a ROS child process: local discovery, its own domain, no inherited bootstrap
    marker (a child inheriting ``_ROS_WHEELS_BOOTSTRAP_COMPLETE`` cannot import rclpy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("_ROS_WHEELS")}
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    return env


def demo_frames(data_root: Path, height: int, width: int, n_per_phase: int) -> list[tuple[str, np.ndarray]]:
    """InD test images, then the same images with each anomaly kind: ``[(phase, rgb), ...]``."""
    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.cityscapes import CityscapesDataset

    pre = Preprocessing(height=height, width=width)
    frames = []
    ind = CityscapesDataset(data_root, "test", pre, return_labels=False, max_images=n_per_phase)
    frames += [("InD", ind.rgb(i)) for i in range(len(ind))]
    for kind in ("mud", "fog", "sunflare"):
        ood = CityscapesDataset(data_root, "test", pre, anomaly=kind, return_labels=False, max_images=n_per_phase)
        frames += [(f"OoD {kind}", ood.rgb(i)) for i in range(len(ood))]
    return frames


def run(work: Path, cfg: Any, *, checkpoint: str, artefact: str, n_per_phase: int = 6) -> dict[str, Any]:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # no discovery traffic off this machine
    # The run's own domain (make demo sets one per run), else one of this process's own.
    domain_id = int(os.environ.get("ROS_DOMAIN_ID") or 10 + os.getpid() % 90)
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    frames = demo_frames(work / "data", cfg.height, cfg.width, n_per_phase)
    log_path = work / "node.log"
    cmd = [sys.executable, "-m", "lsea_monitor.node", "--ros-args",
           "--params-file", str(REPO / "config" / "lsea_monitor.params.yaml"),
           "--params-file", str(REPO / "config" / "demo.params.yaml"),
           "-p", f"checkpoint:={checkpoint}", "-p", f"artefact:={artefact}", "-r", f"image:={IMAGE_TOPIC}"]
    print(f"[demo] starting the node (log: {log_path}, ROS_DOMAIN_ID={domain_id})")
    with open(log_path, "wb") as log:
        node_proc = subprocess.Popen(cmd, env=ros_child_env(domain_id), cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
    rclpy.init()
    node = rclpy.create_node("lsea_demo_camera")
    verdicts: dict[int, dict[str, Any]] = {}
    flags: list[bool] = []
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

    def on_verdict(msg: DiagnosticArray) -> None:
        status = msg.status[0]
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        verdicts[stamp] = {"level": int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                           else int(status.level), "message": status.message,
                           "values": {kv.key: kv.value for kv in status.values}, "recv_ns": time.monotonic_ns()}

    node.create_subscription(DiagnosticArray, f"/{NODE_NAME}/verdict", on_verdict, reliable)
    node.create_subscription(Bool, f"/{NODE_NAME}/ood", lambda m: flags.append(bool(m.data)), reliable)
    pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
    summary: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 240
        while pub.get_subscription_count() == 0 or node.count_publishers(f"/{NODE_NAME}/verdict") == 0:
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {node_proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not become active within 240 s; see {log_path}")
            rclpy.spin_once(node, timeout_sec=0.2)
        print(f"[demo] node active; streaming {len(frames)} frames to {IMAGE_TOPIC}")
        print(f"[demo] {'frame':>5} {'phase':<13} {'verdict':<7} {'score':>10} {'threshold':>10} {'flag':<5} latency"
              "   (verdict level follows the debounced flag; the flag starts raised until InD frames clear it)")
        rows = []
        for i, (phase, rgb) in enumerate(frames):
            stamp_ns = 1_700_000_000 * 10**9 + i * 100_000_000
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
            msg.header.frame_id = "camera"
            msg.data = rgb.tobytes()
            sent_ns = time.monotonic_ns()
            pub.publish(msg)
            wait_until = time.monotonic() + 60
            while stamp_ns not in verdicts and time.monotonic() < wait_until:
                rclpy.spin_once(node, timeout_sec=0.05)
            v = verdicts.get(stamp_ns)
            if v is None:
                print(f"[demo] {i:>5} {phase:<13} no verdict within 60 s")
                continue
            rclpy.spin_once(node, timeout_sec=0.05)  # the flag follows the verdict
            level = {0: "OK", 1: "WARN", 2: "ERROR"}.get(v["level"], str(v["level"]))
            latency_ms = (v["recv_ns"] - sent_ns) / 1e6
            raw_ood = v["values"].get("raw_is_ood") == "true"  # this frame's own judgement, before hysteresis
            rows.append((phase, raw_ood, level == "ERROR", latency_ms, flags[-1] if flags else None))
            print(f"[demo] {i:>5} {phase:<13} {level:<7} {float(v['values'].get('score', 'nan')):>10.4g} "
                  f"{float(v['values'].get('threshold', 'nan')):>10.4g} {str(flags[-1] if flags else '?'):<5} "
                  f"{latency_ms:.0f} ms")
        summary = summarise(rows)
        for phase, s in summary["phases"].items():
            print(f"[demo] {phase:<13} {s['n']} frames: {s['ood']} judged OoD, {s['error']} invalid, "
                  f"flag raised on {s['flag_raised']}")
        print(f"[demo] end-to-end latency p50 {summary['latency_ms_p50']:.0f} ms, p99 {summary['latency_ms_p99']:.0f} ms")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if node_proc.poll() is None:
            node_proc.send_signal(signal.SIGINT)
            try:
                node_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node_proc.kill()
                node_proc.wait()
        print(f"[demo] node stopped with exit code {node_proc.returncode}")
    summary["node_exit_code"] = node_proc.returncode
    return summary


def summarise(rows: list[tuple[str, bool, bool, float, bool | None]]) -> dict[str, Any]:
    """Per phase: frames, frames judged OoD (raw), invalid ones, frames with the debounced flag raised."""
    phases: dict[str, dict[str, int]] = {}
    for phase, raw_ood, invalid, _lat, flag in rows:
        p = phases.setdefault(phase, {"n": 0, "ood": 0, "error": 0, "flag_raised": 0})
        p["n"] += 1
        p["ood"] += raw_ood
        p["error"] += invalid
        p["flag_raised"] += bool(flag)
    lat = np.array([r[3] for r in rows]) if rows else np.array([np.nan])
    return {"phases": phases, "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99))}
