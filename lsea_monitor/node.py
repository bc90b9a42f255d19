"""``lsea_monitor_node``: the ROS 2 lifecycle node around :class:`~lsea_monitor.pipeline.FrameScorer`.

The subscription callback only converts and validates a frame and puts it into a one-slot buffer
(newest wins, overwrites are counted as drops); a worker thread scores it and publishes
``~/verdict`` (DiagnosticArray, the image's header) and ``~/ood`` (Bool, the debounced flag). Node
health goes to ``/diagnostics`` in every lifecycle state. Anything that prevents a verdict (a bad
image, a model error, no input for ``watchdog_timeout_s``) gives an ERROR verdict and raises the
flag. Parameters: :mod:`lsea_monitor.node_params`; bookkeeping: :mod:`lsea_monitor.node_stats`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header

from lsea_monitor import node_msgs, node_params
from lsea_monitor.errors import LseaError
from lsea_monitor.node_stats import LatestSlot, NodeStats
from lsea_monitor.pipeline import FrameScore, FrameScorer, Hysteresis, frame_seed
from lsea_monitor.ros_image import msg_to_rgb

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
OUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
NAN = float("nan")


@dataclass(frozen=True)
class Frame:
    header: Header
    rgb: np.ndarray
    recv_ns: int  #: time.monotonic_ns() when the message arrived


class MonitorNode(LifecycleNode):
    """Lifecycle node ``lsea_monitor``: configure loads, activate serves, deactivate stops serving."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("lsea_monitor", **kwargs)
        self.params = node_params.declare(self)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._stats = NodeStats(now_s=time.monotonic())
        self._slot: LatestSlot[Frame] = LatestSlot()
        self._lock = threading.Lock()  # hysteresis, publishers and _active
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._scorer: Optional[FrameScorer] = None
        self._hysteresis: Optional[Hysteresis] = None
        self._active = False
        self._stale, self._last_stale_s = False, 0.0
        self._last_input_ns = time.monotonic_ns()
        self._sub = self._verdict_pub = self._ood_pub = self._watchdog = None
        self._groups = [MutuallyExclusiveCallbackGroup() for _ in range(3)]  # images, watchdog, health
        self._health_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUT_QOS)
        self._health_timer = self._make_health_timer()

    # --- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        missing = node_params.missing_for_configure(p)
        if missing:
            return self._fail("configure", f"parameter(s) {', '.join(missing)} not set; give them in the params "
                              "file or with -p name:=value")
        try:
            self._scorer = FrameScorer.from_files(checkpoint=p.checkpoint, model_class=p.model_class, layer=p.layer,
                                                  artefact=p.artefact, device=p.device, precision=p.precision,
                                                  mc_samples=p.mc_samples)
        except Exception as err:  # noqa: BLE001 - any load failure is a configure FAILURE with its message
            return self._fail("configure", _describe(err))
        s = self._scorer
        self.get_logger().info(f"Configured: model {s.model_id}, artefact {s.artefact_id}, device {s.device}, "
                               f"M={s.mc_samples}, threshold {s.threshold:.6g}")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, s = self.params, self._scorer
        try:
            s.warmup()
        except Exception as err:  # noqa: BLE001
            return self._fail("activate", f"warm-up failed: {_describe(err)}")
        self._hysteresis = self._new_hysteresis()
        self._verdict_pub = self.create_publisher(DiagnosticArray, "~/verdict", OUT_QOS)
        self._ood_pub = self.create_publisher(Bool, "~/ood", OUT_QOS)
        reliability = ReliabilityPolicy.RELIABLE if p.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=p.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
        msg_type = CompressedImage if p.input_type == "compressed" else Image
        self._stats.reset(time.monotonic())
        self._last_input_ns, self._stale = time.monotonic_ns(), False
        self._stop.clear()
        self._slot.clear()
        self._worker = threading.Thread(target=self._work, name="lsea_monitor_worker", daemon=True)
        self._worker.start()
        with self._lock:
            self._active = True
        self._sub = self.create_subscription(msg_type, "image", self._on_image, qos, callback_group=self._groups[0])
        self._watchdog = self.create_timer(0.1, self._on_watchdog, callback_group=self._groups[1])
        self.get_logger().info(f"Active: {p.input_type} images on {self._sub.topic_name} ({p.qos_reliability}, "
                               f"depth {p.qos_depth}) -> {self._verdict_pub.topic_name}, {self._ood_pub.topic_name}")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        self._scorer = None
        return SUCCESS

    on_shutdown = on_error = on_cleanup  # both end unconfigured/finalized with nothing left running

    def _fail(self, what: str, reason: str) -> TransitionCallbackReturn:
        message = f"{what} failed: {reason}"
        self.get_logger().error(message)
        self._stats.note_error(message)
        return FAILURE

    def stop_serving(self) -> None:
        """Stop the worker, destroy the subscription, watchdog and publishers (any state; idempotent)."""
        with self._lock:
            self._active = False
        for entity, destroy in ((self._sub, self.destroy_subscription), (self._watchdog, self.destroy_timer)):
            if entity is not None:
                destroy(entity)
        self._sub = self._watchdog = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=60.0)
            if self._worker.is_alive():
                self.get_logger().error("The inference worker did not stop within 60 s; leaving it behind.")
            self._worker = None
        self._stats.on_dropped(self._slot.clear())
        with self._lock:
            for pub in (self._verdict_pub, self._ood_pub):
                if pub is not None:
                    self.destroy_publisher(pub)
            self._verdict_pub = self._ood_pub = None

    @property
    def status_prefix(self) -> str:
        """Diagnostic status names start with the node's namespaced name: 'front/lsea_monitor'."""
        return self.get_fully_qualified_name().lstrip("/")

    def state_label(self) -> str:
        try:
            return str(self._state_machine.current_state[1])
        except Exception:  # noqa: BLE001 - a private rclpy detail; health must not fail on it
            return "unknown"

    # --- frames -------------------------------------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        recv_ns = time.monotonic_ns()
        self._last_input_ns = recv_ns
        self._stats.on_input(recv_ns / 1e9)
        try:
            rgb = msg_to_rgb(msg, max_pixels=self.params.max_image_pixels)
        except Exception as err:  # noqa: BLE001 - garbage in must never take the node down
            reason = f"rejected image: {_describe(err)}"
            self._stats.on_rejected(reason)
            self.get_logger().warning(reason, throttle_duration_sec=5.0)
            self._emit(msg.header, FrameScore.invalid(reason), recv_ns, NAN)
            return
        if self._slot.put(Frame(msg.header, rgb, recv_ns)):
            self._stats.on_dropped()

    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout_s=0.1)
            if frame is None:
                continue
            t0 = time.monotonic()
            try:
                # Seeded by the frame's stamp: a replay of the same frame gets the same MC draws.
                stamp_ns = frame.header.stamp.sec * 1_000_000_000 + frame.header.stamp.nanosec
                result = self._scorer.score_images([frame.rgb], seed=frame_seed(stamp_ns))[0]
            except Exception as err:  # noqa: BLE001 - contained: ERROR verdict, flag raised, keep serving
                result = FrameScore.invalid(f"inference failed: {_describe(err)}")
            inference_ms = (time.monotonic() - t0) * 1e3
            if not result.valid:
                self.get_logger().warning(f"No verdict for a frame: {result.reason}", throttle_duration_sec=5.0)
            latency_ms = self._emit(frame.header, result, frame.recv_ns, inference_ms)
            self._stats.on_processed(time.monotonic(), latency_ms=latency_ms, inference_ms=inference_ms,
                                     error="" if result.valid else result.reason)
            rate = self.params.max_rate_hz
            if rate > 0:
                self._stop.wait(max(0.0, t0 + 1.0 / rate - time.monotonic()))

    def _emit(self, header: Header, result: FrameScore, recv_ns: Optional[int], inference_ms: float) -> float:
        """Update the hysteresis and publish one verdict and the flag; return the latency in ms."""
        with self._lock:
            if not self._active or self._hysteresis is None:
                return NAN
            flag = self._hysteresis.update(result.is_ood) if result.valid else self._hysteresis.force_raise()
            latency_ms = NAN if recv_ns is None else (time.monotonic_ns() - recv_ns) / 1e6
            s = self._scorer
            msg = node_msgs.verdict_array(
                header, name=f"{self.status_prefix}: ood verdict", hardware_id=str(s.device), flag=flag,
                raw_is_ood=bool(result.is_ood), valid=result.valid, score=result.score, threshold=s.threshold,
                latency_ms=latency_ms, inference_ms=inference_ms, mc_samples=s.mc_samples, reason=result.reason)
            try:
                self._verdict_pub.publish(msg)
                self._ood_pub.publish(Bool(data=flag))
            except Exception as err:  # noqa: BLE001 - e.g. the context is shutting down
                self.get_logger().warning(f"Could not publish a verdict: {_describe(err)}", throttle_duration_sec=5.0)
            return latency_ms

    def _on_watchdog(self) -> None:
        timeout_s = self.params.watchdog_timeout_s
        idle_s = (time.monotonic_ns() - self._last_input_ns) / 1e9
        if timeout_s <= 0 or idle_s <= timeout_s:
            if self._stale:
                self._stale = False
                self.get_logger().info("Images are back: the watchdog cleared.")
            return
        # repeat at most every timeout_s (and at least every second) while stale
        if self._stale and (time.monotonic() - self._last_stale_s) < min(timeout_s, 1.0):
            return
        self._stale, self._last_stale_s = True, time.monotonic()
        reason = f"stale: no image on {self._sub.topic_name if self._sub else 'image'} for {idle_s:.1f} s " \
                 f"(watchdog_timeout_s {timeout_s:g})"
        self._stats.on_stale(reason)
        self.get_logger().warning(reason, throttle_duration_sec=5.0)
        self._emit(Header(stamp=self.get_clock().now().to_msg()), FrameScore.invalid(reason), None, NAN)

    # --- health and parameters ----------------------------------------------------------------
    def _make_health_timer(self) -> Any:
        return self.create_timer(self.params.diagnostics_period_s, self._publish_health, callback_group=self._groups[2])

    def _publish_health(self) -> None:
        msg = node_msgs.health_array(
            self._stats.snapshot(time.monotonic()), name=f"{self.status_prefix}: health", state=self.state_label(),
            stale=self._stale, scorer=self._scorer, mc_samples=self.params.mc_samples,
            input_topic=self._sub.topic_name if self._sub else "",
            flag=self._hysteresis.flag if self._hysteresis is not None else True)
        msg.header.stamp = self.get_clock().now().to_msg()
        with contextlib.suppress(Exception):  # shutting down
            self._health_pub.publish(msg)

    def _check_parameters(self, params: list) -> SetParametersResult:
        reason = node_params.check_change(self.params, params, self.state_label())
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_parameters(self, params: list) -> None:
        old, p = self.params, node_params.read(self)
        self.params = p
        if (old.raise_after, old.window, old.clear_after) != (p.raise_after, p.window, p.clear_after):
            with self._lock:  # a new hysteresis starts raised: fail closed until clear_after InD frames
                if self._hysteresis is not None:
                    self._hysteresis = self._new_hysteresis()
        if old.diagnostics_period_s != p.diagnostics_period_s:
            self.destroy_timer(self._health_timer)
            self._health_timer = self._make_health_timer()

    def _new_hysteresis(self) -> Hysteresis:
        p = self.params
        return Hysteresis(raise_after=p.raise_after, window=p.window, clear_after=p.clear_after)


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, LseaError) else f"{type(err).__name__}: {err}"


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); 1 when auto-start fails, 2 on bad parameters."""
    rclpy.init(args=args)
    node: Optional[MonitorNode] = None
    try:
        try:
            node = MonitorNode()
        except Exception as err:  # noqa: BLE001 - parameter errors: say which and exit non-zero
            print(f"[lsea_monitor] FATAL: could not start: {_describe(err)}", file=sys.stderr, flush=True)
            return 2
        if node.params.autostart:
            for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
                if trigger() != SUCCESS:
                    if not rclpy.ok():  # SIGINT/SIGTERM during start-up: a requested stop, not a failure
                        return 0
                    node.get_logger().fatal(f"Auto-start failed at {name}; exiting (see the error above).")
                    return 1
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_serving()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
