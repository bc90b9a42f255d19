"""Benchmark section ``node``: the monitor node as a process, fed through DDS from this process.

* one frame at a time (the next frame is published once the previous verdict arrived): publish ->
  verdict received, and the node's overhead over its own inference (``inference_ms`` in the
  verdict: the core's ``FrameScorer`` call on that frame), i.e. image conversion, the hand-over to
  the worker thread, building and publishing the verdict and DDS transport both ways; split into
  the part inside the node (receipt -> verdict published, minus inference: ``latency_ms`` -
  ``inference_ms``) and the rest (transport and scheduling of both processes);
* a 10 Hz camera for ``duration`` seconds: fraction of frames judged (the node keeps the newest
  frame and drops the rest when inference is slower than the camera; drops are counted), latency
  publish -> verdict p50/p99.

Model: as the ``replay`` section (the demo's when ``work_dirs/demo`` holds it, else an untrained
reference DeepLabV3+ ResNet-18 with a detector fitted on its latents). The node runs with the
repository's vehicle parameters on the CPU, in its own namespace, on this run's ``ROS_DOMAIN_ID``
with discovery restricted to this machine; it dies with this process (PR_SET_PDEATHSIG) and is
stopped with SIGINT at the end (its exit code is reported).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OVERHEAD_TARGET_P99_MS = 10.0

def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


class _Client:
    """Publisher of frames and listener of verdicts, in an rclpy context of its own."""

    def __init__(self, domain_id: int, namespace: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("lsea_bench_client", context=self.context)
        self.pub = self.node.create_publisher(Image, f"/{namespace}/image", qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.got: dict[tuple[int, int], tuple[float, dict[str, str]]] = {}
        self.event = threading.Event()
        self.node.create_subscription(DiagnosticArray, f"/{namespace}/lsea_monitor/verdict", self._on_verdict,
                                      QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context is shut down at close()
            pass

    def _on_verdict(self, msg: Any) -> None:
        now = time.monotonic()
        key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        with self.lock:
            self.got[key] = (now, {kv.key: kv.value for kv in msg.status[0].values})
        self.event.set()

    def publish(self, msg: Any, sec: int) -> tuple[tuple[int, int], float]:
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 0
        t = time.monotonic()
        self.pub.publish(msg)
        return (sec, 0), t

    def wait_for(self, key: tuple[int, int], timeout_s: float) -> tuple[float, dict[str, str]] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if key in self.got:
                    return self.got[key]
            self.event.wait(0.01)
            self.event.clear()
        return None

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def bench_node(ctx: Any) -> dict[str, Any]:
    """Node process via DDS: publish -> verdict latency and overhead over inference (one at a time); 10 Hz camera."""
    try:
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image
    except Exception as err:  # noqa: BLE001 - no ROS here
        return {"skipped": f"rclpy is not usable here: {type(err).__name__}: {err}"}
    import numpy as np

    from bench.bench_replay import _monitor
    from lsea_monitor.artefact import DetectorArtefact
    from lsea_monitor.process import die_with_parent
    from offline_calibration.synthetic import render_scene

    paced_n, rate_hz, duration_s = (8, 10.0, 5.0) if ctx.quick else (60, 10.0, 30.0)
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # no discovery traffic off this machine
    domain_id = int(env.get("ROS_DOMAIN_ID") or random.randrange(10, 100))
    env["ROS_DOMAIN_ID"] = str(domain_id)
    namespace = f"lsea_bench_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lsea_bench_node_") as tmp_s:
        tmp = Path(tmp_s)
        mon = _monitor(ctx, tmp)
        pre = DetectorArtefact.load(mon["artefact"]).preprocessing
        frames = []
        for s in range(8):
            rgb = np.ascontiguousarray(render_scene(s, pre.height, pre.width).rgb)
            frames.append(Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                                data=rgb.tobytes()))
        cmd = [sys.executable, "-m", "lsea_monitor.node", "--ros-args", "--params-file",
               str(ROOT / "config" / "lsea_monitor.params.yaml"), "-p", f"checkpoint:={mon['checkpoint']}",
               "-p", f"artefact:={mon['artefact']}", "-p", "device:=cpu", "-p", "watchdog_timeout_s:=60.0",
               "-r", f"__ns:=/{namespace}"]
        log = open(tmp / "node.log", "wb")
        node = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent())
        client = _Client(domain_id, namespace)
        out: dict[str, Any] = {"model": mon["source"], "input_hw": [pre.height, pre.width], "domain_id": domain_id}
        try:
            sec = 1000
            # start-up: frames every 0.5 s until the first verdict (model load + warm-up)
            t0 = time.monotonic()
            while True:
                if node.poll() is not None:
                    raise RuntimeError(f"the node exited with {node.returncode}: "
                                       f"{(tmp / 'node.log').read_text(errors='replace')[-2000:]}")
                if time.monotonic() - t0 > 300.0:
                    raise RuntimeError("no verdict from the node within 300 s")
                sec += 1
                key, _ = client.publish(frames[0], sec)
                if client.wait_for(key, 0.5) is not None:
                    break
            out["startup_to_first_verdict_s"] = round(time.monotonic() - t0, 2)

            # one frame at a time
            e2e, node_lat, infer, overhead, internal = [], [], [], [], []
            for i in range(paced_n):
                sec += 1
                key, t_pub = client.publish(frames[i % len(frames)], sec)
                got = client.wait_for(key, 60.0)
                if got is None:
                    continue  # lost by the best-effort transport: not a latency sample
                t_recv, v = got
                e = 1e3 * (t_recv - t_pub)
                e2e.append(e)
                node_lat.append(float(v["latency_ms"]))
                infer.append(float(v["inference_ms"]))
                overhead.append(e - float(v["inference_ms"]))
                internal.append(float(v["latency_ms"]) - float(v["inference_ms"]))
                time.sleep(0.02)

            # a 10 Hz camera
            period = 1.0 / rate_hz
            sent: dict[tuple[int, int], float] = {}
            t_start = time.monotonic()
            n = 0
            while time.monotonic() - t_start < duration_s:
                sec += 1
                key, t_pub = client.publish(frames[n % len(frames)], sec)
                sent[key] = t_pub
                n += 1
                time.sleep(max(0.0, t_start + n * period - time.monotonic()))
            time.sleep(3.0)
            with client.lock:
                cam = [(1e3 * (client.got[k][0] - t), client.got[k][1]) for k, t in sent.items() if k in client.got]
            cam_e2e = [c[0] for c in cam]
        finally:
            client.close()
            if node.poll() is None:
                node.send_signal(signal.SIGINT)
                try:
                    node.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait(timeout=30)
            log.close()
        out["node_exit_code_on_sigint"] = node.returncode
    p99_overhead = _pct(overhead, 99)
    rows = [
        {"variant": f"one frame at a time ({len(e2e)} frames)", "e2e_p50_ms": _pct(e2e, 50), "e2e_p99_ms": _pct(e2e, 99),
         "inference_p50_ms": _pct(infer, 50), "overhead_p50_ms": _pct(overhead, 50), "overhead_p99_ms": p99_overhead,
         "in_node_overhead_p99_ms": _pct(internal, 99),
         "transport_p99_ms": _pct([e - n for e, n in zip(e2e, node_lat)], 99)},
        {"variant": f"{rate_hz:g} Hz camera, {duration_s:g} s: judged {len(cam)}/{len(sent)}",
         "e2e_p50_ms": _pct(cam_e2e, 50), "e2e_p99_ms": _pct(cam_e2e, 99),
         "inference_p50_ms": _pct([float(v["inference_ms"]) for _, v in cam], 50)},
    ]
    out.update({
        "paced": {"frames": len(e2e), "e2e_ms": e2e, "node_latency_ms": node_lat, "inference_ms": infer,
                  "overhead_ms": overhead, "in_node_overhead_ms": internal,
                  "overhead_mean_ms": statistics.fmean(overhead) if overhead else float("nan")},
        "camera_10hz": {"sent": len(sent), "judged": len(cam), "judged_fraction": len(cam) / max(len(sent), 1),
                        "e2e_p50_ms": _pct(cam_e2e, 50), "e2e_p99_ms": _pct(cam_e2e, 99)},
        "table": rows,
        "checks": [{"check": "node overhead over inference, p99 (publish -> verdict minus inference_ms)",
                    "value": p99_overhead, "target": f"<= {OVERHEAD_TARGET_P99_MS:g} ms",
                    "ok": p99_overhead <= OVERHEAD_TARGET_P99_MS},
                   {"check": "node exit code on SIGINT", "value": out["node_exit_code_on_sigint"], "target": "0",
                    "ok": out["node_exit_code_on_sigint"] == 0}],
    })
    return out


SECTIONS = {"node": bench_node}
