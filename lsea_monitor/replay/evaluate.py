"""Pure functions: what a replay's verdicts say about the monitor. No I/O, no clock, no model.

Inputs are per judged frame, in time order: ``stamps_ns`` (bag time), ``scores`` (higher = less
safe; NaN where invalid), ``valid``, ``flags`` (the debounced flag after the frame) and the ground
truth ``intervals`` (``[start_ns, end_ns)``). Definitions (the report quotes them):

* **armed**: from the first judged frame after which the flag is lowered. The flag starts raised
  (fail closed) and that start-up raise says nothing about the images, so frames before it neither
  detect nor alarm.
* **detection delay** of an OoD interval: bag time from its onset to the first armed judged frame
  inside it whose flag is raised (a flag still raised from an earlier OoD frame counts at once). No
  such frame before the interval ends: the interval is *missed*. No armed judged frame inside it
  (every frame dropped, or the monitor not yet armed): *not judged*, left out of the detection
  rate and counted apart.
* **false alarm**: a rising edge of the flag (lowered after one frame, raised after the next) at a
  frame outside every OoD interval. The flag starts raised (fail closed), so the first lowering is
  not an alarm. **Per hour of InD driving**: divided by the driving span minus its OoD part; the
  span runs from the first frame to one median frame period after the last one.
* **fraction judged**: frames with a verdict / frames in the bag (valid or not: an ERROR verdict is a
  judgement that no judgement was possible; ``valid_fraction`` counts those apart).
* **latency p50/p99**: ``numpy.percentile`` (linear interpolation) of the finite values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lsea_monitor.metrics import ood_metrics
from lsea_monitor.replay.records import Interval

NAN = float("nan")


def _arr(x: Sequence[Any] | np.ndarray, dtype: Any) -> np.ndarray:
    return np.asarray(x, dtype=dtype).reshape(-1)


def in_intervals(stamps_ns: Sequence[int] | np.ndarray, intervals: Sequence[Interval]) -> np.ndarray:
    """Bool per stamp: inside any ``[start_ns, end_ns)``."""
    stamps = _arr(stamps_ns, np.int64)
    out = np.zeros(stamps.shape, dtype=bool)
    for iv in intervals:
        out |= (stamps >= iv.start_ns) & (stamps < iv.end_ns)
    return out


def driving_span(stamps_ns: Sequence[int] | np.ndarray) -> tuple[int, int]:
    """``(first stamp, last stamp + median frame period)``; one frame spans 1 ns; none spans (0, 0)."""
    stamps = np.sort(_arr(stamps_ns, np.int64))
    if stamps.size == 0:
        return 0, 0
    period = int(np.median(np.diff(stamps))) if stamps.size > 1 else 1
    return int(stamps[0]), int(stamps[-1]) + max(period, 1)


def overlap_ns(start_ns: int, end_ns: int, intervals: Sequence[Interval]) -> int:
    """Total length of ``[start_ns, end_ns)`` covered by (disjoint) ``intervals``."""
    return int(sum(max(0, min(end_ns, iv.end_ns) - max(start_ns, iv.start_ns)) for iv in intervals))


def detection_quality(scores: Sequence[float] | np.ndarray, is_ood: Sequence[bool] | np.ndarray,
                      valid: Sequence[bool] | np.ndarray, threshold: float) -> dict[str, Any]:
    """AUROC, AUPR (in/out), FPR at 95 % TPR (both conventions) etc. over the valid frames.

    Uses :func:`lsea_monitor.metrics.ood_metrics` at the monitor's ``threshold``. Returns
    ``{"available": False, "reason": ...}`` when the valid frames do not hold both classes.
    """
    s, y, ok = _arr(scores, np.float64), _arr(is_ood, bool), _arr(valid, bool)
    ok = ok & np.isfinite(s)
    n_ood, n_ind = int((y & ok).sum()), int((~y & ok).sum())
    if n_ood == 0 or n_ind == 0:
        return {"available": False, "n_ind": n_ind, "n_ood": n_ood,
                "reason": f"needs valid frames of both classes, got {n_ind} InD and {n_ood} OoD"}
    out: dict[str, Any] = {"available": True}
    out.update(ood_metrics(s[ok], y[ok], threshold=float(threshold)))
    return out


def flag_confusion(flags: Sequence[bool] | np.ndarray, is_ood: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """Frame-level quality of the debounced flag: fraction of OoD frames flagged, of InD frames flagged."""
    f, y = _arr(flags, bool), _arr(is_ood, bool)
    n_ood, n_ind = int(y.sum()), int((~y).sum())
    return {"ood_frames_flagged": float((f & y).sum() / n_ood) if n_ood else NAN,
            "ind_frames_flagged": float((f & ~y).sum() / n_ind) if n_ind else NAN,
            "n_ood": n_ood, "n_ind": n_ind}


def armed_index(flags: Sequence[bool] | np.ndarray, *, initial_flag: bool = True) -> int | None:
    """Index of the first frame from which the flag says something: the first lowered flag when it
    starts raised (``initial_flag``), else 0; None when it is never lowered (no frame is armed)."""
    f = _arr(flags, bool)
    if not initial_flag:
        return 0 if f.size else None
    lowered = np.flatnonzero(~f)
    return int(lowered[0]) if lowered.size else None


def detection_delays(stamps_ns: Sequence[int] | np.ndarray, flags: Sequence[bool] | np.ndarray,
                     intervals: Sequence[Interval], *, origin_ns: int = 0, initial_flag: bool = True
                     ) -> dict[str, Any]:
    """Per OoD interval: detected, missed or not judged, delay from onset to the first raised flag of
    an armed frame, and a summary.

    Parameters
    ----------
    stamps_ns, flags : shape (n,)
        Judged frames in time order: bag time and the flag after each.
    intervals : the ground-truth OoD intervals.
    origin_ns : int
        Bag start; ``start_s``/``end_s`` in the output are relative to it.

    Returns
    -------
    dict
        ``intervals``: list of ``{label, start_s, end_s, duration_s, n_frames, n_armed_frames, status,
        detected, delay_s, frames_to_detect, flagged_fraction}`` (``status`` detected / missed / not
        judged; ``delay_s`` None unless detected); ``summary``: ``n_intervals, n_judged_intervals,
        n_not_judged, n_detected, detection_rate`` (over the judged intervals; NaN when none),
        ``delay_s_mean, delay_s_median, delay_s_max, armed_at_s`` (None: the flag was never lowered).
    """
    stamps, f = _arr(stamps_ns, np.int64), _arr(flags, bool)
    armed = armed_index(f, initial_flag=initial_flag)
    rows, delays = [], []
    for iv in intervals:
        inside = np.flatnonzero((stamps >= iv.start_ns) & (stamps < iv.end_ns))
        armed_inside = inside[inside >= armed] if armed is not None else inside[:0]
        raised = armed_inside[f[armed_inside]]
        detected = bool(raised.size)
        status = "detected" if detected else ("missed" if armed_inside.size else "not judged")
        delay_s = (int(stamps[raised[0]]) - iv.start_ns) / 1e9 if detected else None
        if delay_s is not None:
            delays.append(delay_s)
        rows.append({"label": iv.label, "start_s": (iv.start_ns - origin_ns) / 1e9,
                     "end_s": (iv.end_ns - origin_ns) / 1e9, "duration_s": iv.duration_s,
                     "n_frames": int(inside.size), "n_armed_frames": int(armed_inside.size), "status": status,
                     "detected": detected, "delay_s": delay_s,
                     "frames_to_detect": int(np.searchsorted(armed_inside, raised[0]) + 1) if detected else None,
                     "flagged_fraction": float(f[inside].mean()) if inside.size else NAN})
    n = len(rows)
    n_judged = sum(r["status"] != "not judged" for r in rows)
    summary = {"n_intervals": n, "n_judged_intervals": n_judged, "n_not_judged": n - n_judged,
               "n_detected": len(delays), "detection_rate": len(delays) / n_judged if n_judged else NAN,
               "armed_at_s": (int(stamps[armed]) - origin_ns) / 1e9 if armed is not None else None,
               "delay_s_mean": float(np.mean(delays)) if delays else NAN,
               "delay_s_median": float(np.median(delays)) if delays else NAN,
               "delay_s_max": float(np.max(delays)) if delays else NAN}
    return {"intervals": rows, "summary": summary}


def rising_edges(flags: Sequence[bool] | np.ndarray, *, initial_flag: bool = True) -> np.ndarray:
    """Indices ``i`` where the flag goes from lowered (before frame ``i``) to raised (after it)."""
    f = _arr(flags, bool)
    prev = np.r_[initial_flag, f[:-1]] if f.size else f
    return np.flatnonzero(f & ~prev)


def false_alarms(stamps_ns: Sequence[int] | np.ndarray, flags: Sequence[bool] | np.ndarray,
                 intervals: Sequence[Interval], *, span_ns: tuple[int, int], initial_flag: bool = True
                 ) -> dict[str, Any]:
    """Flag rising edges outside every OoD interval, and their rate per hour of InD driving.

    ``span_ns`` is the driving span ``(start, end)`` (see :func:`driving_span`); its part outside the
    OoD intervals is the InD driving time. Returns ``false_alarms``, ``ind_hours``,
    ``false_alarms_per_hour`` (NaN when there is no InD time), ``alarm_stamps_ns`` and
    ``ind_frames_flagged`` (fraction of InD frames with the flag raised). Both the InD time and the
    InD frames include the start-up before the flag was first lowered: no alarm can start there
    (the flag is already raised), and a consumer does see the flag raised on those frames.
    """
    stamps, f = _arr(stamps_ns, np.int64), _arr(flags, bool)
    ood = in_intervals(stamps, intervals)
    edges = rising_edges(f, initial_flag=initial_flag)
    alarms = [int(stamps[i]) for i in edges if not ood[i]]
    start, end = span_ns
    ind_ns = max(0, end - start) - overlap_ns(start, end, intervals)
    hours = ind_ns / 3.6e12
    n_ind = int((~ood).sum())
    return {"false_alarms": len(alarms), "ind_hours": hours,
            # no judged frame: no alarm could have been seen, so no rate (not 0 per hour)
            "false_alarms_per_hour": len(alarms) / hours if hours > 0 and stamps.size else NAN,
            "alarm_stamps_ns": alarms,
            "ind_frames_flagged": float((f & ~ood).sum() / n_ind) if n_ind else NAN}


def judged_fraction(n_frames: int, n_judged: int) -> float:
    """Judged frames / frames in the bag (NaN for an empty bag)."""
    if n_judged < 0 or n_frames < 0 or n_judged > n_frames:
        raise ValueError(f"judged_fraction needs 0 <= n_judged <= n_frames, got {n_judged} and {n_frames}.")
    return n_judged / n_frames if n_frames else NAN


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """``n, p50_ms, p99_ms, mean_ms, max_ms`` of the finite latencies (NaN when none)."""
    x = _arr(latencies_ms, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"n": 0, "p50_ms": NAN, "p99_ms": NAN, "mean_ms": NAN, "max_ms": NAN}
    return {"n": int(x.size), "p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99)),
            "mean_ms": float(x.mean()), "max_ms": float(x.max())}


def score_agreement(a: Mapping[int, float], b: Mapping[int, float], *, tolerance: float = 1e-5) -> dict[str, Any]:
    """Compare two modes' scores on the frames both judged validly (keys: frame index).

    ``ok`` is True when at least one frame is common and every ``|a - b| <= tolerance``.
    """
    common = sorted(k for k in a.keys() & b.keys() if math.isfinite(a[k]) and math.isfinite(b[k]))
    diffs = np.array([abs(a[k] - b[k]) for k in common], dtype=np.float64)
    worst = float(diffs.max()) if diffs.size else NAN
    n_bad = int((diffs > tolerance).sum())
    return {"n_common": len(common), "tolerance": tolerance, "max_abs_diff": worst,
            "mean_abs_diff": float(diffs.mean()) if diffs.size else NAN, "n_exceeding": n_bad,
            "ok": bool(common) and n_bad == 0,
            "worst_frame": int(common[int(diffs.argmax())]) if diffs.size else None}


def summarize(*, stamps_ns: Sequence[int], scores: Sequence[float], valid: Sequence[bool], flags: Sequence[bool],
              latencies_ms: Sequence[float], n_frames: int, frame_stamps_ns: Sequence[int],
              intervals: Sequence[Interval] | None, threshold: float, origin_ns: int,
              initial_flag: bool = True) -> dict[str, Any]:
    """Every metric of one mode's verdicts (``intervals`` None: no ground truth, scores and timing only).

    ``frame_stamps_ns`` are all frames of the bag (for the driving span); the others are per judged frame.
    """
    st = _arr(stamps_ns, np.int64)
    ok = _arr(valid, bool)
    out: dict[str, Any] = {
        "n_frames": int(n_frames), "n_judged": int(st.size), "n_valid": int(ok.sum()),
        "judged_fraction": judged_fraction(n_frames, int(st.size)),
        "valid_fraction": int(ok.sum()) / n_frames if n_frames else NAN,
        "latency": latency_summary(latencies_ms),
    }
    sc = _arr(scores, np.float64)
    finite = sc[np.isfinite(sc)]
    out["score"] = {"min": float(finite.min()) if finite.size else NAN,
                    "median": float(np.median(finite)) if finite.size else NAN,
                    "max": float(finite.max()) if finite.size else NAN}
    span = driving_span(frame_stamps_ns)
    if intervals is None:
        edges = rising_edges(flags, initial_flag=initial_flag)
        out["flag_rising_edges"] = int(edges.size)
        return out
    y = in_intervals(st, intervals)
    out["detection_quality"] = detection_quality(sc, y, ok, threshold)
    out["flag_frames"] = flag_confusion(flags, y)
    out["detection_delay"] = detection_delays(st, flags, intervals, origin_ns=origin_ns, initial_flag=initial_flag)
    out["false_alarms"] = false_alarms(st, flags, intervals, span_ns=span, initial_flag=initial_flag)
    return out
