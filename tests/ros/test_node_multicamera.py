"""Several cameras in one node (``image_topics``): one batched forward pass for the newest frame of
each camera, verdicts and flags per camera on ``~/<camera>/verdict`` and ``~/<camera>/ood``, per-camera
hysteresis and watchdog.

In-process with a scripted scorer (fast, pins the batching and the per-camera logic), then the real
node as a process fed by two camera processes, verdicts matched to each camera by stamp.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from lsea_monitor.pipeline import FrameScore, frame_seed  # noqa: E402
from lsea_ros_testutil import (  # noqa: E402
    NODE_STARTUP_TIMEOUT_S,
    NodeProcess,
    Probe,
    StreamFrames,
    health_values,
    node_in_process,
    node_command,
    replay_hysteresis,
    run_publisher,
    stamp_key,
    values,
)

pytestmark = pytest.mark.ros
CAMERAS = ("front", "rear")


# --------------------------------------------------------------------------------------------
# In-process, scripted scorer
# --------------------------------------------------------------------------------------------
class BatchScorer:
    """Stands in for FrameScorer: first pixel 200 scores 2.0 (OoD), anything else 0.0; records batches."""

    device, threshold, mc_samples, model_id, artefact_id = "cpu", 1.0, 4, "m" * 12, "a" * 12
    frame_seed = staticmethod(frame_seed)  # an artefact without a common seed: seeds from the stamps

    def __init__(self) -> None:
        self.batches: list[tuple[int, Any]] = []  # (size, seeds)
        self.warmed: list[int] = []

    def warmup(self, iterations: int = 2, batch_sizes: Any = (1,)) -> None:
        self.warmed = list(batch_sizes)

    def score_images(self, images: list[np.ndarray], seed: int | None = None,
                     seeds: list[int] | None = None) -> list[FrameScore]:
        self.batches.append((len(images), seeds if seeds is not None else [seed]))
        return [FrameScore(score=2.0 if im[0, 0, 0] == 200 else 0.0, is_ood=bool(im[0, 0, 0] == 200), valid=True)
                for im in images]


@pytest.fixture
def two_cameras(ros_domain_id: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    overrides = {"image_topics": ["front=/mc/cam_front/image_raw", "rear/image"], "batch_gather_ms": 300.0,
                 "watchdog_timeout_s": 0.5, "hysteresis.raise_after": 1, "hysteresis.window": 1,
                 "hysteresis.clear_after": 1, "qos.reliability": "reliable", "diagnostics_period_s": 0.2}
    subscribe = {"single": (DiagnosticArray, "/mc/lsea_monitor/verdict"), "health": (DiagnosticArray, "/diagnostics")}
    for cam in CAMERAS:
        subscribe[f"{cam}_verdicts"] = (DiagnosticArray, f"/mc/lsea_monitor/{cam}/verdict")
        subscribe[f"{cam}_flags"] = (Bool, f"/mc/lsea_monitor/{cam}/ood")
    with node_in_process(BatchScorer(), monkeypatch, ros_domain_id, "mc", overrides, subscribe,
                         publish={"front": "/mc/cam_front/image_raw", "rear": "/mc/rear/image"}) as got:
        yield got


def frame(kind: int, sec: int, camera: str) -> Image:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0, 0] = kind
    msg = Image(height=8, width=8, encoding="rgb8", step=24, data=rgb.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, f"{camera}:{kind}"
    return msg


def verdicts_of(got: dict[str, Any], camera: str, sec: int, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with got["lock"]:
            for v in got[f"{camera}_verdicts"]:
                if v.header.stamp.sec == sec:
                    return {kv.key: kv.value for kv in v.status[0].values} | {
                        "level": v.status[0].level, "name": v.status[0].name, "frame_id": v.header.frame_id}
        time.sleep(0.02)
    raise AssertionError(f"no {camera} verdict for stamp {sec}")


def test_two_cameras_share_a_batch_and_keep_their_own_verdicts(two_cameras: dict[str, Any]) -> None:
    got, scorer = two_cameras, two_cameras["scorer"]
    assert scorer.warmed == [1, 2]  # every batch size the node may meet
    # a stale verdict between two steps on a loaded machine (0.5 s watchdog) would raise a flag that the
    # last-three-flags check below reads; staleness is the next test's business
    assert got["node"].set_parameters([Parameter("watchdog_timeout_s", value=60.0)])[0].successful
    for sec in (1, 2, 3):  # front in distribution, rear out of distribution, same stamps
        got["pubs"]["front"].publish(frame(0, sec, "front"))
        got["pubs"]["rear"].publish(frame(200, sec, "rear"))
        front, rear = verdicts_of(got, "front", sec), verdicts_of(got, "rear", sec)
        assert front["frame_id"] == "front:0" and rear["frame_id"] == "rear:200"
        assert (front["is_ood"], rear["is_ood"]) == ("false", "true")
        assert (front["level"], rear["level"]) == (b"\x00", b"\x01")
        assert front["name"] == "mc/lsea_monitor/front: ood verdict"
        assert rear["name"] == "mc/lsea_monitor/rear: ood verdict"
    assert any(size == 2 for size, _ in scorer.batches), scorer.batches  # one forward pass for both
    for size, seeds in scorer.batches:
        assert len(seeds) == size  # a seed per frame
    def flags_of(camera: str) -> list[bool]:
        with got["lock"]:
            return [m.data for m in got[f"{camera}_flags"]]

    def flag_missing() -> bool:  # a flag travels on its own topic: it may follow its verdict
        with got["lock"]:
            return any(len(got[f"{c}_flags"]) < len(got[f"{c}_verdicts"]) for c in ("front", "rear"))

    deadline = time.monotonic() + 5.0
    while flag_missing() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flags_of("front")[-3:] == [False] * 3
    assert flags_of("rear")[-3:] == [True] * 3
    with got["lock"]:
        assert got["single"] == []  # no ~/verdict with named cameras


def test_one_silent_camera_goes_stale_alone(two_cameras: dict[str, Any]) -> None:
    got = two_cameras

    def rear_stale() -> int:
        with got["lock"]:
            return sum(any(kv.key == "reason" and kv.value.startswith("stale") for kv in v.status[0].values)
                       for v in got["rear_verdicts"])

    # Only the front camera keeps sending, for at least 1.6 s (three 0.5 s watchdog periods) and until
    # the rear has gone stale twice: on a loaded machine the watchdog's timer may fire late.
    t_min, deadline = time.monotonic() + 1.6, time.monotonic() + 15.0
    sec = 100
    while time.monotonic() < deadline and (time.monotonic() < t_min or rear_stale() < 2):
        got["pubs"]["front"].publish(frame(0, sec, "front"))
        sec += 1
        time.sleep(0.1)
    with got["lock"]:
        rear = [{kv.key: kv.value for kv in v.status[0].values} for v in got["rear_verdicts"]]
        front = [{kv.key: kv.value for kv in v.status[0].values} for v in got["front_verdicts"]]
        health = [h for h in got["health"] if h.status[0].name == "mc/lsea_monitor: health"]
    assert sum(v["reason"].startswith("stale: no image on /mc/rear/image") for v in rear) >= 2  # relative topic
    assert not any(v["reason"].startswith("stale") for v in front[-5:])
    assert all(v["is_ood"] == "true" for v in rear if v["reason"].startswith("stale"))
    hv = {kv.key: kv.value for kv in health[-1].status[0].values}
    assert hv["cameras"] == "front,rear" and hv["stale_cameras"] == "rear" and "rear" in hv["flagged_cameras"]
    assert hv["input_topic"] == "/mc/cam_front/image_raw,/mc/rear/image"
    assert health[-1].status[0].level == b"\x02"  # stale input: ERROR
    got["pubs"]["rear"].publish(frame(0, 999, "rear"))
    assert verdicts_of(got, "rear", 999)["is_ood"] == "false"  # recovered (clear_after 1)


def test_image_topics_is_checked_and_applies_at_activate(two_cameras: dict[str, Any]) -> None:
    node = two_cameras["node"]
    result = node.set_parameters([Parameter("image_topics", value=["a=/x/image"])])[0]
    assert not result.successful and "read at activate" in result.reason
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    bad = node.set_parameters([Parameter("image_topics", value=["/x/image", "/x/image_raw"])])[0]
    assert not bad.successful and "duplicate camera name" in bad.reason
    assert node.set_parameters([Parameter("image_topics", value=["a=/x/image"])])[0].successful
    assert node.set_parameters([Parameter("batch_gather_ms", value=0.0)])[0].successful  # live


# --------------------------------------------------------------------------------------------
# The real node as a process, two camera processes
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_camera_processes_get_their_own_verdicts_by_stamp(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any, stream_frames: StreamFrames,
    ros_env: dict[str, str], tmp_path: Path,
) -> None:
    ns = probe.namespace
    topics = {cam: f"/{ns}/{cam}/image_raw" for cam in CAMERAS}
    hyst = {"raise_after": 2, "window": 3, "clear_after": 3}
    node = start_process(node_command(
        monitor_files, namespace=ns, artefact=str(stream_frames.artefact), watchdog_timeout_s=600.0,
        inference_timeout_s=60.0,
        image_topics=[f"{cam}={topics[cam]}" for cam in CAMERAS], batch_gather_ms=50.0,
        **{f"hysteresis.{k}": v for k, v in hyst.items()}))
    received: dict[str, list[Any]] = {f"{cam}_{kind}": [] for cam in CAMERAS for kind in ("verdicts", "flags")}
    lock = threading.Lock()

    def keep(key: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with lock:
                received[key].append(msg)
        return cb

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for cam in CAMERAS:
        probe.node.create_subscription(DiagnosticArray, f"/{ns}/lsea_monitor/{cam}/verdict", keep(f"{cam}_verdicts"),
                                       qos)
        probe.node.create_subscription(Bool, f"/{ns}/lsea_monitor/{cam}/ood", keep(f"{cam}_flags"), qos)

    def active(p: Probe) -> bool:
        if node.returncode is not None:
            raise AssertionError(f"node exited with {node.returncode}:\n{node.log()[-3000:]}")
        v = health_values(p)
        return v is not None and v["lifecycle_state"] == "active"

    probe.wait_for(active, NODE_STARTUP_TIMEOUT_S, "the node to report lifecycle_state active on /diagnostics")
    # front: in-distribution frames; rear: out-of-distribution ones; both cameras at 4 Hz at once
    plans = {"front": [("low", 0)] * 10, "rear": [("high", 0)] * 10}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {cam: pool.submit(run_publisher, ros_env, (tmp_path / cam), npz=stream_frames.npz,
                                    plan=plans[cam], rate_hz=4.0, topic=topics[cam])
                   for cam in CAMERAS if (tmp_path / cam).mkdir() is None}
        sent = {cam: {(s["sec"], s["nanosec"]): s for s in f.result()} for cam, f in futures.items()}

    def all_in(p: Probe) -> bool:
        with lock:
            return all(any(stamp_key(m.header) == max(sent[c]) for m in received[f"{c}_verdicts"]) for c in CAMERAS)

    probe.wait_for(all_in, 60.0, "the verdicts of both cameras' last frames")
    time.sleep(0.5)
    hv = health_values(probe)
    rc = node.stop(signal.SIGINT, timeout_s=30.0)
    assert rc == 0, f"SIGINT gave exit code {rc}:\n{node.log()[-3000:]}"
    assert "front" in node.log() and "rear" in node.log()

    with lock:
        got = {k: list(v) for k, v in received.items()}
    for cam in CAMERAS:
        verdicts = [m for m in got[f"{cam}_verdicts"] if stamp_key(m.header) in sent[cam]]
        vals = [values(m) for m in verdicts]
        other = CAMERAS[1 - CAMERAS.index(cam)]
        # every verdict of this camera is one of its own frames: nothing from the other camera
        assert len(verdicts) == len(got[f"{cam}_verdicts"]), "a verdict that is not one of this camera's frames"
        assert not any(stamp_key(m.header) in sent[other] for m in got[f"{cam}_verdicts"])
        assert len(verdicts) >= 0.7 * len(sent[cam]), f"{cam}: {len(verdicts)} verdicts for {len(sent[cam])} frames"
        for m, v in zip(verdicts, vals):
            key = stamp_key(m.header)
            assert m.header.frame_id == sent[cam][key]["frame_id"] and v["frame_stamp"] == f"{key[0]}.{key[1]:09d}"
            assert m.status[0].name == f"{ns}/lsea_monitor/{cam}: ood verdict"
            assert v["valid"] == "true" and v["mc_samples"] == str(monitor_files.mc_samples)
        raw = [v["raw_is_ood"] == "true" for v in vals]
        if cam == "front":
            assert sum(raw) <= 1, f"in-distribution frames judged OoD: {raw}"
        else:
            assert sum(raw) >= len(raw) - 1, f"OoD frames judged in distribution: {raw}"
        flags = [m.data for m in got[f"{cam}_flags"]]
        assert flags == [v["is_ood"] == "true" for v in vals]  # one flag per verdict, the same value
        assert flags == replay_hysteresis(vals, **hyst)  # each camera its own hysteresis
    assert got["front_flags"][-1].data is False and got["rear_flags"][-1].data is True
    assert hv is not None and hv["cameras"] == "front,rear"
    assert hv["input_topic"] == f"{topics['front']},{topics['rear']}"
