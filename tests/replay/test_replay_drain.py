"""The live replay's drain (after the last frame is played, wait for the last verdicts), against an
in-process MonitorNode with a scripted scorer whose last frame takes seconds: the node's watchdog
meanwhile publishes stale verdicts, which answer no frame and must not end the wait."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="live mode needs the ROS 2 wheels (pip install lsea-monitor[ros])")

ROS_TESTS = str(Path(__file__).resolve().parent.parent / "ros")
if ROS_TESTS not in sys.path:  # node_in_process lives with the node's tests
    sys.path.insert(0, ROS_TESTS)

from lsea_replay_testutil import CAMERA, write_bag  # noqa: E402
from lsea_ros_testutil import node_in_process  # noqa: E402

from lsea_monitor.pipeline import FrameScore, frame_seed  # noqa: E402

pytestmark = pytest.mark.ros

SLOW_KIND, SLOW_S = 150, 2.0


class SlowLastFrameScorer:
    """Stands in for FrameScorer: a frame whose first pixel is SLOW_KIND takes SLOW_S, every frame scores 0."""

    device, threshold, mc_samples, model_id, artefact_id = "cpu", 1.0, 4, "m" * 12, "a" * 12
    frame_seed = staticmethod(frame_seed)

    def warmup(self, *args: Any, **kwargs: Any) -> None:
        pass

    def score_images(self, images: list[np.ndarray], seed: int | None = None,
                     seeds: list[int] | None = None) -> list[FrameScore]:
        if any(im[0, 0, 0] == SLOW_KIND for im in images):
            time.sleep(SLOW_S)
        return [FrameScore(score=0.0, is_ood=False, valid=True) for _ in images]


def test_drain_waits_for_the_last_frame_through_the_node_s_stale_verdicts(
        tmp_path: Path, ros_domain_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from lsea_monitor.replay.bag_io import BagReader
    from lsea_monitor.replay.live import LiveConfig, run_live

    images = [np.zeros((8, 8, 3), np.uint8) for _ in range(6)]
    images[-1][0, 0, 0] = SLOW_KIND
    bag = write_bag(tmp_path / "bag", n=len(images), images=images).path
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain_id))  # run_live's own context joins the node's domain
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # CAMERA is /cam/image: the node in namespace "cam" subscribes to it as its relative "image".
    # Watchdog 0.2 s: stale verdicts every ~0.2 s while the last frame is scored (inference_timeout_s
    # 30 s keeps the stalled ones out); depth 10: no frame dropped at the subscription.
    overrides = {"watchdog_timeout_s": 0.2, "inference_timeout_s": 30.0, "qos.reliability": "reliable",
                 "qos.depth": 10}
    with node_in_process(SlowLastFrameScorer(), monkeypatch, ros_domain_id, "cam", overrides, subscribe={},
                         publish={}):
        cfg = LiveConfig(rate=1.0, namespace="cam", start_node=False, idle_timeout_s=10.0, drain_timeout_s=60.0,
                         startup_timeout_s=60.0)
        with BagReader(bag) as reader:
            result = run_live(reader, CAMERA, cfg)
    assert CAMERA == "/cam/image"
    assert result.complete, result.error
    assert result.extra["stale_verdicts"] >= 1, result.extra  # the watchdog did speak during the drain
    assert [v.frame_index for v in result.verdicts] == list(range(len(images))), result.extra
    assert result.verdicts[-1].latency_ms >= SLOW_S * 1e3 * 0.9
