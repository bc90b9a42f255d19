"""lsea_monitor.replay.evaluate: pure functions against hand-computed oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsea_monitor.replay.evaluate import (
    detection_delays,
    detection_quality,
    driving_span,
    false_alarms,
    in_intervals,
    judged_fraction,
    latency_summary,
    rising_edges,
    score_agreement,
    summarize,
)
from lsea_monitor.replay.records import Interval

T0 = 1_000_000_000_000  # an arbitrary bag start
MS = 1_000_000


def t(seconds: float) -> int:
    return T0 + int(round(seconds * 1e9))


# 20 frames at 10 Hz: t = 0.0 .. 1.9 s. OoD intervals [0.5, 1.0) and [1.5, 1.8).
STAMPS = [t(i / 10) for i in range(20)]
INTERVALS = [Interval(t(0.5), t(1.0), "fog"), Interval(t(1.5), t(1.8), "mud")]
#        0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19
FLAGS = [1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0]
FLAGS = [bool(f) for f in FLAGS]


def test_rising_edges_ignore_the_initial_raised_flag() -> None:
    # starts raised (fail closed): frames 0-1 raised is no edge; edges at 7, 12, 17
    assert rising_edges(FLAGS, initial_flag=True).tolist() == [7, 12, 17]
    assert rising_edges(FLAGS, initial_flag=False).tolist() == [0, 7, 12, 17]
    assert rising_edges([], initial_flag=True).tolist() == []


def test_detection_delay_oracle() -> None:
    out = detection_delays(STAMPS, FLAGS, INTERVALS, origin_ns=T0)
    fog, mud = out["intervals"]
    # fog: frames 5..9, first raised flag at frame 7 (t = 0.7 s): delay 0.2 s, the 3rd frame of the interval
    assert fog["label"] == "fog" and fog["n_frames"] == 5 and fog["detected"]
    assert fog["delay_s"] == pytest.approx(0.2) and fog["frames_to_detect"] == 3
    assert fog["start_s"] == pytest.approx(0.5) and fog["end_s"] == pytest.approx(1.0)
    assert fog["flagged_fraction"] == pytest.approx(3 / 5)
    # mud: frames 15..17, first raised at 17: delay 0.2 s
    assert mud["n_frames"] == 3 and mud["delay_s"] == pytest.approx(0.2) and mud["frames_to_detect"] == 3
    s = out["summary"]
    assert s["n_intervals"] == 2 and s["n_detected"] == 2 and s["detection_rate"] == 1.0
    assert s["delay_s_mean"] == pytest.approx(0.2) and s["delay_s_max"] == pytest.approx(0.2)


def test_detection_delay_missed_already_raised_and_not_judged() -> None:
    intervals = [Interval(t(0.0), t(0.15)),  # frames 0, 1: the start-up raise, before the flag was first lowered
                 Interval(t(0.3), t(0.5)),  # frames 3, 4: flag lowered -> missed
                 Interval(t(0.75), t(0.95)),  # frames 8, 9: still raised from frame 7 -> detected at once
                 Interval(t(2.5), t(3.0))]  # no frame at all -> not judged, n_frames 0
    out = detection_delays(STAMPS, FLAGS, intervals, origin_ns=T0)
    startup, missed, raised, empty = out["intervals"]
    assert startup["status"] == "not judged" and not startup["detected"] and startup["delay_s"] is None
    assert startup["n_frames"] == 2 and startup["n_armed_frames"] == 0
    assert missed["status"] == "missed" and missed["delay_s"] is None and missed["n_frames"] == 2
    assert raised["status"] == "detected" and raised["delay_s"] == pytest.approx(0.05)
    assert raised["frames_to_detect"] == 1
    assert empty["status"] == "not judged" and empty["n_frames"] == 0 and math.isnan(empty["flagged_fraction"])
    s = out["summary"]
    assert (s["n_intervals"], s["n_judged_intervals"], s["n_not_judged"], s["n_detected"]) == (4, 2, 2, 1)
    assert s["detection_rate"] == pytest.approx(1 / 2) and s["delay_s_median"] == pytest.approx(0.05)
    assert s["armed_at_s"] == pytest.approx(0.2)  # frame 2: the first lowered flag


def test_a_flag_never_lowered_detects_nothing_and_its_rates_say_so() -> None:
    """Fail closed at start-up is no detection: a monitor stuck at 'raised' judged no interval."""
    stuck = [True] * len(STAMPS)
    out = detection_delays(STAMPS, stuck, INTERVALS, origin_ns=T0)
    assert [r["status"] for r in out["intervals"]] == ["not judged", "not judged"]
    s = out["summary"]
    assert s["armed_at_s"] is None and s["n_detected"] == 0 and math.isnan(s["detection_rate"])
    fa = false_alarms(STAMPS, stuck, INTERVALS, span_ns=driving_span(STAMPS))
    assert fa["false_alarms"] == 0 and fa["ind_frames_flagged"] == 1.0  # the figure that tells
    # a flag that does not start raised is armed from the first frame
    assert detection_delays(STAMPS, stuck, INTERVALS, initial_flag=False)["summary"]["n_detected"] == 2


def test_no_judged_frame_gives_no_false_alarm_rate() -> None:
    fa = false_alarms([], [], INTERVALS, span_ns=driving_span(STAMPS))
    assert fa["false_alarms"] == 0 and math.isnan(fa["false_alarms_per_hour"])


def test_false_alarms_per_hour_oracle() -> None:
    span = driving_span(STAMPS)
    assert span == (t(0.0), t(2.0))  # last frame 1.9 s + one 100 ms period
    out = false_alarms(STAMPS, FLAGS, INTERVALS, span_ns=span)
    # rising edges at frames 7 (0.7 s, inside fog), 12 (1.2 s, InD), 17 (1.7 s, inside mud): one false alarm
    assert out["false_alarms"] == 1 and out["alarm_stamps_ns"] == [t(1.2)]
    # InD driving: 2.0 s - 0.5 s - 0.3 s = 1.2 s -> 1 / (1.2 / 3600) = 3000 per hour
    assert out["ind_hours"] == pytest.approx(1.2 / 3600)
    assert out["false_alarms_per_hour"] == pytest.approx(3000.0)
    # InD frames: 0-4, 10-14, 18-19 = 12 frames; raised at 0, 1, 12, 18 -> 4/12
    assert out["ind_frames_flagged"] == pytest.approx(4 / 12)


def test_false_alarms_without_ind_time_and_span_clipping() -> None:
    everything = [Interval(t(-1.0), t(5.0))]
    out = false_alarms(STAMPS, FLAGS, everything, span_ns=driving_span(STAMPS))
    assert out["false_alarms"] == 0 and out["ind_hours"] == 0 and math.isnan(out["false_alarms_per_hour"])
    # no intervals: all three edges are false alarms over 2.0 s
    out = false_alarms(STAMPS, FLAGS, [], span_ns=driving_span(STAMPS))
    assert out["false_alarms"] == 3 and out["false_alarms_per_hour"] == pytest.approx(3 / (2.0 / 3600))


def test_driving_span_edge_cases() -> None:
    assert driving_span([]) == (0, 0)
    assert driving_span([5]) == (5, 6)
    assert driving_span([30, 10, 20]) == (10, 40)


def test_judged_fraction() -> None:
    assert judged_fraction(40, 30) == 0.75
    assert judged_fraction(7, 7) == 1.0
    assert math.isnan(judged_fraction(0, 0))
    with pytest.raises(ValueError, match="n_judged <= n_frames"):
        judged_fraction(3, 4)


def test_latency_summary_percentiles() -> None:
    out = latency_summary([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert out["n"] == 4
    assert out["p50_ms"] == pytest.approx(2.5)
    assert out["p99_ms"] == pytest.approx(1.0 + 0.99 * 3 * 1.0)  # linear interpolation over 4 points
    assert out["mean_ms"] == pytest.approx(2.5) and out["max_ms"] == 4.0
    empty = latency_summary([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["p50_ms"])


def test_detection_quality_uses_valid_frames_only() -> None:
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, float("nan")]
    is_ood = [0, 0, 0, 1, 1, 1]
    valid = [True, True, True, True, True, False]
    out = detection_quality(scores, np.array(is_ood, bool), valid, threshold=0.5)
    assert out["available"] and out["auroc"] == pytest.approx(1.0)
    assert out["n_ind"] == 3 and out["n_ood"] == 2
    assert out["fpr_at_95_tpr_ood_positive"] == 0.0 and out["fpr_at_95_tpr_ind_positive"] == 0.0
    one_class = detection_quality([0.1, 0.2], [False, False], [True, True], threshold=0.5)
    assert not one_class["available"] and "both classes" in one_class["reason"]


def test_score_agreement() -> None:
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: float("nan")}
    b = {0: 1.0 + 5e-6, 1: 2.0, 3: 4.0, 4: 1.0}
    ok = score_agreement(a, b, tolerance=1e-5)
    assert ok["ok"] and ok["n_common"] == 2 and ok["max_abs_diff"] == pytest.approx(5e-6)
    bad = score_agreement(a, {0: 1.1, 1: 2.0}, tolerance=1e-5)
    assert not bad["ok"] and bad["n_exceeding"] == 1 and bad["worst_frame"] == 0
    none = score_agreement(a, {9: 1.0})
    assert not none["ok"] and none["n_common"] == 0


def test_in_intervals_half_open() -> None:
    iv = [Interval(10, 20)]
    assert in_intervals([9, 10, 19, 20], iv).tolist() == [False, True, True, False]


def test_summarize_with_and_without_ground_truth() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20) + 3 * in_intervals(STAMPS, INTERVALS)
    common = dict(stamps_ns=STAMPS, scores=scores, valid=[True] * 20, flags=FLAGS, latencies_ms=[10.0] * 20,
                  n_frames=25, frame_stamps_ns=STAMPS, threshold=1.5, origin_ns=T0)
    out = summarize(intervals=INTERVALS, **common)
    assert out["n_judged"] == 20 and out["judged_fraction"] == pytest.approx(0.8)
    assert out["detection_quality"]["available"]
    assert out["false_alarms"]["false_alarms"] == 1
    assert out["detection_delay"]["summary"]["n_detected"] == 2
    assert out["latency"]["p50_ms"] == 10.0
    bare = summarize(intervals=None, **common)
    assert "detection_quality" not in bare and bare["flag_rising_edges"] == 3
