"""Bad and unusual inputs reach the node as a process: each bad image gets an ERROR verdict with its
header and is counted as rejected; the node stays alive; raw encodings and CompressedImage work."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import cv2
import numpy as np
import pytest
from lsea_ros_testutil import (
    NodeProcess,
    Probe,
    StreamFrames,
    health_values,
    image_msg,
    node_command,
    stamp_key,
    values,
)
from test_node_stream import wait_active

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def send_and_wait(probe: Probe, pub: Any, msg: Any, timeout_s: float = 60.0) -> Any:
    """Publish one message and return the verdict that carries its stamp."""
    key = stamp_key(msg.header)
    pub.publish(msg)

    def seen(p: Probe) -> bool:
        return any(stamp_key(r.msg.header) == key for r in p.verdicts)

    probe.wait_for(seen, timeout_s, f"the verdict of {msg.header.frame_id}")
    verdicts, flags, _ = probe.snapshot()
    index = next(i for i, r in enumerate(verdicts) if stamp_key(r.msg.header) == key)
    return verdicts[index].msg


def wait_matched(pub: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pub.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "the node's image subscription never matched"
        time.sleep(0.05)
    time.sleep(1.0)


def raw(**fields: Any) -> Any:
    from sensor_msgs.msg import Image

    frame_id = fields.pop("frame_id", "")
    sec = fields.pop("sec", 0)
    msg = Image(**fields)
    msg.header.stamp.sec, msg.header.frame_id = sec, frame_id
    return msg


def test_bad_raw_images_are_rejected_with_error_verdicts_and_the_node_keeps_serving(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any, stream_frames: StreamFrames,
) -> None:
    from sensor_msgs.msg import Image

    node = start_process(node_command(monitor_files, namespace=probe.namespace, artefact=str(stream_frames.artefact),
                                      watchdog_timeout_s=600.0,
                                      max_image_pixels=200_000, **{"qos.reliability": "reliable"}))
    wait_active(probe, node)
    pub = probe.publisher(Image, probe.image_topic)
    wait_matched(pub)
    frames = np.load(stream_frames.npz)
    low = frames["low"][0]
    bad = [
        ("unknown encoding", raw(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)),
         "Unsupported image encoding 'yuv422'"),
        ("truncated", raw(height=128, width=256, encoding="rgb8", step=768, data=low.tobytes()[:1000]),
         "truncated: 1000 bytes"),
        ("zero size", raw(height=0, width=0, encoding="rgb8", step=0, data=b""), "zero size"),
        ("huge claim", raw(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=bytes(16)),
         "too large: 100000x100000"),
        ("huge image", image_msg(np.zeros((500, 500, 3), np.uint8), sec=0, frame_id=""), "too large: 500x500"),
        ("short step", raw(height=2, width=4, encoding="rgb8", step=6, data=bytes(12)), "shorter than a row"),
    ]
    for n, (name, msg, reason) in enumerate(bad):
        msg.header.stamp.sec, msg.header.frame_id = 100 + n, f"bad:{name}"
        verdict = send_and_wait(probe, pub, msg)
        v = values(verdict)
        assert verdict.status[0].level == b"\x02", name
        assert verdict.header.frame_id == f"bad:{name}"
        assert v["valid"] == "false" and v["is_ood"] == "true" and v["score"] == "nan"
        assert reason in v["reason"] and v["reason"].startswith("rejected image"), (name, v["reason"])
        assert node.returncode is None, f"node died on {name}:\n{node.log()[-3000:]}"

    # good frames in every supported encoding are still served
    good = {"rgb8": image_msg(low, sec=200, frame_id="good:rgb8"),
            "bgr8": image_msg(low, sec=201, frame_id="good:bgr8", encoding="bgr8")}
    gray = cv2.cvtColor(low, cv2.COLOR_RGB2GRAY)
    good["mono8"] = raw(height=128, width=256, encoding="mono8", step=256, data=gray.tobytes(), sec=202,
                        frame_id="good:mono8")
    good["mono16"] = raw(height=128, width=256, encoding="mono16", step=512,
                         data=(gray.astype(np.uint16) * 257).tobytes(), sec=203, frame_id="good:mono16")
    for encoding, msg in good.items():
        v = values(send_and_wait(probe, pub, msg))
        assert v["valid"] == "true" and v["reason"] == "", (encoding, v)
        assert (v["raw_is_ood"] == "true") == (float(v["score"]) > stream_frames.threshold)

    probe.wait_for(lambda p: (health_values(p) or {}).get("rejected") == str(len(bad))
                   and (health_values(p) or {}).get("processed") == str(len(good)), 10.0, "the counts on /diagnostics")
    hv = health_values(probe)
    assert hv["received"] == str(len(bad) + len(good)) and hv["dropped"] == "0"
    assert "rejected image" in hv["last_error"]
    assert "Rejected" in node.log() or "rejected image" in node.log()  # the throttled warning
    assert node.stop(signal.SIGINT) == 0


def test_compressed_input_jpeg_png_and_garbage_then_sigterm(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any, stream_frames: StreamFrames,
) -> None:
    from sensor_msgs.msg import CompressedImage

    node = start_process(node_command(monitor_files, namespace=probe.namespace, artefact=str(stream_frames.artefact),
                                      watchdog_timeout_s=600.0,
                                      input_type="compressed"))
    wait_active(probe, node)
    pub = probe.publisher(CompressedImage, probe.image_topic)
    wait_matched(pub)
    frames = np.load(stream_frames.npz)

    def compressed(rgb: np.ndarray, ext: str, fmt: str, sec: int) -> Any:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        msg = CompressedImage(format=fmt, data=buf.tobytes())
        msg.header.stamp.sec, msg.header.frame_id = sec, f"{fmt}:{sec}"
        return msg

    # (exact decoding is covered by test_ros_image; MC-dropout scores are draws, so only validity here)
    for sec, (rgb, ext, fmt) in enumerate([(frames["low"][0], ".png", "png"), (frames["high"][0], ".png", "png"),
                                           (frames["ind"][0], ".jpg", "rgb8; jpeg compressed bgr8")], start=1):
        v = values(send_and_wait(probe, pub, compressed(rgb, ext, fmt, sec)))
        assert v["valid"] == "true" and np.isfinite(float(v["score"])), (fmt, v)
    garbage = CompressedImage(format="jpeg", data=bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)))
    garbage.header.stamp.sec, garbage.header.frame_id = 4, "garbage"
    verdict = send_and_wait(probe, pub, garbage)
    assert verdict.status[0].level == b"\x02" and "neither JPEG nor PNG" in values(verdict)["reason"]
    assert node.returncode is None
    assert node.stop(signal.SIGTERM) == 0, node.log()[-3000:]
