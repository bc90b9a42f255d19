"""MonitorNode in-process with a scripted scorer (no model): containment of inference exceptions,
the rate limit, the watchdog's repeat and recovery, runtime hysteresis changes. The real scorer is
exercised by the multi-process tests; these pin the node's own logic quickly."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from lsea_monitor.pipeline import FrameScore, frame_seed  # noqa: E402
from lsea_ros_testutil import node_in_process  # noqa: E402

pytestmark = pytest.mark.ros


class ScriptedScorer:
    """Stands in for FrameScorer; the first pixel says what to do: 255 raises, 200 scores 2.0 (OoD),
    150 hangs until ``release`` is set, anything else scores 0.0."""

    device, threshold, mc_samples, model_id, artefact_id = "cpu", 1.0, 4, "m" * 12, "a" * 12
    frame_seed = staticmethod(frame_seed)  # an artefact without a common seed: seeds from the stamps

    def __init__(self) -> None:
        self.next_kind = "ind"
        self.calls = 0
        self.release = threading.Event()

    def warmup(self) -> None:
        pass

    def score_images(self, images: list[np.ndarray], seed: int | None = None) -> list[FrameScore]:
        self.calls += 1
        kind = images[0][0, 0, 0]  # the test encodes the kind in the first pixel
        if kind == 255:
            raise RuntimeError("boom")
        if kind == 150:  # a hung inference (a wedged GPU, a deadlock)
            self.release.wait(timeout=60)
        score = 2.0 if kind == 200 else 0.0
        return [FrameScore(score=score, is_ood=score > self.threshold, valid=True)]


@pytest.fixture
def running(ros_domain_id: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    overrides = {"watchdog_timeout_s": 0.4, "hysteresis.raise_after": 1, "hysteresis.window": 1,
                 "hysteresis.clear_after": 1, "qos.reliability": "reliable", "diagnostics_period_s": 0.2}
    subscribe = {"verdicts": (DiagnosticArray, "/unit/lsea_monitor/verdict"), "flags": (Bool, "/unit/lsea_monitor/ood"),
                 "health": (DiagnosticArray, "/diagnostics")}
    scorer = ScriptedScorer()
    try:
        with node_in_process(scorer, monkeypatch, ros_domain_id, "unit", overrides, subscribe,
                             publish={"image": "/unit/image"}) as got:
            got["pub"] = got["pubs"]["image"]
            yield got
    finally:
        scorer.release.set()


def frame(kind: int, sec: int, encoding: str = "rgb8") -> Image:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0, 0] = kind
    msg = Image(height=8, width=8, encoding=encoding, step=24, data=rgb.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, f"k{kind}"
    return msg


def reasons(got: dict[str, Any], prefix: str) -> list[Any]:
    with got["lock"]:
        return [v for v in got["verdicts"]
                if any(kv.key == "reason" and kv.value.startswith(prefix) for kv in v.status[0].values)]


def last_health(got: dict[str, Any]) -> Any:
    """The newest health status of the node under test (None before the first)."""
    with got["lock"]:
        health = [h.status[0] for h in got["health"] if h.status[0].name == "unit/lsea_monitor: health"]
    return health[-1] if health else None


def health_says(got: dict[str, Any], message_prefix: str) -> bool:
    health = last_health(got)
    return health is not None and health.message.startswith(message_prefix)


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def verdict_for(got: dict[str, Any], sec: int, timeout_s: float = 10.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with got["lock"]:
            for v in got["verdicts"]:
                if v.header.stamp.sec == sec:
                    return {kv.key: kv.value for kv in v.status[0].values} | {"level": v.status[0].level}
        time.sleep(0.02)
    raise AssertionError(f"no verdict for stamp {sec}")


def test_inference_exception_gives_an_error_verdict_and_the_node_keeps_serving(running: dict[str, Any]) -> None:
    pub = running["pub"]
    pub.publish(frame(0, 1))
    assert verdict_for(running, 1)["is_ood"] == "false"
    pub.publish(frame(255, 2))
    v = verdict_for(running, 2)
    assert v["level"] == b"\x02" and v["valid"] == "false" and v["is_ood"] == "true"
    assert v["reason"] == "inference failed: RuntimeError: boom"
    pub.publish(frame(200, 3))
    v = verdict_for(running, 3)
    assert v["level"] == b"\x01" and v["raw_is_ood"] == "true" and v["score"] == "2.0"
    pub.publish(frame(0, 4))
    v = verdict_for(running, 4)
    assert v["level"] == b"\x00" and v["is_ood"] == "false" and v["threshold"] == "1.0" and v["mc_samples"] == "4"


def test_watchdog_repeats_stale_verdicts_then_recovers(running: dict[str, Any]) -> None:
    time.sleep(1.5)  # timeout 0.4 s: stale verdicts about every 0.4 s
    with running["lock"]:
        stale = [v for v in running["verdicts"]
                 if any(kv.key == "reason" and kv.value.startswith("stale") for kv in v.status[0].values)]
        flags = list(running["flags"])
    assert len(stale) >= 2 and all(v.status[0].level == b"\x02" for v in stale)
    assert flags and all(flags)
    gaps = [(b.header.stamp.sec + b.header.stamp.nanosec * 1e-9) - (a.header.stamp.sec + a.header.stamp.nanosec * 1e-9)
            for a, b in zip(stale, stale[1:])]
    # not every watchdog tick (0.1 s), not one per many timeouts (the upper bound leaves room for a
    # timer delayed on a loaded machine)
    assert all(0.3 < g < 2.0 for g in gaps), gaps
    running["pub"].publish(frame(0, 50))
    assert verdict_for(running, 50)["is_ood"] == "false"  # clear_after 1: recovered
    wait_for(lambda: last_health(running) is not None and last_health(running).level == b"\x00", 3.0)


def test_max_rate_limits_processing_and_counts_drops(running: dict[str, Any]) -> None:
    node = running["node"]
    node.set_parameters([Parameter("max_rate_hz", value=4.0)])
    calls0 = running["scorer"].calls
    t0 = time.monotonic()
    for i in range(40):  # 20 Hz for 2 s
        running["pub"].publish(frame(0, 100 + i))
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    processed = running["scorer"].calls - calls0
    assert processed <= 4.0 * elapsed + 2, (processed, elapsed)
    time.sleep(0.5)
    snap = node._stats.snapshot(time.monotonic())
    # (depth 1: DDS itself may replace a message the executor had not taken yet: not "received")
    assert snap.received >= 20 and snap.dropped >= snap.received - processed - 2


def test_runtime_hysteresis_change_restarts_raised(running: dict[str, Any]) -> None:
    node, pub = running["node"], running["pub"]
    pub.publish(frame(0, 200))
    assert verdict_for(running, 200)["is_ood"] == "false"
    result = node.set_parameters([Parameter("hysteresis.clear_after", value=2)])[0]
    assert result.successful
    pub.publish(frame(0, 201))
    assert verdict_for(running, 201)["is_ood"] == "true"  # fail closed until 2 InD frames
    pub.publish(frame(0, 202))
    assert verdict_for(running, 202)["is_ood"] == "false"
    bad = node.set_parameters([Parameter("hysteresis.raise_after", value=5)])[0]
    assert not bad.successful and "must not exceed hysteresis.window" in bad.reason


def test_two_threads_stopping_at_once_both_finish(running: dict[str, Any]) -> None:
    """A deactivate (executor thread) and the shutdown in main() may stop serving together."""
    node = running["node"]
    errors: list[BaseException] = []

    def stop() -> None:
        try:
            node.stop_serving()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors and node._worker is None and all(not t.is_alive() for t in threads)


def failing_waitable(callback_group: Any, failures: int) -> Any:
    """A waitable whose first ``failures`` wait-set registrations raise InvalidHandle, as a
    subscription's QoS event handler does when a transition destroys it meanwhile (rclpy#1284)."""
    from rclpy.exceptions import InvalidHandle
    from rclpy.waitable import NumberOfEntities, Waitable

    class Failing(Waitable):
        def __init__(self) -> None:
            super().__init__(callback_group)
            self.failures = failures

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            return None

        def add_to_wait_set(self, wait_set: Any) -> None:
            if self.failures > 0:
                self.failures -= 1
                raise InvalidHandle("cannot use Destroyable because destruction was requested")

        def is_ready(self, wait_set: Any) -> bool:
            return False

        def get_num_entities(self) -> NumberOfEntities:
            return NumberOfEntities()

        def take_data(self) -> None:
            return None

        async def execute(self, taken_data: Any) -> None:
            return None

    return Failing()


@pytest.mark.parametrize("failures", [0, 3, 10_000])
def test_spin_survives_an_entity_destroyed_while_the_wait_set_is_built(ros_domain_id: int, failures: int) -> None:
    """main() spins with spin_until_shutdown: a transient InvalidHandle (an entity destroyed by a
    transition) no longer ends the node; a persistent one is still raised; plain spin() is the control."""
    from rclpy.exceptions import InvalidHandle
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from lsea_monitor.node import MAX_CONSECUTIVE_INVALID_HANDLES, spin_until_shutdown

    def setup() -> tuple[Any, Any, Any, list[int]]:
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=ros_domain_id, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("spin_probe", context=ctx)
        waitable = failing_waitable(node.default_callback_group, failures)
        node.add_waitable(waitable)
        ticks: list[int] = []
        node.create_timer(0.05, lambda: ticks.append(1))
        executor = MultiThreadedExecutor(num_threads=2, context=ctx)
        executor.add_node(node)
        return ctx, node, executor, ticks

    ctx, node, executor, ticks = setup()
    outcome: dict[str, Any] = {}

    def spin() -> None:
        try:
            outcome["survived"] = spin_until_shutdown(executor)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(ticks) < 5 and "error" not in outcome and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        executor.shutdown(timeout_sec=5)
        rclpy.try_shutdown(context=ctx)
        thread.join(timeout=10)
        node.destroy_node()
    if failures > MAX_CONSECUTIVE_INVALID_HANDLES:
        assert isinstance(outcome.get("error"), InvalidHandle)
        return
    assert "error" not in outcome and len(ticks) >= 5  # timers kept firing after the failures
    assert outcome["survived"] == failures
    if failures:  # control: rclpy's own spin() ends on the first one
        ctx, node, executor, _ = setup()
        try:
            with pytest.raises(InvalidHandle):
                executor.spin()
        finally:
            executor.shutdown(timeout_sec=5)
            rclpy.try_shutdown(context=ctx)
            node.destroy_node()


def test_a_hung_inference_gives_stalled_verdicts_and_health_error_then_recovers(running: dict[str, Any]) -> None:
    """Images keep arriving (so the input watchdog is quiet) but the worker is stuck in a pass:
    the consumer must not keep reading the last 'in distribution'."""
    node, pub = running["node"], running["pub"]
    node.set_parameters([Parameter("inference_timeout_s", value=0.5)])
    # the input watchdog (0.4 s in this fixture) would turn the health to "stale" once the frames stop,
    # racing the health messages this test waits for
    assert node.set_parameters([Parameter("watchdog_timeout_s", value=60.0)])[0].successful
    pub.publish(frame(0, 1))
    assert verdict_for(running, 1)["is_ood"] == "false"
    pub.publish(frame(150, 2))  # hangs
    for i in range(15):  # 10 Hz for 1.5 s
        time.sleep(0.1)
        pub.publish(frame(0, 10 + i))
    wait_for(lambda: len(reasons(running, "stalled")) >= 1)
    (stalled, *_) = reasons(running, "stalled")
    values = {kv.key: kv.value for kv in stalled.status[0].values}
    assert stalled.status[0].level == b"\x02" and values["is_ood"] == "true" and values["valid"] == "false"
    assert "none has got a verdict" in values["reason"] and "inference_timeout_s 0.5" in values["reason"]
    wait_for(lambda: running["flags"][-1].data is True, 3.0)  # the flag travels on its own topic
    wait_for(lambda: health_says(running, "inference stalled"), 3.0)
    assert last_health(running).level == b"\x02"
    running["scorer"].release.set()  # the pass returns: verdicts again, the watchdog clears
    pub.publish(frame(0, 40))
    assert verdict_for(running, 40)["is_ood"] == "false"  # clear_after 1
    wait_for(lambda: health_says(running, "monitoring"), 3.0)


def test_frames_that_cannot_be_judged_make_health_error_until_one_can(running: dict[str, Any]) -> None:
    """A camera on an unsupported encoding: every verdict is an ERROR, and so is the node's health."""
    node, pub = running["node"], running["pub"]
    # this fixture's 0.4 s watchdog would turn the health to "stale" soon after the last frame, before
    # a loaded machine shows the "not judging" health this test is about
    assert node.set_parameters([Parameter("watchdog_timeout_s", value=60.0)])[0].successful
    for i in range(3):  # one at a time: the node's subscription keeps only the newest (depth 1)
        pub.publish(frame(0, 60 + i, encoding="bgra8"))
        assert verdict_for(running, 60 + i)["valid"] == "false"
    wait_for(lambda: health_says(running, "not judging: the last 3 frame(s)"), 3.0)
    health = last_health(running)
    values = {kv.key: kv.value for kv in health.values}
    assert health.level == b"\x02"
    assert health.message.startswith("not judging: the last 3 frame(s) got no verdict (rejected image:")
    assert values["unjudged_in_a_row"] == "3" and values["rejected"] == "3"
    pub.publish(frame(0, 70))
    assert verdict_for(running, 70)["valid"] == "true"
    wait_for(lambda: health_says(running, "monitoring"), 3.0)


def test_lifting_the_rate_limit_applies_at_once(running: dict[str, Any]) -> None:
    node, pub = running["node"], running["pub"]
    assert node.set_parameters([Parameter("inference_timeout_s", value=30.0)])[0].successful
    node.set_parameters([Parameter("max_rate_hz", value=0.1)])  # the worker then rests 10 s after a frame
    pub.publish(frame(0, 80))
    verdict_for(running, 80)
    assert node.set_parameters([Parameter("max_rate_hz", value=0.0)])[0].successful
    t0 = time.monotonic()
    pub.publish(frame(0, 81))
    verdict_for(running, 81)
    assert time.monotonic() - t0 < 5.0  # not the rest of the old 10 s period
    (refused,) = node.set_parameters([Parameter("max_rate_hz", value=0.02)])  # 50 s >= inference_timeout_s
    assert not refused.successful and "inference_timeout_s" in refused.reason


def test_deactivate_publishes_a_last_not_monitoring_verdict_and_a_raised_flag(running: dict[str, Any]) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node, pub = running["node"], running["pub"]
    pub.publish(frame(0, 90))
    assert verdict_for(running, 90)["is_ood"] == "false"
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    wait_for(lambda: reasons(running, "not monitoring"), 3.0)
    (last,) = reasons(running, "not monitoring")
    assert last.status[0].level == b"\x02"
    wait_for(lambda: running["flags"][-1].data is True, 3.0)
    wait_for(lambda: health_says(running, "not monitoring (lifecycle state inactive)"), 3.0)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS  # serves again


def test_activate_is_refused_while_a_hung_worker_from_before_is_still_running(running: dict[str, Any]) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node = running["node"]
    stray = threading.Thread(target=running["scorer"].release.wait, args=(60,), daemon=True)
    stray.start()
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    node._stray_worker = stray  # as stop_serving leaves a worker that did not stop within 60 s
    assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS
    assert "previous activation is still running" in node._stats.snapshot(time.monotonic()).last_error
    running["scorer"].release.set()
    stray.join(timeout=5)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def test_a_warm_up_that_hangs_fails_activate_within_warmup_timeout_s(running: dict[str, Any]) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node, scorer = running["node"], running["scorer"]
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.set_parameters([Parameter("warmup_timeout_s", value=0.5)])[0].successful
    scorer.warmup = lambda: scorer.release.wait(timeout=60)  # a wedged device: the first pass never returns
    t0 = time.monotonic()
    assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS
    assert time.monotonic() - t0 < 5.0
    assert "warm-up did not finish within warmup_timeout_s (0.5 s)" in node._stats.snapshot(time.monotonic()).last_error
    assert node._state_machine.current_state[1] == "inactive"
    # the hung worker is left behind: no second worker beside it
    assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS
    assert "previous activation is still running" in node._stats.snapshot(time.monotonic()).last_error
    stray = node._stray_worker
    scorer.release.set()
    stray.join(timeout=5)
    assert not stray.is_alive(), "the left-behind worker did not end once its warm-up returned"
    scorer.release.clear()
    scorer.warmup = lambda: None
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    running["pub"].publish(frame(0, 120))
    assert verdict_for(running, 120)["is_ood"] == "false"


def test_stop_spinner_ends_the_spin_thread_before_teardown(ros_domain_id: int) -> None:
    """main()'s exit path: the spin thread is ended through the context (which wakes its wait) before
    the executor and the node are torn down; both would crash the process under a spinning thread."""
    from rclpy.executors import MultiThreadedExecutor

    from lsea_monitor.node import spin_until_shutdown, stop_spinner

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    node = rclpy.create_node("spinner_probe", context=ctx)
    node.create_timer(0.05, lambda: None)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=spin_until_shutdown, args=(executor,), daemon=True)
    spinner.start()
    time.sleep(0.3)
    assert spinner.is_alive()
    t0 = time.monotonic()
    try:
        assert stop_spinner(spinner, timeout_s=10.0, context=ctx) is False  # False: it has stopped
        assert not spinner.is_alive() and time.monotonic() - t0 < 5.0 and not ctx.ok()
        assert stop_spinner(spinner, context=ctx) is False and stop_spinner(None) is False  # idempotent
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
