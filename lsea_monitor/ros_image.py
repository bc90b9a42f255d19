"""ROS image messages -> RGB ``uint8`` arrays, through cv_bridge, never crashing on garbage.

Supported: ``sensor_msgs/Image`` with encoding ``rgb8``, ``bgr8``, ``mono8`` (replicated to three
channels) and ``mono16`` (scaled to 8 bit over the full 16-bit range), and
``sensor_msgs/CompressedImage`` holding JPEG or PNG. Everything is validated *before* cv_bridge
sees it (cv_bridge trusts ``height``/``width`` and ignores ``step``); any problem raises
:class:`~lsea_monitor.errors.ImageDecodeError` naming it. Messages are duck-typed: anything with the
message's fields works, so this module does not import ``sensor_msgs`` at import time.
"""

from __future__ import annotations

import struct
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
from cv_bridge import CvBridge

from lsea_monitor.errors import ImageDecodeError
# Default cap on width * height (a 4096 x 4096 image): the node's ``max_image_pixels`` default,
# defined with the node's parameters and re-exported here (replay.decode uses it).
from lsea_monitor.node_params import DEFAULT_MAX_PIXELS  # noqa: F401

#: encoding -> (channels, bytes per channel)
RAW_ENCODINGS: dict[str, tuple[int, int]] = {"rgb8": (3, 1), "bgr8": (3, 1), "mono8": (1, 1), "mono16": (1, 2)}

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (carry the image size); C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

_bridge = CvBridge()


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{what} has zero size ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{what} is too large: {width}x{height} = {width * height} pixels > max_image_pixels {max_pixels}."
        )


def image_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to an RGB ``uint8`` array of shape (height, width, 3).

    Raises
    ------
    ImageDecodeError
        Unsupported encoding, zero or oversize dimensions, a ``step`` shorter than a row, or
        ``data`` whose length is not ``step * height``.
    """
    encoding = str(getattr(msg, "encoding", "")).strip().lower()
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(
            f"Unsupported image encoding {encoding!r}; supported: {', '.join(RAW_ENCODINGS)} "
            "(or a sensor_msgs/CompressedImage with JPEG or PNG)."
        )
    channels, depth = RAW_ENCODINGS[encoding]
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels, f"Image ({encoding})")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageDecodeError(
            f"Image step {step} is shorter than a row: width {width} x {channels} channel(s) x {depth} "
            f"byte(s) = {row_bytes}."
        )
    n_bytes = len(msg.data)
    if n_bytes != step * height:
        kind = "truncated" if n_bytes < step * height else "too long"
        raise ImageDecodeError(
            f"Image data is {kind}: {n_bytes} bytes, expected step {step} x height {height} = {step * height}."
        )
    big_endian = bool(msg.is_bigendian)
    if step != row_bytes or big_endian or msg.encoding != encoding:
        # cv_bridge ignores row padding, cannot byte-swap on numpy 2 and knows only lower-case
        # names: hand it a packed, native-order copy of the same pixels.
        rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
        packed = np.ascontiguousarray(rows)
        if depth == 2 and big_endian != (sys.byteorder == "big"):
            packed = packed.view(np.uint16).byteswap().view(np.uint8)
        msg = SimpleNamespace(
            height=height, width=width, step=row_bytes, encoding=encoding,
            is_bigendian=int(sys.byteorder == "big"), data=packed.tobytes(),
        )
    try:
        if encoding == "mono16":
            mono16 = _bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
            # full 16-bit range to 8 bit, rounded: 0 -> 0, 65535 -> 255
            mono8 = ((mono16.astype(np.uint32) + 128) // 257).astype(np.uint8)
            rgb = np.repeat(mono8[:, :, None], 3, axis=2)
        else:
            rgb = _bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as err:  # cv_bridge raises CvBridgeError, KeyError, cv2.error, TypeError...
        raise ImageDecodeError(f"cv_bridge could not convert a {width}x{height} {encoding} image: {err!r}") from err
    return _as_rgb(rgb, f"{encoding} image")


def _compressed_size(data: bytes) -> tuple[str, int, int]:
    """Read (kind, width, height) from a JPEG or PNG header without decoding the pixels."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError(f"CompressedImage PNG header is truncated or invalid ({len(data)} bytes).")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(_JPEG_MAGIC):
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _JPEG_SOF:
                if i + 9 > n:
                    break
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", width, height
            if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before any frame
                break
            i += 2 + length
        raise ImageDecodeError(f"CompressedImage JPEG has no readable frame header ({len(data)} bytes).")
    head = data[:8].hex(" ") if data else "empty"
    raise ImageDecodeError(f"CompressedImage data is neither JPEG nor PNG ({len(data)} bytes, starts with {head}).")


def compressed_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an RGB ``uint8`` array (H, W, 3).

    The header is read first, so an oversize image is refused before anything is decoded.
    """
    fmt = str(getattr(msg, "format", "")).strip()
    fmt_l = fmt.lower()
    if fmt_l and ("compresseddepth" in fmt_l or not any(k in fmt_l for k in ("jpeg", "jpg", "png"))):
        raise ImageDecodeError(f"Unsupported CompressedImage format {fmt!r}; supported: jpeg, png.")
    data = bytes(msg.data)
    kind, width, height = _compressed_size(data)
    _check_size(width, height, max_pixels, f"CompressedImage ({kind})")
    try:
        decoded = _bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="passthrough")
    except Exception as err:
        raise ImageDecodeError(
            f"cv_bridge could not decode a {len(data)}-byte {kind} CompressedImage: {err!r}") from err
    if decoded is None:
        raise ImageDecodeError(f"Could not decode {kind} CompressedImage data ({len(data)} bytes, format {fmt!r}).")
    import cv2  # cv_bridge needs it anyway

    if decoded.ndim == 2:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 3:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    else:
        raise ImageDecodeError(f"Decoded {kind} CompressedImage has an unexpected shape {decoded.shape}.")
    return _as_rgb(rgb, f"{kind} CompressedImage")


def msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Dispatch on the message: ``CompressedImage`` (has ``format``) or ``Image``."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg, max_pixels=max_pixels)
    return image_to_rgb(msg, max_pixels=max_pixels)


def _as_rgb(img: Any, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ImageDecodeError(f"{what} did not convert to (H, W, 3): got {getattr(img, 'shape', type(img))}.")
    if img.dtype != np.uint8:
        raise ImageDecodeError(f"{what} did not convert to uint8: got {img.dtype}.")
    # own, contiguous memory: the result outlives the message buffer
    if img.flags.owndata and img.flags.c_contiguous:
        return img
    return np.array(img, dtype=np.uint8, order="C", copy=True)
