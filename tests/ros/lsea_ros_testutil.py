"""Helpers of the multi-process ROS tests: the node as a child process, an in-test probe node,
image messages, and the frames the tests stream (chosen so that their verdicts are predictable).

Every process started here gets the death signal (it dies with pytest) and is stopped by the
caller's fixture (``NodeProcess.stop`` in ``finally``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

# One implementation of the death signal for the product's children (replay, demo, bench) and the tests'.
from lsea_monitor.process import die_with_parent as pdeathsig_preexec

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "config" / "lsea_monitor.params.yaml"
PUBLISHER = Path(__file__).resolve().parent / "lsea_frame_publisher.py"
NODE_STARTUP_TIMEOUT_S = 180.0  # torch import + model load + warm-up on a busy 2-core machine


def ros_value(value: Any) -> str:
    """A Python value as a ``-p name:=value`` literal (floats keep their decimal point)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def node_command(files: Any, *, params_file: Path = PARAMS_YAML, executable: Optional[list[str]] = None,
                 namespace: str = "", **params: Any) -> list[str]:
    """The node's command line: the launch files' parameter YAML, then the model and ``params``.

    ``namespace`` (the probe's) keeps the test's topics and status names apart from any other
    monitor that might share the DDS domain.
    """
    base = {"checkpoint": str(files.checkpoint), "artefact": str(files.artefact), "device": "cpu"}
    base.update(params)
    cmd = list(executable or [sys.executable, "-m", "lsea_monitor.node"])
    cmd += ["--ros-args", "--params-file", str(params_file)]
    for name, value in base.items():
        cmd += ["-p", f"{name}:={ros_value(value)}"]
    if namespace:
        cmd += ["-r", f"__ns:=/{namespace}"]
    return cmd


class NodeProcess:
    """A child process with its output in a log file, started with the death signal when started
    from the main thread (it dies with pytest); ``stop`` always leaves it reaped."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO,
                 pdeathsig: Optional[bool] = None) -> None:
        self.cmd, self.log_path = cmd, Path(log_path)
        if pdeathsig is None:  # the signal follows the forking thread: a worker thread's exit would kill it
            pdeathsig = threading.current_thread() is threading.main_thread()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=pdeathsig_preexec() if pdeathsig else None)
        self.pid = self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit within {timeout_s} s; log:\n{self.log()[-4000:]}") from None

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> int:
        """Send ``sig`` (if still running), wait, escalate to SIGKILL of its group; return the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=30)
            return self.proc.returncode
        finally:
            if not self._log.closed:
                self._log.close()


@dataclass
class Received:
    t_wall_s: float
    msg: Any


@dataclass
class Probe:
    """An rclpy node inside the test process, on the child's DDS domain, in a context of its own."""

    domain_id: int
    namespace: str = ""
    verdicts: list[Received] = field(default_factory=list)
    flags: list[Received] = field(default_factory=list)
    health: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import Bool

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("lsea_test_probe", context=self.context)
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.status_prefix = f"{self.namespace}/lsea_monitor" if self.namespace else "lsea_monitor"
        self.image_topic = f"/{self.namespace}/image" if self.namespace else "/image"
        prefix = f"/{self.status_prefix}"
        self._lock = threading.RLock()
        self.node.create_subscription(DiagnosticArray, f"{prefix}/verdict", self._keep(self.verdicts), qos)
        self.node.create_subscription(Bool, f"{prefix}/ood", self._keep(self.flags), qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._keep_health, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context is shut down at close()
            pass

    def _keep(self, into: list[Received]) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self._lock:
                into.append(Received(time.time(), msg))
        return callback

    def _keep_health(self, msg: Any) -> None:
        if any(s.name == f"{self.status_prefix}: health" for s in msg.status):
            with self._lock:
                self.health.append(Received(time.time(), msg))

    def snapshot(self) -> tuple[list[Received], list[Received], list[Received]]:
        with self._lock:
            return list(self.verdicts), list(self.flags), list(self.health)

    def wait_for(self, predicate: Callable[["Probe"], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def publisher(self, msg_type: Any, topic: str, reliable: bool = True) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return self.node.create_publisher(msg_type, topic, QoSProfile(depth=10, reliability=rel))

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 60.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise AssertionError(f"service {name} not available within {timeout_s} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not future.done():
                raise AssertionError(f"service {name} did not answer within {timeout_s} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


# --- messages ------------------------------------------------------------------------------------
def values(msg: Any) -> dict[str, str]:
    """KeyValues of the first status of a DiagnosticArray."""
    return {kv.key: kv.value for kv in msg.status[0].values}


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def image_msg(rgb: np.ndarray, *, sec: int, frame_id: str, encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    h, w = rgb.shape[:2]
    data = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    msg = Image(height=h, width=w, encoding=encoding, step=w * 3, data=np.ascontiguousarray(data).tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, frame_id
    return msg


def health_values(probe: Probe) -> Optional[dict[str, str]]:
    _, _, health = probe.snapshot()
    if not health:
        return None
    status = next(s for s in health[-1].msg.status if s.name == f"{probe.status_prefix}: health")
    return {kv.key: kv.value for kv in status.values}


def replay_hysteresis(verdicts: Iterable[dict[str, str]], *, raise_after: int, window: int,
                      clear_after: int) -> list[bool]:
    """The flags the node must have published for these verdicts (core Hysteresis as the oracle)."""
    from lsea_monitor.pipeline import Hysteresis

    h = Hysteresis(raise_after=raise_after, window=window, clear_after=clear_after)
    return [h.update(v["raw_is_ood"] == "true") if v["valid"] == "true" else h.force_raise() for v in verdicts]


def percentile_ms(latencies_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_s) * 1e3, q)) if latencies_s else math.nan


# --- frames --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamFrames:
    """Frames for the node tests, in an ``.npz`` the publisher process reads.

    ``ind``/``ood``: built-in default test images and their anomalies (what a camera would see).
    ``low``/``high``: one frame each whose scores stayed clearly below/above ``threshold`` over
    repeated MC draws; ``artefact`` is the fixture's artefact with that operating threshold, so a node on it
    gives predictable raw verdicts for them (the tiny fixture model separates anomalies poorly).
    """

    npz: Path
    artefact: Path
    threshold: float
    n_ind: int
    n_ood: int


def build_stream_frames(files: Any, out_dir: Path, *, repeats: int = 16) -> StreamFrames:
    import glob

    import cv2

    from lsea_monitor.artefact import DetectorArtefact
    from lsea_monitor.pipeline import FrameScorer
    from offline_calibration.anomalies import apply_anomaly

    paths = sorted(glob.glob(str(Path(files.data_root) / "leftImg8bit" / "test" / "*" / "*.png")))[:6]
    ind = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths]
    kinds = ("fog", "mud", "sunflare")
    ood = [apply_anomaly(img, kinds[i % 3], seed=i) for i, img in enumerate(ind)]
    base = ind[0]
    candidates = {
        "gray": np.full_like(base, 128), "black": np.zeros_like(base), "white": np.full_like(base, 255),
        "noise": np.random.default_rng(0).integers(0, 256, base.shape, dtype=np.uint8),
        "inverted": 255 - base, "fog": apply_anomaly(base, "fog", seed=0),
        **{f"ind{i}": img for i, img in enumerate(ind)},
    }
    scorer = FrameScorer.from_files(checkpoint=str(files.checkpoint), model_class=files.model_class,
                                    layer=files.layer, artefact=str(files.artefact), device="cpu")
    names = list(candidates)
    scores = np.array([[fs.score for fs in scorer.score_images([candidates[n] for n in names], seed=1000 + r)]
                       for r in range(repeats)])  # (repeats, n), independent draws
    # MC dropout makes every score a random draw: rank frames by a pessimistic bound of their
    # score distribution (mean -/+ 2.5 sd, at least the extremes seen), keep the most extreme
    # frame of each side and put the threshold between their bounds
    mean, sd = scores.mean(axis=0), scores.std(axis=0, ddof=1)
    upper = np.maximum(mean + 2.5 * sd, scores.max(axis=0))
    lower = np.minimum(mean - 2.5 * sd, scores.min(axis=0))
    low_i, high_i = int(np.argmin(upper)), int(np.argmax(lower))
    low_names, high_names = [names[low_i]], [names[high_i]]
    if low_i == high_i or mean[high_i] <= mean[low_i]:
        raise AssertionError(f"no frames with separable scores for the node tests: {dict(zip(names, scores.T))}")
    if lower[high_i] > upper[low_i]:
        threshold = float(upper[low_i] + lower[high_i]) / 2.0
    else:
        threshold = float(mean[low_i] + mean[high_i]) / 2.0
    out_dir.mkdir(parents=True, exist_ok=True)
    artefact = DetectorArtefact.load(files.artefact).with_threshold(threshold).save(
        out_dir / "detector_test.safetensors")
    npz = out_dir / "frames.npz"
    np.savez(npz, ind=np.stack(ind), ood=np.stack(ood), low=np.stack([candidates[n] for n in low_names]),
             high=np.stack([candidates[n] for n in high_names]))
    (out_dir / "frames.json").write_text(json.dumps(
        {"low": low_names, "high": high_names, "threshold": threshold,
         "scores": {n: scores[:, i].tolist() for i, n in enumerate(names)}}, indent=1))
    return StreamFrames(npz=npz, artefact=artefact, threshold=threshold, n_ind=len(ind), n_ood=len(ood))


def run_publisher(env: dict[str, str], out_dir: Path, *, npz: Path, plan: list[tuple[str, int]], rate_hz: float,
                  topic: str = "/image", timeout_s: float = 240.0, encoding: str = "rgb8") -> list[dict[str, Any]]:
    """Run the publisher as its own process; return what it sent (frame_id, stamp, wall time)."""
    plan_path, sent_path = out_dir / "plan.json", out_dir / "sent.json"
    plan_path.write_text(json.dumps({"npz": str(npz), "frames": plan, "rate_hz": rate_hz, "topic": topic,
                                     "encoding": encoding}))
    proc = NodeProcess([sys.executable, str(PUBLISHER), str(plan_path), str(sent_path)], env,
                       out_dir / "publisher.log")
    try:
        rc = proc.wait(timeout_s)
    finally:
        proc.stop(signal.SIGKILL)
    assert rc == 0, f"publisher failed ({rc}):\n{proc.log()[-3000:]}"
    return json.loads(sent_path.read_text())


# --------------------------------------------------------------------------------------------
# MonitorNode in the test process with a stand-in scorer (node_unit, node_multicamera)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def node_in_process(scorer: Any, monkeypatch: Any, domain_id: int, namespace: str, overrides: dict[str, Any],
                    subscribe: dict[str, tuple[Any, str]], publish: dict[str, str]) -> Iterator[dict[str, Any]]:
    """An active MonitorNode whose ``FrameScorer.from_files`` returns ``scorer``, spun with a peer node.

    ``subscribe`` maps a key to ``(message type, topic)``: what arrives is appended to ``got[key]``
    (under ``got["lock"]``); ``publish`` maps a key to an Image topic (``got["pubs"][key]``, reliable).
    Yields ``got`` with ``node`` and ``scorer``; everything is shut down on exit.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    import lsea_monitor.node as node_module

    monkeypatch.setattr(node_module.FrameScorer, "from_files", classmethod(lambda cls, **kw: scorer))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    params = {"checkpoint": "x.ckpt", "artefact": "x.safetensors", **overrides}
    node = node_module.MonitorNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                                   namespace=namespace)
    peer = rclpy.create_node(f"{namespace}_peer", context=ctx)
    got: dict[str, Any] = {"lock": threading.Lock(), "node": node, "scorer": scorer}
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)

    def keep(key: str) -> Callable[[Any], None]:
        got[key] = []

        def cb(msg: Any) -> None:
            with got["lock"]:
                got[key].append(msg)
        return cb

    for key, (msg_type, topic) in subscribe.items():
        peer.create_subscription(msg_type, topic, keep(key), qos)
    rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got["pubs"] = {key: peer.create_publisher(Image, topic, rel) for key, topic in publish.items()}
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    thread = threading.Thread(target=node_module.spin_until_shutdown, args=(executor,), daemon=True)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        executor.add_node(node)
        executor.add_node(peer)
        thread.start()
        deadline = time.monotonic() + 10
        while any(p.get_subscription_count() == 0 for p in got["pubs"].values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield got
    finally:
        node.stop_serving()
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        peer.destroy_node()
        rclpy.try_shutdown(context=ctx)
        if thread.is_alive():
            thread.join(timeout=5)
        node_module.collect_unfinished_callbacks(executor)  # read, so that none prints at exit
