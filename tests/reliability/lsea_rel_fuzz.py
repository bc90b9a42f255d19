"""Hypothesis strategies for the node's input, and the oracle of what the node must make of them.

``raw_specs`` draws ``sensor_msgs/Image`` fields: encodings (supported, other ROS names, random
text), sizes (0, small, large, uint32 extremes), steps (exact, padded, short, 0, huge, random) and
data (exact, truncated, oversized, empty, random length). :func:`raw_accepted` says exactly which
the node must accept (then a valid verdict) and which it must reject (an ERROR verdict, counted).

``compressed_specs`` draws ``sensor_msgs/CompressedImage``: real JPEG/PNG (colour, grey, alpha,
16 bit), truncated or bit-flipped ones, headers claiming huge sizes, magic bytes followed by
garbage, pure garbage, empty data, and format strings right, wrong or random. For each kind
:func:`compressed_allowed` gives the outcomes the node may produce ("valid", "rejected").
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from hypothesis import strategies as st

from lsea_monitor.ros_image import RAW_ENCODINGS

MAX_PIXELS = 2_000_000  #: the fuzzed node's max_image_pixels
DATA_CAP = 8 * 1024 * 1024  #: never build messages beyond this many data bytes
U32 = (1 << 32) - 1

ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "RGB8", " bgr8 ", "Mono16", "rgba8", "bgra8", "rgb16", "mono32",
             "16UC1", "32FC1", "8UC3", "yuv422", "bayer_rggb8", "jpeg", ""]
SUPPORTED = ["rgb8", "bgr8", "mono8", "mono16"]
FORMATS = ["jpeg", "png", "jpg", "rgb8; jpeg compressed bgr8", "bgr8; png compressed", "", "JPEG", " png ",
           "compressedDepth png", "16UC1; compressedDepth", "tiff", "bmp", "h264"]
GOOD_FORMATS = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed", ""]
COMPRESSED_KINDS = ["jpeg", "png", "png_gray", "png_rgba", "jpeg_gray", "png16", "jpeg_trunc", "png_trunc",
                    "jpeg_bitflip", "png_bitflip", "jpeg_huge", "png_huge", "jpeg_magic", "png_magic", "garbage",
                    "empty"]


@dataclass(frozen=True)
class RawSpec:
    encoding: str
    width: int
    height: int
    step: int
    n_bytes: int
    is_bigendian: int
    seed: int

    def message(self) -> Any:
        from sensor_msgs.msg import Image

        data = np.random.default_rng(self.seed).integers(0, 256, self.n_bytes, dtype=np.uint8).tobytes()
        return Image(height=self.height, width=self.width, encoding=self.encoding, step=self.step,
                     is_bigendian=self.is_bigendian, data=data)


def _dimension(draw: Any) -> int:
    kind = draw(st.sampled_from(["small"] * 10 + ["zero", "large", "large", "extreme"]))
    if kind == "small":
        return draw(st.integers(1, 96))
    if kind == "zero":
        return 0
    if kind == "large":
        return draw(st.integers(97, 1600))
    return draw(st.sampled_from([65535, 1 << 31, U32]))


@st.composite
def raw_specs(draw: Any) -> RawSpec:
    encoding = draw(st.one_of(*[st.sampled_from(SUPPORTED)] * 4, *[st.sampled_from(ENCODINGS)] * 3,
                              st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                      max_size=12)))
    width, height = _dimension(draw), _dimension(draw)
    channels, depth = RAW_ENCODINGS.get(encoding.strip().lower(), (draw(st.integers(1, 4)), 1))
    row = width * channels * depth
    step_kind = draw(st.sampled_from(["exact"] * 8 + ["padded", "padded", "short", "zero", "huge", "random"]))
    step = {"exact": row, "padded": row + draw(st.integers(1, 64)), "short": max(0, row - draw(st.integers(1, 8))),
            "zero": 0, "huge": U32, "random": draw(st.integers(0, U32))}[step_kind]
    step = min(step, U32)
    expected = step * height
    data_kind = draw(st.sampled_from(["exact"] * 8 + ["truncated", "oversized", "empty", "random"]))
    if data_kind == "exact" and expected <= DATA_CAP:
        n_bytes = expected
    elif data_kind == "truncated" and 0 < expected <= DATA_CAP:
        n_bytes = draw(st.integers(0, expected - 1))
    elif data_kind == "oversized" and expected + 64 <= DATA_CAP:
        n_bytes = expected + draw(st.integers(1, 64))
    elif data_kind == "empty":
        n_bytes = 0
    else:
        n_bytes = draw(st.integers(0, 4096))
    return RawSpec(encoding=encoding, width=width, height=height, step=step, n_bytes=n_bytes,
                   is_bigendian=draw(st.sampled_from([0, 0, 0, 1, 255])), seed=draw(st.integers(0, U32)))


def raw_accepted(spec: RawSpec, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether the node must accept this Image (valid verdict) rather than reject it (the node's contract)."""
    enc = spec.encoding.strip().lower()
    if enc not in RAW_ENCODINGS:
        return False
    channels, depth = RAW_ENCODINGS[enc]
    if spec.width <= 0 or spec.height <= 0 or spec.width * spec.height > max_pixels:
        return False
    return spec.step >= spec.width * channels * depth and spec.n_bytes == spec.step * spec.height


@dataclass(frozen=True)
class CompressedSpec:
    kind: str
    format: str
    width: int
    height: int
    seed: int
    cut: float  #: truncation point or flip position as a fraction of the encoded length

    def data(self) -> bytes:
        rng = np.random.default_rng(self.seed)
        h, w = self.height, self.width
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if self.kind in ("garbage",):
            return rng.integers(0, 256, max(1, int(self.cut * 8192)), dtype=np.uint8).tobytes()
        if self.kind == "empty":
            return b""
        if self.kind == "jpeg_magic":
            return b"\xff\xd8\xff" + rng.integers(0, 256, int(self.cut * 4096), dtype=np.uint8).tobytes()
        if self.kind == "png_magic":
            return b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, int(self.cut * 4096), dtype=np.uint8).tobytes()
        if self.kind == "png_huge":
            ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
            chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
            return b"\x89PNG\r\n\x1a\n" + chunk + rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        ext = ".png" if self.kind.startswith("png") else ".jpg"
        img: np.ndarray = noise
        if self.kind in ("png_gray", "jpeg_gray"):
            img = noise[:, :, 0]
        elif self.kind == "png_rgba":
            img = np.dstack([noise, rng.integers(0, 256, (h, w), dtype=np.uint8)])
        elif self.kind == "png16":
            img = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        ok, buf = cv2.imencode(ext, img)
        assert ok
        data = bytearray(buf.tobytes())
        if self.kind.endswith("_trunc"):
            return bytes(data[: max(1, int(len(data) * self.cut))])
        if self.kind.endswith("_bitflip"):
            start = 40  # past the headers that carry the size
            for i in range(1 + int(self.cut * 16)):
                pos = start + int((len(data) - start - 1) * ((self.cut * 7919 * (i + 1)) % 1.0))
                data[pos] ^= 0xFF
            return bytes(data)
        if self.kind == "jpeg_huge":  # patch the frame header to claim 60000 x 60000
            i = 2
            while i + 9 < len(data):
                marker, (length,) = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])
                if marker in (0xC0, 0xC1, 0xC2):
                    data[i + 5:i + 9] = struct.pack(">HH", 60000, 60000)
                    break
                i += 2 + length
        return bytes(data)

    def message(self) -> Any:
        from sensor_msgs.msg import CompressedImage

        return CompressedImage(format=self.format, data=self.data())


@st.composite
def compressed_specs(draw: Any) -> CompressedSpec:
    fmt = draw(st.one_of(*[st.sampled_from(GOOD_FORMATS)] * 6, *[st.sampled_from(FORMATS)] * 2,
                         st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=16)))
    kind = draw(st.one_of(st.sampled_from(COMPRESSED_KINDS[:5]), st.sampled_from(COMPRESSED_KINDS)))
    return CompressedSpec(kind=kind, format=fmt, width=draw(st.integers(1, 160)),
                          height=draw(st.integers(1, 120)), seed=draw(st.integers(0, U32)),
                          cut=draw(st.floats(0.05, 0.95)))


def format_accepted(fmt: str) -> bool:
    f = fmt.strip().lower()
    return not f or ("compresseddepth" not in f and any(k in f for k in ("jpeg", "jpg", "png")))


def compressed_allowed(spec: CompressedSpec) -> set[str]:
    """Outcomes the node may give: "valid" (a verdict with a score) and/or "rejected"."""
    if not format_accepted(spec.format):
        return {"rejected"}
    if spec.kind in ("jpeg", "png", "png_gray", "png_rgba", "jpeg_gray", "png16"):  # 16 bit: decoded to 8 bit
        return {"valid"}
    if spec.kind in ("jpeg_huge", "png_huge", "jpeg_magic", "png_magic", "garbage", "empty"):
        return {"rejected"}
    return {"valid", "rejected"}  # truncated or bit-flipped: decoders may recover part of the image
