"""Bag I/O and decoding: both storages, Image and CompressedImage, bare files, and every kind of bad bag."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lsea_replay_testutil import CAMERA, GT, PERIOD_NS, START_NS, frames_rgb
from lsea_monitor.replay import decode
from lsea_monitor.replay.bag_io import BagReader, OutputMessage, write_bag
from lsea_monitor.replay.errors import (
    BagOpenError,
    CorruptBagError,
    EmptyBagError,
    MissingTopicError,
    ReplayError,
    UnsupportedEncodingError,
    UnsupportedMessageTypeError,
)
from lsea_monitor.replay.offline import check_image_topic, iter_frames
from lsea_monitor.replay.records import Verdict

STORAGES = ("sqlite3", "mcap")


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("kind", ["raw", "png", "jpeg"])
def test_frames_round_trip(make_bag, storage: str, kind: str) -> None:
    spec = make_bag(storage=storage, kind=kind, n=5, gt=[0, 0, 1, 1, 0])
    with BagReader(spec.path) as bag:
        info = bag.info()
        assert info.storage == storage and info.message_count == 10
        assert info.start_ns == START_NS and info.end_ns == START_NS + 4 * PERIOD_NS + 1
        assert info.topics[CAMERA].msgtype == (decode.IMAGE if kind == "raw" else decode.COMPRESSED)
        assert info.topics[GT].count == 5
        frames = list(iter_frames(bag, CAMERA))
    assert [d.frame.index for d in frames] == list(range(5))
    assert [d.frame.stamp_ns for d in frames] == spec.stamps_ns
    assert [d.frame.header_stamp_ns for d in frames] == spec.stamps_ns
    for d, rgb in zip(frames, spec.images):
        assert d.rgb is not None and d.rgb.shape == rgb.shape and d.rgb.dtype == np.uint8
        assert (d.frame.height, d.frame.width) == rgb.shape[:2]
        if kind == "jpeg":  # lossy: what OpenCV itself decodes from the same bytes
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            np.testing.assert_array_equal(d.rgb, cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        else:
            np.testing.assert_array_equal(d.rgb, rgb)


@pytest.mark.parametrize("storage", STORAGES)
def test_bare_storage_file_opens(make_bag, storage: str) -> None:
    spec = make_bag(storage=storage, n=3)
    with BagReader(storage_file(spec.path)) as bag:
        assert bag.info().storage == storage
        assert len(list(bag.messages([CAMERA]))) == 3


def test_bgr8_is_converted_like_the_node(make_bag) -> None:
    spec = make_bag(encoding="bgr8", n=2)
    with BagReader(spec.path) as bag:
        frames = list(iter_frames(bag, CAMERA))
    np.testing.assert_array_equal(frames[0].rgb, spec.images[0])


def test_restamp_replaces_header_stamps(make_bag) -> None:
    spec = make_bag(n=3, header_stamps_ns=[0, 0, 0])
    with BagReader(spec.path) as bag:
        plain = [d.frame.header_stamp_ns for d in iter_frames(bag, CAMERA, decode_pixels=False)]
        re = list(iter_frames(bag, CAMERA, restamp=True, keep_raw=True, decode_pixels=False))
    assert plain == [0, 0, 0]
    assert [d.frame.header_stamp_ns for d in re] == spec.stamps_ns
    # the re-serialised message carries the new stamp
    msg = decode.deserialize(re[1].raw, decode.IMAGE)
    assert decode.stamp_ns(msg.header.stamp) == spec.stamps_ns[1]


# --- failures ----------------------------------------------------------------------------------


def test_no_such_bag(tmp_path: Path) -> None:
    with pytest.raises(BagOpenError, match="does not exist") as e:
        BagReader(tmp_path / "nope").open()
    assert str(tmp_path / "nope") in str(e.value)


def test_folder_without_metadata_is_not_a_bag(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(BagOpenError, match="no metadata.yaml"):
        BagReader(tmp_path / "x").open()
    (tmp_path / "y.txt").write_text("hello")
    with pytest.raises(BagOpenError, match="unknown storage file type '.txt'"):
        BagReader(tmp_path / "y.txt").open()


@pytest.mark.parametrize("storage", STORAGES)
def test_missing_topic_names_topic_and_bag(make_bag, storage: str) -> None:
    spec = make_bag(storage=storage, n=2)
    with BagReader(spec.path) as bag, pytest.raises(MissingTopicError) as e:
        bag.require_topic("/front/image", decode.IMAGE_TYPES, what="image topic")
    text = str(e.value)
    assert "'/front/image'" in text and str(spec.path) in text and CAMERA in text  # lists what is there
    assert e.value.exit_code == 2


@pytest.mark.parametrize("storage", STORAGES)
def test_empty_bag_and_empty_topic(make_bag, tmp_path: Path, storage: str) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = tmp_path / "empty"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3) as w:
        w.add_connection(CAMERA, decode.IMAGE, typestore=decode.typestore())
    with BagReader(path) as bag:
        with pytest.raises(EmptyBagError, match="is empty: it holds no message") as e:
            bag.require_messages()
        assert str(path) in str(e.value)
        with pytest.raises(EmptyBagError, match=f"{CAMERA}.*holds no message"):
            bag.require_topic(CAMERA, decode.IMAGE_TYPES)
    spec = make_bag("with_empty_topic", storage=storage, n=2, extra_topics=[("/cam2/image", decode.IMAGE)])
    with BagReader(spec.path) as bag, pytest.raises(EmptyBagError, match="'/cam2/image'.*holds no message"):
        bag.require_topic("/cam2/image", decode.IMAGE_TYPES)


def test_wrong_message_type_for_the_image_topic(make_bag) -> None:
    spec = make_bag(n=2, gt=[0, 1])
    with BagReader(spec.path) as bag, pytest.raises(UnsupportedMessageTypeError, match="std_msgs/msg/Bool"):
        bag.require_topic(GT, decode.IMAGE_TYPES, what="image topic")


@pytest.mark.parametrize("storage", STORAGES)
def test_unsupported_raw_encoding(make_bag, storage: str) -> None:
    spec = make_bag(storage=storage, n=2, encoding="32FC1")
    with BagReader(spec.path) as bag, pytest.raises(UnsupportedEncodingError) as e:
        check_image_topic(bag, CAMERA)
    assert "'32FC1'" in str(e.value) and str(spec.path) in str(e.value) and CAMERA in str(e.value)


def test_unsupported_compressed_format(make_bag) -> None:
    spec = make_bag(n=2, kind="webp")
    with BagReader(spec.path) as bag, pytest.raises(UnsupportedEncodingError, match="format 'webp'"):
        list(iter_frames(bag, CAMERA))


def test_undecodable_frame_midway_is_rejected_not_fatal(make_bag) -> None:
    spec = make_bag(n=4, bad_data_at=[2])
    with BagReader(spec.path) as bag:
        frames = list(iter_frames(bag, CAMERA))
    assert [d.rgb is None for d in frames] == [False, False, True, False]
    assert frames[2].reason.startswith("rejected image: Image data is truncated")


def big_sqlite_bag(make_bag, name: str = "bag"):
    """Frames large enough that sqlite keeps its index pages at the front: damage at the end hits the data."""
    return make_bag(name, storage="sqlite3", images=frames_rgb(30, 64, 128))


def test_truncated_sqlite3_fails_midway_with_count(make_bag) -> None:
    spec = big_sqlite_bag(make_bag)
    f = storage_file(spec.path)
    os.truncate(f, int(f.stat().st_size * 0.999))
    got = []
    with BagReader(spec.path) as bag, pytest.raises(CorruptBagError) as e:
        for m in bag.messages([CAMERA]):
            got.append(m)
    assert 0 < e.value.messages_read == len(got) < 30
    assert "corrupted or truncated" in str(e.value) and str(spec.path) in str(e.value)
    assert e.value.exit_code == 3


@pytest.mark.parametrize("storage", STORAGES)
def test_badly_truncated_bag_fails_at_open(make_bag, storage: str) -> None:
    spec = make_bag(storage=storage, n=6)
    f = storage_file(spec.path)
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(CorruptBagError, match="corrupted or truncated") as e:
        BagReader(spec.path).open()
    assert str(spec.path) in str(e.value) and e.value.messages_read == 0


def test_corrupted_sqlite3_pages(make_bag) -> None:
    spec = big_sqlite_bag(make_bag)
    f = storage_file(spec.path)
    with open(f, "r+b") as fh:
        fh.seek(int(f.stat().st_size * 0.6))
        fh.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with BagReader(spec.path) as bag, pytest.raises(CorruptBagError, match="reading failed after"):
        list(bag.messages([CAMERA]))


def test_corrupted_metadata(make_bag) -> None:
    spec = make_bag(n=2)
    (spec.path / "metadata.yaml").write_text("rosbag2_bagfile_information: [this is: not, {valid")
    with pytest.raises(CorruptBagError, match="corrupted or truncated"):
        BagReader(spec.path).open()


def test_bag_index_longer_than_storage_is_truncation(make_bag) -> None:
    spec = make_bag(storage="mcap", n=3)
    meta = spec.path / "metadata.yaml"
    meta.write_text(meta.read_text().replace("message_count: 3", "message_count: 5"))
    with BagReader(spec.path) as bag:
        assert bag.topics()[CAMERA].count == 5  # what metadata.yaml says
        with pytest.raises(CorruptBagError, match="truncated.*3 of 5") as e:
            list(bag.messages([CAMERA]))
    assert e.value.messages_read == 3


def test_mcap_crc_mismatch_is_detected(tmp_path: Path) -> None:
    mcap_ros2_writer = pytest.importorskip("mcap_ros2.writer")
    path = tmp_path / "crc.mcap"
    msgdef, _ = decode.typestore().generate_msgdef(decode.BOOL, ros_version=2)
    with open(path, "wb") as fh:
        w = mcap_ros2_writer.Writer(fh)
        schema = w.register_msgdef(decode.BOOL.replace("/msg/", "/msg/"), msgdef)
        for i in range(50):
            w.write_message(topic="/flag", schema=schema, message={"data": bool(i % 2)}, log_time=START_NS + i,
                            publish_time=START_NS + i)
        w.finish()
    with BagReader(path) as bag:
        bag.verify()  # intact: no error
    data = bytearray(path.read_bytes())
    # flip a byte inside the first chunk's compressed records (after magic + header)
    data[200] ^= 0xFF
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    with pytest.raises((CorruptBagError,)) as e:
        with BagReader(bad) as bag:
            bag.verify()
    assert "bad.mcap" in str(e.value)


# --- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("out_name", ["out.mcap", "out_bag"])
def test_write_bag_adds_verdicts(make_bag, tmp_path: Path, out_name: str) -> None:
    spec = make_bag(storage="sqlite3", n=3, gt=[0, 1, 0])
    added = []
    for i, stamp in enumerate(spec.stamps_ns):
        v = Verdict(frame_index=i, stamp_ns=stamp, header_stamp_ns=stamp, score=0.5 + i, raw_is_ood=i == 1,
                    flag=i >= 1, valid=True, latency_ms=12.5)
        added.append(OutputMessage("/lsea_monitor/verdict", decode.DIAGNOSTIC_ARRAY, stamp,
                                   decode.verdict_cdr(v, frame_id="cam", threshold=1.0, mc_samples=8,
                                                      name="lsea_monitor: ood verdict")))
        added.append(OutputMessage("/lsea_monitor/ood", decode.BOOL, stamp, decode.bool_cdr(v.flag)))
    with BagReader(spec.path) as bag:
        info = write_bag(tmp_path / out_name, source=bag, added=added)
    assert info["messages"] == 12 and not info["skipped_topics"]
    out = Path(info["path"])
    assert out.is_file() == out_name.endswith(".mcap")
    with BagReader(out) as bag:
        topics = bag.topics()
        assert {CAMERA, GT, "/lsea_monitor/verdict", "/lsea_monitor/ood"} <= set(topics)
        verdicts = [decode.deserialize(m.rawdata, decode.DIAGNOSTIC_ARRAY) for m in bag.messages(["/lsea_monitor/verdict"])]
        stamps = [m.stamp_ns for m in bag.messages(["/lsea_monitor/ood"])]
    assert stamps == spec.stamps_ns
    values = {kv.key: kv.value for kv in verdicts[1].status[0].values}
    assert set(values) == set(decode.VERDICT_KEYS)
    assert values["score"] == "1.5" and values["is_ood"] == "true" and values["raw_is_ood"] == "true"
    assert decode.stamp_ns(verdicts[1].header.stamp) == spec.stamps_ns[1]
    levels = [v.status[0].level for v in verdicts]
    assert levels == [0, 1, 1]  # OK, WARN (OoD), WARN (flag held), as the node
    with pytest.raises(ReplayError, match="already exists"):
        with BagReader(spec.path) as bag:
            write_bag(out, source=bag, added=[])


def test_write_bag_from_corrupt_source_leaves_nothing(make_bag, tmp_path: Path) -> None:
    spec = big_sqlite_bag(make_bag)
    f = storage_file(spec.path)
    os.truncate(f, int(f.stat().st_size * 0.999))
    with BagReader(spec.path) as bag, pytest.raises(CorruptBagError):
        write_bag(tmp_path / "out_dir", source=bag, added=[])
    assert not (tmp_path / "out_dir").exists()
    shutil.rmtree(spec.path)
