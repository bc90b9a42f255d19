"""``lsea_monitor_node``: the ROS 2 lifecycle node around :class:`~lsea_monitor.pipeline.FrameScorer`.

The subscription callback only converts and validates a frame and puts it into a one-slot buffer
(newest wins, overwrites are counted as drops); a worker thread scores it and publishes
``~/verdict`` (DiagnosticArray, the image's header) and ``~/ood`` (Bool, the debounced flag). Node
health goes to ``/diagnostics`` in every lifecycle state, the auto-start included. Anything that
prevents a verdict (a bad image, a model error, no input for ``watchdog_timeout_s``, input but no
verdict for ``inference_timeout_s``) gives an ERROR verdict and raises the flag, and so does
deactivating. With ``image_topics`` the node serves several cameras: one slot, hysteresis and
watchdog per camera, the newest frame of each scored in one batched forward pass, verdicts on
``~/<camera>/verdict`` and ``~/<camera>/ood`` (:mod:`lsea_monitor.node_cameras`). The worker thread
also runs the warm-up (compiled code and CUDA graphs are per thread). Parameters:
:mod:`lsea_monitor.node_params`; bookkeeping: :mod:`lsea_monitor.node_stats`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional


def _stop_during_imports(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM while the imports below run (seconds: torch, rclpy): a requested stop, exit 0."""
    print("[lsea_monitor] stop requested during start-up; exiting.", file=sys.stderr, flush=True)
    os._exit(0)  # nothing to clean up yet; a half-finished import must not run its finalisers


# Only when this module is the program (python -m lsea_monitor.node, or the lsea_monitor_node
# console script), and only until main() hands SIGINT/SIGTERM to rclpy.
_EARLY_SIGNALS = __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "lsea_monitor_node"
if _EARLY_SIGNALS:
    signal.signal(signal.SIGINT, _stop_during_imports)
    signal.signal(signal.SIGTERM, _stop_during_imports)

# ruff: noqa: E402 - the imports below come after the early signal handlers on purpose
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, ShutdownException
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header

from lsea_monitor import node_msgs, node_params
from lsea_monitor.errors import LseaError
from lsea_monitor.node_cameras import (WATCHDOG_ACTIONS, CameraChannel, CameraSlots, Watchdog, health_values,
                                       parse_image_topics)
from lsea_monitor.node_stats import NodeStats
from lsea_monitor.pipeline import FrameScore, FrameScorer, Hysteresis
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
        self._slots: CameraSlots[Frame] = CameraSlots(1)
        self._lock = threading.Lock()  # hysteresis, publishers and _active
        # A lifecycle transition (executor thread) and shutdown (main thread) may both stop serving.
        self._stop_serving_lock = threading.Lock()
        self._stop = threading.Event()  # the current worker's; every activation makes a new one
        self._worker: Optional[threading.Thread] = None
        # A worker that did not stop at deactivate (a hung inference): no new one may start beside it.
        self._stray_worker: Optional[threading.Thread] = None
        self._scorer: Optional[FrameScorer] = None
        self._channels: list[CameraChannel] = []  # one per camera while active
        self._active = False
        self._watchdog = None
        self._groups = [MutuallyExclusiveCallbackGroup() for _ in range(2)]  # watchdog, health
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
            speed = {"scoring": p.scoring, "channels_last": p.channels_last,
                     "compile_mode": p.compile_mode if p.compile else None}
            self._scorer = FrameScorer.from_files(checkpoint=p.checkpoint, model_class=p.model_class, layer=p.layer,
                                                  artefact=p.artefact, device=p.device, precision=p.precision,
                                                  mc_samples=p.mc_samples, trust_checkpoint=p.trust_checkpoint,
                                                  **speed)
        except Exception as err:  # noqa: BLE001 - any load failure is a configure FAILURE with its message
            return self._fail("configure", _describe(err))
        s = self._scorer
        self.get_logger().info(f"Configured: model {s.model_id}, artefact {s.artefact_id}, device {s.device}, "
                               f"M={s.mc_samples}, threshold {s.threshold:.6g}")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        if self._stray_worker is not None and self._stray_worker.is_alive():
            # Two workers would share the scorer (not thread-safe) and the old one's verdicts would
            # land on the new channels.
            return self._fail("activate", "the inference worker of the previous activation is still running (its "
                              "inference hung at deactivate); restart the node")
        now_ns = time.monotonic_ns()
        self._channels = [CameraChannel(cam, self._new_hysteresis(), Watchdog(now_ns))
                          for cam in parse_image_topics(p.image_topics)]
        self._slots = CameraSlots(len(self._channels))
        self._stop = stop = threading.Event()
        warmed, ready = {}, threading.Event()
        self._worker = threading.Thread(target=self._work, args=(stop, warmed, ready), name="lsea_monitor_worker",
                                        daemon=True)
        self._worker.start()
        if not ready.wait(timeout=p.warmup_timeout_s or None):
            # A warm-up that never returns (a wedged GPU, a compile that hangs) would keep the node in
            # "activating" for ever; fail the transition instead. The worker cannot be interrupted: it
            # is left behind like a hung inference at deactivate and blocks the next activate until it
            # returns (it then sees its stop event and ends without serving).
            stop.set()
            self._stray_worker, self._worker = self._worker, None
            self.stop_serving()
            return self._fail("activate", f"warm-up did not finish within warmup_timeout_s ({p.warmup_timeout_s:g} s); "
                              "raise it if the warm-up is only slow (torch.compile on a CPU), else restart the node")
        if "error" in warmed:
            self.stop_serving()
            return self._fail("activate", f"warm-up failed: {warmed['error']}")
        reliability = ReliabilityPolicy.RELIABLE if p.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=p.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
        msg_type = CompressedImage if p.input_type == "compressed" else Image
        self._stats.reset(time.monotonic())
        with self._lock:
            self._active = True
        for i, ch in enumerate(self._channels):  # a callback group per camera: cameras convert in parallel
            ch.watchdog.reset(time.monotonic_ns())
            ch.verdict_pub = self.create_publisher(DiagnosticArray, ch.camera.verdict_topic, OUT_QOS)
            ch.ood_pub = self.create_publisher(Bool, ch.camera.ood_topic, OUT_QOS)
            ch.sub = self.create_subscription(msg_type, ch.camera.topic, partial(self._on_image, camera=i), qos,
                                              callback_group=MutuallyExclusiveCallbackGroup())
            ch.subscribed_topic = ch.sub.topic_name
            self.get_logger().info(f"Active: {p.input_type} images on {ch.sub.topic_name} ({p.qos_reliability}, "
                                   f"depth {p.qos_depth}) -> {ch.verdict_pub.topic_name}, {ch.ood_pub.topic_name}")
        self._watchdog = self.create_timer(0.1, self._on_watchdog, callback_group=self._groups[0])
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
        """Stop the worker, destroy the subscription, watchdog and publishers (any state; idempotent,
        safe to call from several threads at once)."""
        with self._stop_serving_lock:
            with self._lock:
                self._active = False
            # Cleared before they are destroyed: health and the watchdog run on other threads.
            subs, watchdog = [c.sub for c in self._channels], self._watchdog
            for ch in self._channels:
                ch.sub, ch.subscribed_topic = None, ""
            self._watchdog = None
            for entity, destroy in [(s, self.destroy_subscription) for s in subs] + [(watchdog, self.destroy_timer)]:
                if entity is not None:
                    destroy(entity)
            self._stop.set()
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.join(timeout=60.0)
                if worker.is_alive():
                    self._stray_worker = worker
                    self.get_logger().error("The inference worker did not stop within 60 s (a hung inference); "
                                            "leaving it behind: the node cannot be activated again until it returns.")
            self._stats.on_dropped(self._slots.clear())
            now_ns = time.monotonic_ns()
            with self._lock:
                for ch in self._channels:
                    if ch.verdict_pub is not None:
                        # Fail closed for consumers that keep the last value: the monitor stops judging.
                        self._publish_verdict(ch, Header(stamp=self.get_clock().now().to_msg()),
                                              FrameScore.invalid("not monitoring: the node was deactivated"), NAN, NAN)
                    for pub in (p for p in (ch.verdict_pub, ch.ood_pub) if p is not None):
                        self.destroy_publisher(pub)
                    ch.verdict_pub = ch.ood_pub = None
                    ch.watchdog.reset(now_ns)  # not stale: not monitoring (health says which)
                    ch.invalid_streak = 0

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
    def _on_image(self, msg: Any, camera: int = 0) -> None:
        recv_ns = time.monotonic_ns()
        self._channels[camera].watchdog.on_input(recv_ns)
        self._stats.on_input(recv_ns / 1e9)
        try:
            rgb = msg_to_rgb(msg, max_pixels=self.params.max_image_pixels)
        except Exception as err:  # noqa: BLE001 - garbage in must never take the node down
            reason = f"rejected image: {_describe(err)}"
            self._stats.on_rejected(reason)
            self.get_logger().warning(reason, throttle_duration_sec=5.0)
            self._emit(camera, msg.header, FrameScore.invalid(reason), recv_ns, NAN)
            return
        if self._slots.put(camera, Frame(msg.header, rgb, recv_ns)):
            self._stats.on_dropped()

    def _work(self, stop: threading.Event, warmed: dict[str, str], ready: threading.Event) -> None:
        try:  # here, not in on_activate: compiled code and CUDA graphs belong to the thread that warmed them
            n = len(self._channels)
            self._scorer.warmup() if n == 1 else self._scorer.warmup(batch_sizes=range(1, n + 1))
        except Exception as err:  # noqa: BLE001 - reported by on_activate as a FAILURE
            warmed["error"] = _describe(err)
        ready.set()
        while "error" not in warmed and not stop.is_set():
            taken = self._slots.take_all(timeout_s=0.1, gather_s=self.params.batch_gather_ms / 1e3)
            if not taken:
                continue
            t0 = time.monotonic()
            frames = [f for _, f in taken]
            # The artefact's common seed (else the frame's stamp): a replay of the same frame gets the same
            # MC draws, batched or not.
            seeds = [self._scorer.frame_seed(f.header.stamp.sec * 1_000_000_000 + f.header.stamp.nanosec)
                     for f in frames]
            try:
                results = (self._scorer.score_images([frames[0].rgb], seed=seeds[0]) if len(frames) == 1 else
                           self._scorer.score_images([f.rgb for f in frames], seeds=seeds))
            except Exception as err:  # noqa: BLE001 - contained: ERROR verdicts, flags raised, keep serving
                results = [FrameScore.invalid(f"inference failed: {_describe(err)}")] * len(frames)
            if stop.is_set():  # stopped while scoring (a deactivate waited for this pass): publish nothing
                break
            inference_ms = (time.monotonic() - t0) * 1e3
            for (camera, frame), result in zip(taken, results):
                if not result.valid:
                    self.get_logger().warning(f"No verdict for a frame: {result.reason}", throttle_duration_sec=5.0)
                latency_ms = self._emit(camera, frame.header, result, frame.recv_ns, inference_ms)
                self._stats.on_processed(time.monotonic(), latency_ms=latency_ms, inference_ms=inference_ms,
                                         error="" if result.valid else result.reason)
            while not stop.is_set():  # the rate limit, re-read so that a change applies at once
                rate = self.params.max_rate_hz
                left = t0 + 1.0 / rate - time.monotonic() if rate > 0 else 0.0
                if left <= 0:
                    break
                stop.wait(min(left, 0.05))

    def _emit(self, camera: int, header: Header, result: FrameScore, recv_ns: Optional[int],
              inference_ms: float) -> float:
        """Update the camera's hysteresis and publish its verdict and flag; return the latency in ms."""
        with self._lock:
            if not self._active:
                return NAN
            ch = self._channels[camera]
            now_ns = time.monotonic_ns()
            latency_ms = NAN
            if recv_ns is not None:  # a verdict for a frame (not the watchdog's)
                latency_ms = (now_ns - recv_ns) / 1e6
                ch.watchdog.on_verdict(now_ns, recv_ns)
                ch.invalid_streak = 0 if result.valid else ch.invalid_streak + 1
            self._publish_verdict(ch, header, result, latency_ms, inference_ms)
            return latency_ms

    def _publish_verdict(self, ch: CameraChannel, header: Header, result: FrameScore, latency_ms: float,
                         inference_ms: float) -> None:
        """Update ``ch``'s hysteresis and publish its verdict and flag (caller holds ``_lock``)."""
        flag = ch.hysteresis.update(result.is_ood) if result.valid else ch.hysteresis.force_raise()
        s = self._scorer
        msg = node_msgs.verdict_array(
            header, name=ch.camera.status_name(self.status_prefix), hardware_id=str(s.device) if s else "",
            flag=flag, raw_is_ood=bool(result.is_ood), valid=result.valid, score=result.score,
            threshold=s.threshold if s else NAN, latency_ms=latency_ms, inference_ms=inference_ms,
            mc_samples=s.mc_samples if s else self.params.mc_samples, reason=result.reason)
        try:
            ch.verdict_pub.publish(msg)
            ch.ood_pub.publish(Bool(data=flag))
        except Exception as err:  # noqa: BLE001 - e.g. the context is shutting down
            self.get_logger().warning(f"Could not publish a verdict: {_describe(err)}", throttle_duration_sec=5.0)

    def _on_watchdog(self) -> None:
        timeout_s, stall_s = self.params.watchdog_timeout_s, self.params.inference_timeout_s
        for i, ch in enumerate(self._channels):
            now_ns = time.monotonic_ns()
            action = ch.watchdog.check(now_ns, timeout_s, stall_s)
            if action == "cleared":
                self.get_logger().info(f"Images and verdicts are back on {ch.camera.topic}: the watchdog cleared.")
            if action not in WATCHDOG_ACTIONS:
                continue
            topic = ch.subscribed_topic or ch.camera.topic
            if action == "stale":
                reason = f"stale: no image on {topic} for {ch.watchdog.idle_s(now_ns):.1f} s " \
                         f"(watchdog_timeout_s {timeout_s:g})"
            else:
                reason = f"stalled: images arrive on {topic} but none has got a verdict for " \
                         f"{ch.watchdog.waiting_s(now_ns):.1f} s (inference_timeout_s {stall_s:g}): inference hung " \
                         "or too slow"
            self._stats.on_stale(reason)
            self.get_logger().warning(reason, throttle_duration_sec=5.0)
            self._emit(i, Header(stamp=self.get_clock().now().to_msg()), FrameScore.invalid(reason), None, NAN)

    # --- health and parameters ----------------------------------------------------------------
    def _make_health_timer(self) -> Any:
        return self.create_timer(self.params.diagnostics_period_s, self._publish_health, callback_group=self._groups[1])

    def _publish_health(self) -> None:
        chans = list(self._channels)
        msg = node_msgs.health_array(
            self._stats.snapshot(time.monotonic()), name=f"{self.status_prefix}: health", state=self.state_label(),
            stale=any(c.watchdog.no_input for c in chans),
            stalled=any(c.watchdog.stalled for c in chans),
            invalid_streak=max((c.invalid_streak for c in chans), default=0),
            scorer=self._scorer, mc_samples=self.params.mc_samples,
            input_topic=",".join(t for t in (c.subscribed_topic for c in chans) if t), extra=health_values(chans),
            flag=any(c.hysteresis.flag for c in chans) if chans else True)
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
                for ch in self._channels:
                    ch.hysteresis = self._new_hysteresis()
        if old.diagnostics_period_s != p.diagnostics_period_s:
            self.destroy_timer(self._health_timer)
            self._health_timer = self._make_health_timer()

    def _new_hysteresis(self) -> Hysteresis:
        p = self.params
        return Hysteresis(raise_after=p.raise_after, window=p.window, clear_after=p.clear_after)


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, LseaError) else f"{type(err).__name__}: {err}"


#: Consecutive InvalidHandle errors spin_until_shutdown survives before it gives up.
MAX_CONSECUTIVE_INVALID_HANDLES = 100
#: How long the exit path waits for the spin thread (it normally returns within one 0.5 s spin period).
SPINNER_STOP_TIMEOUT_S = 5.0


def collect_unfinished_callbacks(executor: MultiThreadedExecutor) -> list[BaseException]:
    """After ``executor.shutdown``: the exceptions of callbacks that ended after the last ``spin_once``.

    rclpy's shutdown does not wait for callbacks already handed to its thread pool (it sets its
    shutdown flag before testing it), so a health timer or a subscription callback racing with
    the teardown can end in InvalidHandle with nobody to read it, and its Future then prints "The
    following exception was never retrieved" at exit. Reading them here (they belong to a node
    that is going away) keeps the log clean; the caller decides whether to log them.
    """
    errors = []
    for future in list(getattr(executor, "_futures", ())):  # MultiThreadedExecutor's pending handlers
        if future.done() and future.exception() is not None:
            errors.append(future.exception())
    return errors


def spin_until_shutdown(executor: MultiThreadedExecutor, on_invalid_handle: Any = None) -> int:
    """``executor.spin()`` that survives an entity destroyed while the executor builds its wait set.

    Deactivate and cleanup destroy the subscriptions in an executor thread; rclpy can meet a
    subscription's QoS event handler half destroyed in the thread building the wait set and raise
    InvalidHandle out of ``spin`` (ros2/rclpy#1284, #1206), which would end the node after a normal
    transition. The next wait set no longer holds the destroyed entity, so spinning on is correct;
    only a persistent failure is re-raised. Returns how many were survived, once the context is
    shut down (SIGINT/SIGTERM) or the executor is.
    """
    survived = consecutive = 0
    while executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.5)
            consecutive = 0
        except ShutdownException:  # executor.shutdown() from another thread
            break
        except InvalidHandle:
            survived, consecutive = survived + 1, consecutive + 1
            if consecutive > MAX_CONSECUTIVE_INVALID_HANDLES:
                raise
            if on_invalid_handle is not None:
                on_invalid_handle()
        except Exception:  # noqa: BLE001
            if executor.context.ok():
                raise
            # SIGINT/SIGTERM shut the context down while the executor built its wait set: rclpy then
            # raises RCLError ("the given context is not valid") instead of ExternalShutdownException.
            break
    return survived


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); 1 when auto-start fails, 2 on bad parameters."""
    teardown: dict[str, bool] = {}
    code = _run_node(args, teardown)
    if teardown.get("spinner_stuck"):
        # The spin thread did not stop: tearing rclpy down under it, or letting the interpreter
        # finalise around it, can crash the process (SIGSEGV). Leave with the right code instead.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_node(args: Optional[list[str]], teardown: dict[str, bool]) -> int:
    if _EARLY_SIGNALS:  # the defaults again: rclpy.init installs its handlers over them
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The inference worker gives the GIL back at every torch op and must win it again each time;
    # with the executor's threads busy at camera rate, the default 5 ms switch interval turned a
    # 100 ms forward pass into up to 1.8 s (the soak test's p99). 0.5 ms keeps it near its own cost.
    sys.setswitchinterval(0.0005)
    # A crash in native code (rclpy, DDS, torch) then leaves every thread's Python stack in the log.
    faulthandler.enable()
    rclpy.init(args=args)
    node: Optional[MonitorNode] = None
    executor: Optional[MultiThreadedExecutor] = None
    spinner: Optional[threading.Thread] = None
    spin_error: list[BaseException] = []
    try:
        try:
            node = MonitorNode()
        except Exception as err:  # noqa: BLE001 - parameter errors: say which and exit non-zero
            print(f"[lsea_monitor] FATAL: could not start: {_describe(err)}", file=sys.stderr, flush=True)
            return 2
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)

        def spin() -> None:
            try:
                spin_until_shutdown(executor, lambda: node.get_logger().debug(
                    "An entity destroyed by a transition was in the wait set being built (rclpy#1284); spinning on."))
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                spin_error.append(err)

        # Spin from the start, so that node health reaches /diagnostics (and the lifecycle services
        # answer) while the auto-start below loads the model and warms it up: seconds on a CPU,
        # minutes with torch.compile.
        spinner = threading.Thread(target=spin, name="lsea_monitor_spin", daemon=True)
        spinner.start()
        if node.params.autostart:
            for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
                if trigger() != SUCCESS:
                    if not rclpy.ok():  # SIGINT/SIGTERM during start-up: a requested stop, not a failure
                        return 0
                    node.get_logger().fatal(f"Auto-start failed at {name}; exiting (see the error above).")
                    return 1
        while spinner.is_alive():  # until SIGINT/SIGTERM shuts the context down
            spinner.join(timeout=0.5)
        if spin_error:
            raise spin_error[0]
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        if rclpy.ok():
            raise
        # A stop request during start-up shut the context down under a transition (RCLError).
    finally:
        if node is not None:
            node.stop_serving()
        if stop_spinner(spinner):
            teardown["spinner_stuck"] = True
            if node is not None:
                node.get_logger().warning(f"The spin thread did not stop within {SPINNER_STOP_TIMEOUT_S:g} s of "
                                          "the shutdown; exiting without tearing rclpy down under it.")
        else:
            if executor is not None:
                executor.shutdown(timeout_sec=5.0)
            if executor is not None and node is not None:
                for err in collect_unfinished_callbacks(executor):
                    node.get_logger().debug(f"A callback racing with the shutdown ended in {_describe(err)}.")
            if node is not None:  # never under a spinning thread (rclpy#663)
                node.destroy_node()
            rclpy.try_shutdown()
    return 0


def stop_spinner(spinner: Optional[threading.Thread], timeout_s: float = SPINNER_STOP_TIMEOUT_S,
                 context: Optional[rclpy.context.Context] = None) -> bool:
    """End the spin thread before the executor and the node are torn down; True if it still runs.

    The spin thread may still be inside its wait when the main thread gets here (a SIGINT raises
    KeyboardInterrupt in the main thread while the spin thread is only being woken). rclpy's
    ``executor.shutdown`` destroys the guard condition that wait holds without waiting for it, and
    destroying a node under a spinning thread is not supported either: either can crash the
    process (SIGSEGV at exit). Shutting the context down wakes the wait the supported way, and
    spin_until_shutdown then returns within one spin period.
    """
    if spinner is None or not spinner.is_alive():
        return False
    rclpy.try_shutdown(context=context)
    spinner.join(timeout=timeout_s)
    return spinner.is_alive()


if __name__ == "__main__":
    sys.exit(main())
