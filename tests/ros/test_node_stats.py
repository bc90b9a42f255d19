"""lsea_monitor.node_stats: rates, percentiles, counters and the one-slot buffer (pure Python)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from lsea_monitor.node_stats import LatestSlot, NodeStats, Percentiles, RateMeter


def test_rate_meter_counts_events_in_the_window() -> None:
    meter = RateMeter(window_s=2.0, start_s=0.0)
    for i in range(40):  # 10 Hz for 4 s
        meter.mark(i * 0.1)
    assert meter.rate_hz(4.0) == pytest.approx(10.0, abs=0.5)
    assert meter.rate_hz(10.0) == 0.0  # all events have left the window


def test_rate_meter_does_not_under_report_before_a_full_window() -> None:
    meter = RateMeter(window_s=5.0, start_s=100.0)
    for i in range(10):
        meter.mark(100.0 + i * 0.1)
    assert meter.rate_hz(101.0) == pytest.approx(10.0)
    assert RateMeter(window_s=5.0, start_s=3.0).rate_hz(3.0) == 0.0


def test_rate_meter_rejects_a_bad_window() -> None:
    with pytest.raises(ValueError, match="window_s must be positive"):
        RateMeter(window_s=0.0)


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentiles_match_numpy(q: float) -> None:
    values = np.random.default_rng(1).exponential(5.0, size=537)
    p = Percentiles(size=1000)
    for v in values:
        p.add(float(v))
    assert p.percentile(q) == pytest.approx(np.percentile(values, q))


def test_percentiles_keep_the_last_values_and_skip_non_finite() -> None:
    p = Percentiles(size=3)
    assert math.isnan(p.percentile(50))
    for v in (100.0, 1.0, float("nan"), 2.0, 3.0, float("inf")):
        p.add(v)
    assert len(p) == 3 and p.percentile(0) == 1.0 and p.percentile(100) == 3.0
    with pytest.raises(ValueError, match="q must be within"):
        p.percentile(101)


def test_node_stats_snapshot() -> None:
    stats = NodeStats(now_s=0.0, window_s=1.0)
    for i in range(20):
        stats.on_input(i * 0.05)
    stats.on_rejected("rejected image: bad")
    stats.on_dropped(3)
    for i in range(10):
        stats.on_processed(0.5 + i * 0.05, latency_ms=float(i + 1), inference_ms=0.5 * (i + 1))
    stats.on_processed(1.0, latency_ms=float("nan"), inference_ms=float("nan"), error="model error: boom")
    stats.on_stale("stale: no image")
    snap = stats.snapshot(1.0)
    assert (snap.received, snap.rejected, snap.dropped, snap.processed, snap.errors, snap.stale) == (20, 1, 3, 11, 1, 1)
    assert snap.input_rate_hz == pytest.approx(19.0)  # events in (0, 1]
    assert snap.latency_p50_ms == pytest.approx(5.5) and snap.latency_p99_ms == pytest.approx(9.91)
    assert snap.inference_p50_ms == pytest.approx(2.75)
    assert snap.last_error == "stale: no image"
    stats.reset(5.0)
    snap = stats.snapshot(5.0)
    assert snap.received == 0 and snap.last_error == "" and math.isnan(snap.latency_p50_ms)


def test_node_stats_is_thread_safe() -> None:
    stats = NodeStats()

    def hammer() -> None:
        for _ in range(2000):
            stats.on_input(time.monotonic())
            stats.on_dropped()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot(time.monotonic())
    assert snap.received == 8000 and snap.dropped == 8000


def test_latest_slot_newest_wins_and_counts_overwrites() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take(timeout_s=0.0) is None
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: a drop
    assert slot.take(timeout_s=0.0) == 2
    assert slot.take(timeout_s=0.0) is None
    slot.put(3)
    assert slot.clear() == 1 and slot.clear() == 0


def test_latest_slot_wakes_a_waiting_taker() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(slot.take(timeout_s=5.0)))
    taker.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    slot.put("frame")
    taker.join(timeout=5.0)
    assert got == ["frame"] and time.monotonic() - t0 < 1.0


def test_latest_slot_holds_none_as_an_item() -> None:
    slot: LatestSlot[None] = LatestSlot()
    slot.put(None)
    assert slot.put(None) is True
