"""Helpers of the replay tests (imported by name: ``from lsea_replay_testutil import ...``; a test module
importing ``conftest`` would get whichever folder's conftest was imported first): synthetic rosbag2
bags written with rosbags' Writer, image messages, and a stand-in scorer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from lsea_monitor.replay import decode

START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
CAMERA = "/cam/image"
GT = "/gt/ood"


def frames_rgb(n: int, height: int = 24, width: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def image_msg(rgb: np.ndarray, stamp_ns: int, *, kind: str = "raw", encoding: str = "rgb8",
              frame_id: str = "cam") -> tuple[str, bytes]:
    """(msgtype, cdr) of one image: kind raw (Image with ``encoding``), png or jpeg (CompressedImage)."""
    import cv2

    t = decode.typestore().types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    if kind == "raw":
        h, w = rgb.shape[:2]
        data = np.ascontiguousarray(rgb).reshape(-1)
        if encoding == "bgr8":
            data = np.ascontiguousarray(rgb[..., ::-1]).reshape(-1)
        step = w * 3
        if encoding == "32FC1":
            data = np.zeros(h * w * 4, np.uint8)
            step = w * 4
        msg = t[decode.IMAGE](header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                              data=data)
        return decode.IMAGE, decode.serialize(msg, decode.IMAGE)
    if kind in ("png", "jpeg"):
        ok, buf = cv2.imencode(".png" if kind == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        fmt = f"rgb8; {kind} compressed bgr8"
        data = np.frombuffer(buf.tobytes(), np.uint8)
    else:  # an unsupported compressed format
        fmt, data = kind, np.frombuffer(b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(32), np.uint8)
    msg = t[decode.COMPRESSED](header=header, format=fmt, data=data)
    return decode.COMPRESSED, decode.serialize(msg, decode.COMPRESSED)


@dataclass
class BagSpec:
    path: Path
    storage: str
    kind: str
    images: list[np.ndarray]
    stamps_ns: list[int]
    gt: list[bool] | None


def write_bag(path: Path, *, storage: str = "mcap", kind: str = "raw", n: int = 6, encoding: str = "rgb8",
              gt: Sequence[bool] | None = None, header_stamps_ns: Sequence[int] | None = None,
              images: Sequence[np.ndarray] | None = None, extra_topics: Sequence[tuple[str, str]] = (),
              bad_data_at: Sequence[int] = ()) -> BagSpec:
    """A bag with ``n`` frames on CAMERA at 10 Hz (bag time START_NS + i * 100 ms) and optionally a Bool GT topic.

    ``bad_data_at``: raw frames whose pixel data is truncated (an undecodable image, valid CDR).
    ``extra_topics``: (topic, msgtype) connections without messages.
    """
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    imgs = list(images) if images is not None else frames_rgb(n)
    stamps = [START_NS + i * PERIOD_NS for i in range(len(imgs))]
    ts = decode.typestore()
    with Writer(path, version=9, storage_plugin=plugin) as w:
        msgtype = decode.IMAGE if kind == "raw" else decode.COMPRESSED
        cam = w.add_connection(CAMERA, msgtype, typestore=ts)
        gtc = w.add_connection(GT, decode.BOOL, typestore=ts) if gt is not None else None
        for topic, mt in extra_topics:
            w.add_connection(topic, mt, typestore=ts)
        for i, (rgb, stamp) in enumerate(zip(imgs, stamps)):
            hs = header_stamps_ns[i] if header_stamps_ns is not None else stamp
            _, raw = image_msg(rgb, hs, kind=kind, encoding=encoding)
            if i in bad_data_at:
                msg = decode.deserialize(raw, decode.IMAGE)
                msg.data = msg.data[: len(msg.data) // 2]
                raw = decode.serialize(msg, decode.IMAGE)
            w.write(cam, stamp, raw)
            if gtc is not None:
                w.write(gtc, stamp, decode.bool_cdr(bool(gt[i])))
    return BagSpec(path, storage, kind, imgs, stamps, list(gt) if gt is not None else None)


class FakeScorer:
    """Stands in for FrameScorer in fast tests: score = mean pixel value / 255 * 10, threshold 5."""

    threshold = 5.0

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score_images(self, images: Sequence[np.ndarray]) -> list[Any]:
        from lsea_monitor.pipeline import FrameScore

        self.calls.append(len(images))
        out = []
        for im in images:
            s = float(np.asarray(im, dtype=np.float64).mean() / 255.0 * 10.0)
            out.append(FrameScore(score=s, is_ood=s > self.threshold, valid=True))
        return out
