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
    """Stands in for FrameScorer: frame_id 'boom' raises, 'ood' scores 2.0, anything else 0.0."""

    device, threshold, mc_samples, model_id, artefact_id = "cpu", 1.0, 4, "m" * 12, "a" * 12
    frame_seed = staticmethod(frame_seed)  # an artefact without a common seed: seeds from the stamps

    def __init__(self) -> None:
        self.next_kind = "ind"
        self.calls = 0

    def warmup(self) -> None:
        pass

    def score_images(self, images: list[np.ndarray], seed: int | None = None) -> list[FrameScore]:
        self.calls += 1
        kind = images[0][0, 0, 0]  # the test encodes the kind in the first pixel
        if kind == 255:
            raise RuntimeError("boom")
        score = 2.0 if kind == 200 else 0.0
        return [FrameScore(score=score, is_ood=score > self.threshold, valid=True)]


@pytest.fixture
def running(ros_domain_id: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    overrides = {"watchdog_timeout_s": 0.4, "hysteresis.raise_after": 1, "hysteresis.window": 1,
                 "hysteresis.clear_after": 1, "qos.reliability": "reliable", "diagnostics_period_s": 0.2}
    subscribe = {"verdicts": (DiagnosticArray, "/unit/lsea_monitor/verdict"), "flags": (Bool, "/unit/lsea_monitor/ood"),
                 "health": (DiagnosticArray, "/diagnostics")}
    with node_in_process(ScriptedScorer(), monkeypatch, ros_domain_id, "unit", overrides, subscribe,
                         publish={"image": "/unit/image"}) as got:
        got["pub"] = got["pubs"]["image"]
        yield got


def frame(kind: int, sec: int) -> Image:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0, 0] = kind
    msg = Image(height=8, width=8, encoding="rgb8", step=24, data=rgb.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, f"k{kind}"
    return msg


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
    assert all(0.3 < g < 1.0 for g in gaps), gaps
    running["pub"].publish(frame(0, 50))
    assert verdict_for(running, 50)["is_ood"] == "false"  # clear_after 1: recovered
    time.sleep(0.3)
    with running["lock"]:
        health = [h for h in running["health"] if h.status[0].name == "unit/lsea_monitor: health"]
    assert health and health[-1].status[0].level == b"\x00"


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
    assert snap.received >= 30 and snap.dropped >= snap.received - processed - 2


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
