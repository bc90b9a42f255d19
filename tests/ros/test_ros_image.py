"""lsea_monitor.ros_image: every supported encoding, and every kind of bad input -> ImageDecodeError."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages (ros-sensor-msgs) not installed")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from lsea_monitor.errors import ImageDecodeError  # noqa: E402
from lsea_monitor.ros_image import compressed_to_rgb, image_to_rgb, msg_to_rgb  # noqa: E402

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)


def raw(arr: np.ndarray, encoding: str, *, step: int | None = None, pad: int = 0, big_endian: bool = False) -> Image:
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1).view(np.uint8)
    if pad:
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=0xAB)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian),
                 step=rows.shape[1] if step is None else step, data=rows.tobytes())


def compressed(bgr: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return CompressedImage(format=fmt, data=buf.tobytes())


# --- supported encodings -----------------------------------------------------------------------
def test_rgb8_is_returned_unchanged_and_owns_its_memory() -> None:
    msg = raw(RGB, "rgb8")
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)
    msg.data[0] ^= 0xFF  # the message buffer changing later must not change the result
    assert out[0, 0, 0] == RGB[0, 0, 0]


def test_bgr8_is_swapped_to_rgb() -> None:
    np.testing.assert_array_equal(image_to_rgb(raw(np.ascontiguousarray(RGB[:, :, ::-1]), "bgr8")), RGB)


def test_mono8_is_replicated_to_three_channels() -> None:
    gray = RGB[:, :, 0].copy()
    out = image_to_rgb(raw(gray, "mono8"))
    assert out.shape == (6, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_is_scaled_over_the_full_range(big_endian: bool) -> None:
    values = np.array([[0, 65535, 257, 32896, 128, 129]], dtype=np.uint16)
    arr = values.astype(">u2" if big_endian else "<u2")
    out = image_to_rgb(raw(arr, "mono16", big_endian=big_endian))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 1, 128, 0, 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_row_padding_in_step_is_skipped(encoding: str) -> None:
    src = RGB if encoding == "rgb8" else np.ascontiguousarray(RGB[:, :, ::-1])
    np.testing.assert_array_equal(image_to_rgb(raw(src, encoding, pad=5)), RGB)


def test_big_endian_flag_on_8bit_images_is_harmless() -> None:
    np.testing.assert_array_equal(image_to_rgb(raw(RGB, "rgb8", big_endian=True)), RGB)


def test_encoding_name_is_case_insensitive() -> None:
    np.testing.assert_array_equal(image_to_rgb(raw(RGB, "RGB8")), RGB)


def test_png_roundtrip_is_exact() -> None:
    msg = compressed(np.ascontiguousarray(RGB[:, :, ::-1]), ".png", "png")
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)


def test_grayscale_png_becomes_three_channels() -> None:
    gray = RGB[:, :, 1].copy()
    out = compressed_to_rgb(compressed(gray, ".png", "mono8; png compressed "))
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_jpeg_decodes_close_to_the_source() -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0], smooth[..., 1], smooth[..., 2] = 200, 60, 20  # RGB
    msg = compressed(np.ascontiguousarray(smooth[:, :, ::-1]), ".jpg", "rgb8; jpeg compressed bgr8")
    out = msg_to_rgb(msg)
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - smooth).max() <= 4


def test_empty_format_is_sniffed_from_the_data() -> None:
    msg = compressed(np.ascontiguousarray(RGB[:, :, ::-1]), ".png", "")
    np.testing.assert_array_equal(msg_to_rgb(msg), RGB)


# --- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["yuv422", "rgba8", "32FC1", "bayer_rggb8", ""])
def test_unknown_encoding_is_named(encoding: str) -> None:
    msg = raw(RGB, "rgb8")
    msg.encoding = encoding
    with pytest.raises(ImageDecodeError, match=f"Unsupported image encoding '{encoding.lower()}'"):
        image_to_rgb(msg)


def test_truncated_data() -> None:
    msg = raw(RGB, "rgb8")
    msg.data = msg.data[:-10]
    with pytest.raises(ImageDecodeError, match=r"truncated: 116 bytes, expected step 21 x height 6 = 126"):
        image_to_rgb(msg)


def test_data_longer_than_step_times_height() -> None:
    msg = raw(RGB, "rgb8")
    msg.data = bytes(msg.data) + b"\0"
    with pytest.raises(ImageDecodeError, match="too long"):
        image_to_rgb(msg)


@pytest.mark.parametrize(("height", "width"), [(0, 7), (6, 0), (0, 0)])
def test_zero_size(height: int, width: int) -> None:
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=b"")
    with pytest.raises(ImageDecodeError, match="zero size"):
        image_to_rgb(msg)


def test_step_shorter_than_a_row() -> None:
    msg = raw(RGB, "rgb8", step=20)
    msg.data = bytes(20 * 6)
    with pytest.raises(ImageDecodeError, match="step 20 is shorter than a row"):
        image_to_rgb(msg)


def test_huge_image_is_refused_before_touching_the_data() -> None:
    # claims 100000 x 100000 with almost no data: the size check comes first, nothing is allocated
    msg = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=b"\0" * 16)
    with pytest.raises(ImageDecodeError, match="too large: 100000x100000"):
        image_to_rgb(msg)


def test_max_pixels_is_configurable() -> None:
    image_to_rgb(raw(RGB, "rgb8"), max_pixels=42)
    with pytest.raises(ImageDecodeError, match="max_image_pixels 41"):
        image_to_rgb(raw(RGB, "rgb8"), max_pixels=41)


@pytest.mark.parametrize("data", [b"", b"garbage", bytes(range(256)) * 4, b"GIF89a" + b"\0" * 64])
def test_compressed_garbage(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="neither JPEG nor PNG"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=data))


@pytest.mark.parametrize("magic", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n"])
def test_compressed_with_a_valid_magic_then_garbage(magic: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        compressed_to_rgb(CompressedImage(format="", data=magic + bytes(RNG.integers(0, 256, 500, dtype=np.uint8))))


def test_truncated_png_body_is_refused() -> None:
    msg = compressed(np.ascontiguousarray(RGB[:, :, ::-1]), ".png", "png")
    msg.data = bytes(msg.data)[:40]
    with pytest.raises(ImageDecodeError, match="Could not decode png"):
        compressed_to_rgb(msg)


def test_compressed_huge_header_is_refused_before_decoding() -> None:
    msg = compressed(np.ascontiguousarray(RGB[:, :, ::-1]), ".png", "png")
    data = bytearray(msg.data)
    data[16:24] = struct.pack(">II", 50_000, 50_000)  # IHDR width, height
    msg.data = bytes(data)
    with pytest.raises(ImageDecodeError, match="too large: 50000x50000"):
        compressed_to_rgb(msg)


def test_jpeg_oversize_is_read_from_the_frame_header() -> None:
    msg = compressed(np.zeros((40, 60, 3), np.uint8), ".jpg", "jpeg")
    with pytest.raises(ImageDecodeError, match=r"CompressedImage \(jpeg\) is too large: 60x40"):
        compressed_to_rgb(msg, max_pixels=100)


@pytest.mark.parametrize("fmt", ["tiff", "compressedDepth png", "webp"])
def test_unsupported_compressed_format_is_named(fmt: str) -> None:
    msg = compressed(np.ascontiguousarray(RGB[:, :, ::-1]), ".png", fmt)
    with pytest.raises(ImageDecodeError, match=f"Unsupported CompressedImage format '{fmt}'"):
        compressed_to_rgb(msg)


@settings(max_examples=150, deadline=None)
@given(
    encoding=st.sampled_from(["rgb8", "bgr8", "mono8", "mono16", "yuv422", "weird"]),
    height=st.integers(0, 40), width=st.integers(0, 40), step=st.integers(0, 200),
    big_endian=st.booleans(), data=st.binary(max_size=2000),
)
def test_fuzzed_raw_messages_convert_or_raise_image_decode_error(
    encoding: str, height: int, width: int, step: int, big_endian: bool, data: bytes
) -> None:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=int(big_endian), data=data)
    try:
        out = image_to_rgb(msg)
    except ImageDecodeError:
        return
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=100, deadline=None)
@given(prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]),
       data=st.binary(max_size=600))
def test_fuzzed_compressed_messages_convert_or_raise_image_decode_error(prefix: bytes, data: bytes) -> None:
    try:
        out = compressed_to_rgb(CompressedImage(format="", data=prefix + data), max_pixels=1 << 20)
    except ImageDecodeError:
        return
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
