"""Health bookkeeping of the monitor node: rates, counts, latency percentiles, the one-slot buffer.

Pure Python (no rclpy, no numpy), thread-safe, unit-testable. Times are seconds from any monotonic
clock the caller chooses (``time.monotonic()`` in the node).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds.

    Until a full window has passed since ``start_s`` the rate is computed over the elapsed time,
    so a fresh meter does not under-report.
    """

    def __init__(self, *, window_s: float = 5.0, start_s: float = 0.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}.")
        self.window_s = float(window_s)
        self.start_s = float(start_s)
        self._times: deque[float] = deque()

    def mark(self, t_s: float) -> None:
        self._times.append(float(t_s))
        self._trim(t_s)

    def rate_hz(self, now_s: float) -> float:
        self._trim(now_s)
        span_s = min(self.window_s, now_s - self.start_s)
        return len(self._times) / span_s if span_s > 0 else 0.0

    def _trim(self, now_s: float) -> None:
        while self._times and self._times[0] <= now_s - self.window_s:
            self._times.popleft()


class Percentiles:
    """Percentiles over the last ``size`` values (linear interpolation, as ``numpy.percentile``)."""

    def __init__(self, *, size: int = 1000) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the kept values; nan when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be within [0, 100], got {q}.")
        values = sorted(self._values)
        if not values:
            return math.nan
        pos = (len(values) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclass(frozen=True)
class HealthSnapshot:
    """What ``/diagnostics`` reports about the node (rates in Hz, latencies in ms)."""

    input_rate_hz: float
    processed_rate_hz: float
    received: int
    processed: int
    dropped: int
    rejected: int
    errors: int
    stale: int
    latency_p50_ms: float
    latency_p99_ms: float
    inference_p50_ms: float
    inference_p99_ms: float
    last_error: str


class NodeStats:
    """Thread-safe counters of the node: the subscription, the worker and the timers all report here.

    ``received`` counts every message; each one ends as exactly one of ``rejected`` (did not
    convert), ``dropped`` (overwritten in the one-slot buffer, or discarded at deactivation) or a
    processed frame (``processed``, with ``errors`` of those whose inference raised).
    ``stale`` counts watchdog verdicts.
    """

    def __init__(self, *, now_s: float = 0.0, window_s: float = 5.0, latency_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._window_s = window_s
        self._latency_window = latency_window
        self.reset(now_s)

    def reset(self, now_s: float) -> None:
        with self._lock:
            self._input = RateMeter(window_s=self._window_s, start_s=now_s)
            self._done = RateMeter(window_s=self._window_s, start_s=now_s)
            self._latency_ms = Percentiles(size=self._latency_window)
            self._inference_ms = Percentiles(size=self._latency_window)
            self.received = self.processed = self.dropped = self.rejected = self.errors = self.stale = 0
            self.last_error = ""

    def on_input(self, now_s: float) -> None:
        with self._lock:
            self.received += 1
            self._input.mark(now_s)

    def on_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            self.last_error = reason

    def on_dropped(self, count: int = 1) -> None:
        with self._lock:
            self.dropped += count

    def on_processed(self, now_s: float, *, latency_ms: float, inference_ms: float, error: str = "") -> None:
        with self._lock:
            self.processed += 1
            self._done.mark(now_s)
            self._latency_ms.add(latency_ms)
            self._inference_ms.add(inference_ms)
            if error:
                self.errors += 1
                self.last_error = error

    def on_stale(self, reason: str) -> None:
        with self._lock:
            self.stale += 1
            self.last_error = reason

    def note_error(self, reason: str) -> None:
        """Record an error that is not tied to a frame (configure or activate failed)."""
        with self._lock:
            self.last_error = reason

    def snapshot(self, now_s: float) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                input_rate_hz=self._input.rate_hz(now_s),
                processed_rate_hz=self._done.rate_hz(now_s),
                received=self.received,
                processed=self.processed,
                dropped=self.dropped,
                rejected=self.rejected,
                errors=self.errors,
                stale=self.stale,
                latency_p50_ms=self._latency_ms.percentile(50),
                latency_p99_ms=self._latency_ms.percentile(99),
                inference_p50_ms=self._inference_ms.percentile(50),
                inference_p99_ms=self._inference_ms.percentile(99),
                last_error=self.last_error,
            )


class LatestSlot(Generic[T]):
    """A one-slot buffer: ``put`` overwrites (newest wins), ``take`` blocks until an item or timeout.

    Memory stays bounded by one item whatever the input rate; the caller counts overwrites as drops.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._full = False

    def put(self, item: T) -> bool:
        """Store ``item``; return True when it replaced an item nobody took (a drop)."""
        with self._cond:
            replaced = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout_s: Optional[float] = None) -> Optional[T]:
        """Remove and return the item, waiting up to ``timeout_s``; None when there is none."""
        with self._cond:
            if not self._full:
                self._cond.wait(timeout_s)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> int:
        """Discard the item; return how many were discarded (0 or 1)."""
        with self._cond:
            had = int(self._full)
            self._item, self._full = None, False
            return had
