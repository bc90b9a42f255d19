"""Deserialisation: raw CDR of a bag -> messages -> RGB ``uint8`` frames; and verdicts -> CDR for the output bag.

Messages are deserialised with the pure-Python ``rosbags`` typestore (no ROS install needed). Pixels are
converted by :func:`lsea_monitor.ros_image.msg_to_rgb`, the node's own conversion (it is duck-typed,
so a rosbags message works as an rclpy one): offline and live see the same RGB array for the same bag
message. That module needs ``cv_bridge``; it is imported on first use.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from lsea_monitor.replay.errors import ReplayError, UnsupportedEncodingError
from lsea_monitor.replay.records import Frame, Verdict

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
BOOL = "std_msgs/msg/Bool"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
CLOCK = "rosgraph_msgs/msg/Clock"
#: image message types the monitor takes, and the node's ``input_type`` for each
IMAGE_TYPES: dict[str, str] = {IMAGE: "raw", COMPRESSED: "compressed"}
#: verdict KeyValue keys, as published by the node (lsea_monitor.node_msgs.VERDICT_KEYS)
VERDICT_KEYS = ("is_ood", "raw_is_ood", "valid", "score", "threshold", "latency_ms", "inference_ms", "mc_samples",
                "reason", "frame_stamp", "frame_id")


class DeserializationError(ReplayError):
    """A message's CDR bytes do not parse as its declared type (the caller adds the bag context)."""


@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """The rosbags typestore of the latest ROS 2 distribution (standard message types)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)


def deserialize(raw: bytes, msgtype: str) -> Any:
    try:
        return typestore().deserialize_cdr(raw, msgtype)
    except Exception as err:  # noqa: BLE001 - rosbags raises struct.error, IndexError, ValueError ...
        raise DeserializationError(f"{len(raw)} bytes do not deserialise as {msgtype} "
                                   f"({type(err).__name__}: {err}).") from err


def serialize(msg: Any, msgtype: str) -> bytes:
    return bytes(typestore().serialize_cdr(msg, msgtype))


def stamp_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _ros_image() -> Any:
    try:
        from lsea_monitor import ros_image
    except ImportError as err:
        raise ReplayError(f"Decoding images needs cv_bridge and the ROS message packages ({err}); install "
                          "lsea-monitor[ros] (pip) or source a ROS 2 installation.") from err
    return ros_image


def encoding_problem(msg: Any, msgtype: str) -> str:
    """Why the monitor cannot decode this message's encoding at all ('' when it can).

    Same rules as :mod:`lsea_monitor.ros_image`: raw ``rgb8``, ``bgr8``, ``mono8``, ``mono16``;
    compressed JPEG or PNG.
    """
    if msgtype == IMAGE:
        encoding = str(msg.encoding).strip().lower()
        supported = _ros_image().RAW_ENCODINGS
        if encoding not in supported:
            return (f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(supported)}, or a "
                    "sensor_msgs/CompressedImage with JPEG or PNG)")
        return ""
    fmt = str(msg.format).strip()
    fmt_l = fmt.lower()
    if fmt_l and ("compresseddepth" in fmt_l or not any(k in fmt_l for k in ("jpeg", "jpg", "png"))):
        return f"unsupported CompressedImage format {fmt!r} (supported: jpeg, png)"
    head = bytes(msg.data[:8])
    if not fmt_l and not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG")):
        return f"CompressedImage without a format whose data is neither JPEG nor PNG (starts with {head.hex(' ')})"
    return ""


def frame_of(index: int, stamp: int, topic: str, msg: Any, msgtype: str) -> Frame:
    """The :class:`Frame` record of a deserialised image message."""
    if msgtype == IMAGE:
        return Frame(index=index, stamp_ns=stamp, header_stamp_ns=stamp_ns(msg.header.stamp), topic=topic,
                     frame_id=str(msg.header.frame_id), width=int(msg.width), height=int(msg.height),
                     encoding=str(msg.encoding))
    return Frame(index=index, stamp_ns=stamp, header_stamp_ns=stamp_ns(msg.header.stamp), topic=topic,
                 frame_id=str(msg.header.frame_id), encoding=str(msg.format))


def to_rgb(msg: Any, *, max_pixels: int | None = None) -> np.ndarray:
    """RGB ``uint8`` (H, W, 3) through the node's conversion; raises ``ImageDecodeError`` on bad images."""
    ri = _ros_image()
    return ri.msg_to_rgb(msg, max_pixels=max_pixels or ri.DEFAULT_MAX_PIXELS)


def check_first_frame(msg: Any, msgtype: str, *, topic: str, bag: str) -> None:
    """Raise :class:`UnsupportedEncodingError` when the topic's (first) image cannot be decoded by its encoding."""
    problem = encoding_problem(msg, msgtype)
    if problem:
        raise UnsupportedEncodingError(f"Topic {topic!r} in bag {bag}: {problem}. The monitor cannot judge these "
                                       "images; convert them (e.g. debayer to rgb8) or record a supported topic.",
                                       bag=bag)


def restamped(msg: Any, new_stamp_ns: int, msgtype: str) -> bytes:
    """CDR of ``msg`` with its header stamp replaced (used when the bag's header stamps are not unique)."""
    ts = typestore()
    time_t = ts.types["builtin_interfaces/msg/Time"]
    msg.header.stamp = time_t(sec=int(new_stamp_ns // 1_000_000_000), nanosec=int(new_stamp_ns % 1_000_000_000))
    return serialize(msg, msgtype)


# --- verdicts -> messages (output bag) -----------------------------------------------------------


def _fmt(value: Any) -> str:
    """KeyValue text as the node writes it: booleans lower-case, floats round-trip exact, nan as 'nan'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def verdict_cdr(v: Verdict, *, frame_id: str, threshold: float, mc_samples: int, name: str,
                hardware_id: str = "") -> bytes:
    """A ``diagnostic_msgs/DiagnosticArray`` verdict like the node's ``~/verdict`` (same keys and levels)."""
    ts = typestore()
    t = ts.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
        sec=int(v.header_stamp_ns // 1_000_000_000), nanosec=int(v.header_stamp_ns % 1_000_000_000)),
        frame_id=frame_id)
    if not v.valid:
        level, message = 2, f"no verdict (flag raised): {v.reason}"
    elif v.flag:
        level, message = 1, "out of distribution" if v.raw_is_ood else "flag held: waiting for in-distribution frames"
    else:
        level, message = 0, "in distribution"
    values = {"is_ood": v.flag, "raw_is_ood": v.raw_is_ood, "valid": v.valid, "score": float(v.score),
              "threshold": float(threshold), "latency_ms": round(float(v.latency_ms), 3),
              "inference_ms": round(float(v.latency_ms), 3) if v.source == "offline" else float("nan"),
              "mc_samples": int(mc_samples), "reason": v.reason,
              "frame_stamp": f"{v.header_stamp_ns // 1_000_000_000}.{v.header_stamp_ns % 1_000_000_000:09d}",
              "frame_id": frame_id}
    kv = t["diagnostic_msgs/msg/KeyValue"]
    status = t["diagnostic_msgs/msg/DiagnosticStatus"](level=level, name=name, message=message,
                                                      hardware_id=hardware_id,
                                                      values=[kv(key=k, value=_fmt(val)) for k, val in values.items()])
    return serialize(t[DIAGNOSTIC_ARRAY](header=header, status=[status]), DIAGNOSTIC_ARRAY)


def bool_cdr(value: bool) -> bytes:
    return serialize(typestore().types[BOOL](data=bool(value)), BOOL)
