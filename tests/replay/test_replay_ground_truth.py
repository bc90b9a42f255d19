"""Ground truth from a Bool topic, a YAML sidecar, a CSV sidecar, or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsea_replay_testutil import GT, PERIOD_NS, START_NS
from lsea_monitor.replay import ground_truth as gtm
from lsea_monitor.replay.bag_io import BagReader
from lsea_monitor.replay.errors import GroundTruthError, UnsupportedMessageTypeError
from lsea_monitor.replay.records import Interval

LABELS = [0, 0, 1, 1, 0, 0, 1, 0]  # frames 2-3 and 6 are OoD
EXPECTED = (Interval(START_NS + 2 * PERIOD_NS, START_NS + 4 * PERIOD_NS),
            Interval(START_NS + 6 * PERIOD_NS, START_NS + 7 * PERIOD_NS))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bool_topic(make_bag, storage: str) -> None:
    spec = make_bag(storage=storage, n=8, gt=LABELS)
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag, topic=GT)
    assert gt.source == f"topic:{GT}" and gt.available
    assert gt.intervals == EXPECTED
    assert gtm.labels_for(spec.stamps_ns, gt.intervals).tolist() == [bool(x) for x in LABELS]


def test_bool_topic_true_at_the_end_lasts_to_the_bag_end(make_bag) -> None:
    spec = make_bag(n=4, gt=[0, 0, 1, 1])
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag, topic=GT)
        end = bag.info().end_ns
    assert gt.intervals == (Interval(START_NS + 2 * PERIOD_NS, end),)
    assert gtm.labels_for(spec.stamps_ns, gt.intervals).tolist() == [False, False, True, True]


def test_bool_messages_on_changes_only() -> None:
    gt = gtm.from_bool_messages([(10, False), (20, True), (50, False), (70, True)], bag_end_ns=100, source="t")
    assert gt.intervals == (Interval(20, 50), Interval(70, 100))
    with pytest.raises(GroundTruthError, match="not in time order"):
        gtm.from_bool_messages([(20, True), (10, False)], bag_end_ns=100, source="t")


def test_gt_topic_of_the_wrong_type(make_bag) -> None:
    spec = make_bag(n=2, gt=[0, 1])
    with BagReader(spec.path) as bag, pytest.raises(UnsupportedMessageTypeError, match="ground-truth topic"):
        gtm.load(bag, topic="/cam/image")


def test_yaml_sidecar_all_time_bases(make_bag, tmp_path: Path) -> None:
    spec = make_bag(n=8, gt=LABELS)
    f = tmp_path / "gt.yaml"
    f.write_text(f"""# OoD intervals
intervals:
  - {{start_s: 0.2, end_s: 0.4, label: fog}}
  - {{start_ns: {6 * PERIOD_NS}, end_ns: {7 * PERIOD_NS}}}
""")
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag, file=str(f))
    assert gt.source == f"yaml:{f}"
    assert [(i.start_ns, i.end_ns) for i in gt.intervals] == [(i.start_ns, i.end_ns) for i in EXPECTED]
    assert gt.intervals[0].label == "fog"
    # absolute bag time, exact to the nanosecond (beyond float precision)
    f.write_text(f"intervals:\n  - {{start_abs_ns: {START_NS + 2 * PERIOD_NS + 1}, end_abs_ns: {START_NS + 4 * PERIOD_NS}, "
                 "label: mud}\n")
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag, file=str(f))
    assert gt.intervals == (Interval(START_NS + 2 * PERIOD_NS + 1, START_NS + 4 * PERIOD_NS, "mud"),)


def test_csv_sidecar(make_bag, tmp_path: Path) -> None:
    spec = make_bag(storage="sqlite3", n=8, gt=LABELS)
    f = tmp_path / "gt.csv"
    f.write_text("# drive 7\nstart_s, end_s, label\n0.2, 0.4, fog\n0.6,0.7,\n")
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag, file=str(f))
    assert gt.source == f"csv:{f}"
    assert [(i.start_ns, i.end_ns, i.label) for i in gt.intervals] == [
        (EXPECTED[0].start_ns, EXPECTED[0].end_ns, "fog"), (EXPECTED[1].start_ns, EXPECTED[1].end_ns, "")]
    f.write_text(f"start_abs_ns,end_abs_ns\n{START_NS + 2 * PERIOD_NS},{START_NS + 4 * PERIOD_NS}\n")
    with BagReader(spec.path) as bag:
        assert gtm.load(bag, file=str(f)).intervals == (EXPECTED[0],)


def test_no_ground_truth(make_bag) -> None:
    spec = make_bag(n=2)
    with BagReader(spec.path) as bag:
        gt = gtm.load(bag)
    assert gt.source == "none" and not gt.available and gt.intervals == ()


def test_overlapping_intervals_merge() -> None:
    merged = gtm.merge_intervals([Interval(5, 10, "a"), Interval(0, 6, "b"), Interval(10, 12, "a"), Interval(20, 30)])
    assert merged == (Interval(0, 12, "b+a"), Interval(20, 30))


@pytest.mark.parametrize("text, match", [
    ("intervals:\n  - {start_s: 1.0}\n", "needs both start_s and end_s"),
    ("intervals:\n  - {start_s: 0.5, end_s: 0.2}\n", "ends .* before or where it starts"),
    ("intervals:\n  - {start_s: -1, end_s: 0.2}\n", "must be >= 0"),
    ("intervals:\n  - {begin: 1, stop: 2}\n", r"unknown key\(s\) \['begin', 'stop'\]"),
    ("intervals:\n  - {label: fog}\n", "no time columns"),
    ("intervals:\n  - {start_s: 0.1, end_s: 0.2, lable: fog}\n", r"unknown key\(s\) \['lable'\]"),
    ("interval:\n  - {start_s: 0.1, end_s: 0.2}\n", r"exactly one key, 'intervals'.*got keys \['interval'\]"),
    ("intervals: []\nnote: x\n", "exactly one key, 'intervals'"),
    ("intervals:\n  - {start_s: a, end_s: 2}\n", "must be numbers"),
    ("intervals: [1, 2]\n", "is not a mapping"),
    ("intervals: {a: 1}\n", "exactly one key, 'intervals', holding a list"),
    ("intervals:\n  - {start_s: [1, 2\n", "not valid YAML"),
    ("intervals:\n  - {start_s: 100, end_s: 200}\n", "lie outside bag"),
])
def test_bad_yaml(make_bag, tmp_path: Path, text: str, match: str) -> None:
    spec = make_bag(n=4)
    f = tmp_path / "gt.yaml"
    f.write_text(text)
    with BagReader(spec.path) as bag, pytest.raises(GroundTruthError, match=match):
        gtm.load(bag, file=str(f))


@pytest.mark.parametrize("name, text, match", [
    ("gt.csv", "", "is empty"),
    ("gt.csv", "from,to\n1,2\n", "names no time columns"),
    ("gt.csv", "start_s,end_s,lable\n0,0.2,fog\n", r"unknown key\(s\) \['lable'\]"),
    ("gt.csv", "start_ns,end_ns\nx,2\n", "must be a number"),
    ("gt.txt", "start_s,end_s\n0,1\n", "unknown format '.txt'"),
])
def test_bad_csv_and_files(make_bag, tmp_path: Path, name: str, text: str, match: str) -> None:
    spec = make_bag(n=4)
    f = tmp_path / name
    f.write_text(text)
    with BagReader(spec.path) as bag, pytest.raises(GroundTruthError, match=match):
        gtm.load(bag, file=str(f))


def test_missing_file_and_both_sources(make_bag, tmp_path: Path) -> None:
    spec = make_bag(n=4, gt=[0, 1, 1, 0])
    with BagReader(spec.path) as bag:
        with pytest.raises(GroundTruthError, match="does not exist"):
            gtm.load(bag, file=str(tmp_path / "missing.yaml"))
        with pytest.raises(GroundTruthError, match="not both"):
            gtm.load(bag, topic=GT, file=str(tmp_path / "missing.yaml"))
