"""lsea_monitor.node_cameras: camera names and topics, the per-camera watchdog, the batching slots (pure Python)."""

from __future__ import annotations

import threading
import time

import pytest

from lsea_monitor.node_cameras import (
    SINGLE_CAMERA,
    Camera,
    CameraChannel,
    CameraSlots,
    Watchdog,
    camera_name,
    health_values,
    image_topics_problems,
    parse_image_topics,
)
from lsea_monitor.pipeline import Hysteresis


def test_empty_list_is_the_single_camera_interface() -> None:
    for empty in ([], None, ()):
        assert parse_image_topics(empty) == (SINGLE_CAMERA,)
    cam = SINGLE_CAMERA
    assert (cam.topic, cam.verdict_topic, cam.ood_topic) == ("image", "~/verdict", "~/ood")
    assert cam.status_name("front/lsea_monitor") == "front/lsea_monitor: ood verdict"


@pytest.mark.parametrize("topic, name", [
    ("/front/image_raw", "front"), ("/cam/left/image_raw/compressed", "cam_left"), ("rear/image", "rear"),
    ("/image", "image"), ("~/cam0/image_rect_color", "cam0"), ("/a/b/c", "a_b_c"), ("/0cam/image", "cam_0cam"),
])
def test_default_names_come_from_the_topic(topic: str, name: str) -> None:
    assert camera_name(topic) == name


def test_named_and_unnamed_entries_and_output_topics() -> None:
    cams = parse_image_topics(["left=/stereo/left/image_raw", " /rear/image_raw ", "front = /front/image"])
    assert cams == (Camera("left", "/stereo/left/image_raw"), Camera("rear", "/rear/image_raw"),
                    Camera("front", "/front/image"))
    assert (cams[0].verdict_topic, cams[0].ood_topic) == ("~/left/verdict", "~/left/ood")
    assert cams[1].status_name("ns/lsea_monitor") == "ns/lsea_monitor/rear: ood verdict"


@pytest.mark.parametrize("entries, match", [
    (["/a/image", "/a/image_raw"], "duplicate camera name"),
    (["x=/a/image", "y=/a/image"], "duplicate topic"),
    (["bad name=/a/image"], "camera name 'bad name'"),
    (["1x=/a/image"], "camera name '1x'"),
    (["/a//image"], "not a valid topic"),
    (["front="], "not a valid topic"),
    (["/a/image/"], "not a valid topic"),
])
def test_invalid_entries_are_refused_with_the_reason(entries: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_image_topics(entries)
    assert match in image_topics_problems(entries)[0]
    assert image_topics_problems(["a=/x/image", "b=/y/image"]) == []


def test_watchdog_goes_stale_repeats_and_clears() -> None:
    s = 1_000_000_000
    wd = Watchdog(now_ns=0)
    assert wd.check(int(0.5 * s), timeout_s=1.0) == ""
    assert wd.check(int(1.2 * s), timeout_s=1.0) == "stale" and wd.stale
    assert wd.check(int(1.5 * s), timeout_s=1.0) == ""  # not again within min(timeout, 1 s)
    assert wd.check(int(2.3 * s), timeout_s=1.0) == "stale"
    assert wd.check(int(2.4 * s), timeout_s=0.0) == "cleared"  # 0 disables the watchdog
    wd.on_input(int(3.0 * s))
    assert wd.check(int(3.1 * s), timeout_s=1.0) == "" and not wd.stale
    slow = Watchdog(now_ns=0)  # a long timeout still repeats at least every second
    assert slow.check(6 * s, timeout_s=5.0) == "stale" and slow.check(int(6.5 * s), 5.0) == ""
    assert slow.check(int(7.1 * s), timeout_s=5.0) == "stale"
    assert slow.idle_s(int(7.1 * s)) == pytest.approx(7.1)


def test_watchdog_goes_stalled_when_images_wait_for_a_verdict_and_clears_on_progress() -> None:
    s = 1_000_000_000
    wd = Watchdog(now_ns=0)
    for t in (0.1, 0.2, 0.3):  # frames keep coming; a verdict for the first at 0.35 s, then none
        wd.on_input(int(t * s))
    wd.on_verdict(int(0.35 * s), frame_recv_ns=int(0.1 * s))  # newer frames wait from 0.35 s on
    assert wd.waiting_s(int(1.35 * s)) == pytest.approx(1.0)
    assert wd.check(int(1.3 * s), timeout_s=1.0, stall_timeout_s=2.0) == ""
    for t in range(4, 24):  # images every 0.1 s up to 2.4 s: never stale, but nothing judged
        wd.on_input(int(t * 0.1 * s))
    assert wd.check(int(2.4 * s), timeout_s=1.0, stall_timeout_s=2.0) == "stalled" and wd.stale and wd.stalled
    assert wd.check(int(2.5 * s), timeout_s=1.0, stall_timeout_s=2.0) == ""  # not again within min(2 s, 1 s)
    assert wd.check(int(3.4 * s), timeout_s=10.0, stall_timeout_s=2.0) == "stalled"
    wd.on_verdict(int(3.5 * s), frame_recv_ns=int(2.3 * s))  # progress: the newest frame was judged
    assert wd.waiting_s(int(3.6 * s)) == 0.0
    assert wd.check(int(3.6 * s), timeout_s=10.0, stall_timeout_s=2.0) == "cleared" and not wd.stalled
    # A frame judged as slowly as the timeout allows, one at a time, is progress, not a stall.
    wd.on_input(int(4.0 * s))
    wd.on_verdict(int(5.9 * s), frame_recv_ns=int(4.0 * s))
    assert wd.check(int(7.0 * s), timeout_s=10.0, stall_timeout_s=2.0) == ""
    # 0 disables the stall check; no input at all is stale (not stalled) even with a frame waiting.
    wd.on_input(int(8.0 * s))
    assert wd.check(int(20.0 * s), timeout_s=0.0, stall_timeout_s=0.0) == ""
    assert wd.check(int(20.0 * s), timeout_s=1.0, stall_timeout_s=2.0) == "stale" and not wd.stalled


def test_slots_keep_the_newest_frame_of_each_camera() -> None:
    slots: CameraSlots[str] = CameraSlots(3)
    assert slots.put(0, "a1") is False
    assert slots.put(0, "a2") is True  # a drop
    assert slots.put(2, "c1") is False
    assert slots.take_all(timeout_s=0.0) == [(0, "a2"), (2, "c1")]
    assert slots.take_all(timeout_s=0.01) == []
    slots.put(1, "b")
    assert slots.clear() == 1 and slots.take_all(timeout_s=0.0) == []
    with pytest.raises(ValueError):
        CameraSlots(0)


def test_take_all_gathers_frames_of_cameras_triggered_together() -> None:
    slots: CameraSlots[int] = CameraSlots(2)
    slots.put(0, 1)
    threading.Timer(0.05, slots.put, args=(1, 2)).start()
    t0 = time.monotonic()
    got = slots.take_all(timeout_s=1.0, gather_s=1.0)
    elapsed = time.monotonic() - t0
    assert got == [(0, 1), (1, 2)]
    assert elapsed < 0.9, "take_all must return as soon as every camera has a frame"
    slots.put(1, 3)  # only one camera: the gather window runs out
    t0 = time.monotonic()
    assert slots.take_all(timeout_s=1.0, gather_s=0.05) == [(1, 3)]
    assert 0.04 <= time.monotonic() - t0 < 0.5


def test_take_all_wakes_up_for_a_frame_from_another_thread() -> None:
    slots: CameraSlots[str] = CameraSlots(2)
    threading.Timer(0.05, slots.put, args=(1, "x")).start()
    assert slots.take_all(timeout_s=2.0) == [(1, "x")]


def test_health_values_only_for_named_cameras() -> None:
    single = CameraChannel(SINGLE_CAMERA, Hysteresis(), Watchdog(0))
    assert health_values([single]) == {} and health_values([]) == {}
    a = CameraChannel(Camera("a", "/a/image"), Hysteresis(raise_after=1, window=1, clear_after=1), Watchdog(0))
    b = CameraChannel(Camera("b", "/b/image"), None, Watchdog(0))
    a.hysteresis.update(False)
    b.watchdog.check(5_000_000_000, timeout_s=1.0)
    a.invalid_streak = 2
    assert health_values([a, b]) == {"cameras": "a,b", "stale_cameras": "b", "stalled_cameras": "",
                                     "unjudged_cameras": "a", "flagged_cameras": "b"}
    a.watchdog.on_input(0)
    a.watchdog.check(5_000_000_000, timeout_s=10.0, stall_timeout_s=1.0)
    assert health_values([a, b])["stalled_cameras"] == "a" and health_values([a, b])["stale_cameras"] == "b"


def test_node_parameters_for_cameras_and_speed() -> None:
    from lsea_monitor import accel, node_params

    assert node_params.COMPILE_MODES == accel.COMPILE_MODES
    p = node_params.MonitorParams()
    assert (p.image_topics, p.scoring, p.compile, p.channels_last, p.batch_gather_ms) == ((), "auto", False, False, 2.0)
    for empty in ([], None):  # rclpy gives None for an empty YAML list
        assert p.replace({"image_topics": empty}).image_topics == ()
    two = p.replace({"image_topics": ["a=/x/image", "b=/y/image"]})
    assert two.image_topics == ("a=/x/image", "b=/y/image") and node_params.problems(two) == []
    assert "duplicate camera name" in node_params.problems(p.replace({"image_topics": ["/x/image", "/x/image_raw"]}))[0]
    assert "list of strings" in node_params.problems(p.replace({"image_topics": [1, 2]}))[0]


def test_rate_limit_must_leave_frames_judged_within_the_inference_timeout() -> None:
    from lsea_monitor import node_params

    p = node_params.MonitorParams()
    assert p.inference_timeout_s == 2.0 and node_params.problems(p.replace({"max_rate_hz": 0.6})) == []
    (problem,) = node_params.problems(p.replace({"max_rate_hz": 0.5}))
    assert "max_rate_hz (0.5) must be 0 or above 1 / inference_timeout_s (0.5 Hz)" in problem
    assert node_params.problems(p.replace({"max_rate_hz": 0.001, "inference_timeout_s": 0.0})) == []
    assert node_params.descriptor(node_params.BY_NAME["image_topics"]).dynamic_typing
