"""Message builders of the monitor node: the per-frame verdict and the health status.

Key names are part of the node's interface (README, tests and downstream consumers read them).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
VERDICT_KEYS = ("is_ood", "raw_is_ood", "valid", "score", "threshold", "latency_ms", "inference_ms", "mc_samples",
                "reason", "frame_stamp", "frame_id")


def fmt(value: Any) -> str:
    """Format a value for a KeyValue: booleans lower-case, floats round-trip exact, nan as 'nan'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def key_values(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=fmt(v)) for k, v in values.items()]


def stamp_str(stamp: Any) -> str:
    """``builtin_interfaces/Time`` -> 'sec.nanosec' with 9 decimals (exact)."""
    return f"{int(stamp.sec)}.{int(stamp.nanosec):09d}"


def verdict_array(header: Any, *, name: str, hardware_id: str, flag: bool, raw_is_ood: bool, valid: bool,
                  score: float, threshold: float, latency_ms: float, inference_ms: float, mc_samples: int,
                  reason: str) -> DiagnosticArray:
    """The per-frame verdict: ERROR when no judgement was possible, WARN when flagged OoD, else OK.

    ``is_ood`` is the debounced flag (as on ``~/ood``), ``raw_is_ood`` this frame's
    ``score > threshold``.
    """
    if not valid:
        level, message = ERROR, f"no verdict (flag raised): {reason}"
    elif flag:
        level, message = WARN, "out of distribution" if raw_is_ood else "flag held: waiting for in-distribution frames"
    else:
        level, message = OK, "in distribution"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id)
    status.values = key_values({
        "is_ood": flag, "raw_is_ood": raw_is_ood, "valid": valid, "score": float(score),
        "threshold": float(threshold), "latency_ms": round(float(latency_ms), 3),
        "inference_ms": round(float(inference_ms), 3), "mc_samples": int(mc_samples), "reason": reason,
        "frame_stamp": stamp_str(header.stamp), "frame_id": header.frame_id,
    })
    return DiagnosticArray(header=header, status=[status])


def health_array(snap: Any, *, name: str, state: str, stale: bool, scorer: Any, mc_samples: int,
                 input_topic: str, flag: bool, stalled: bool = False, invalid_streak: int = 0,
                 extra: Mapping[str, Any] | None = None) -> DiagnosticArray:
    """Node health from a :class:`~lsea_monitor.node_stats.HealthSnapshot` (header stamp left to the caller).

    Level: ERROR while the input is stale or inference has stalled (any camera's), WARN when not
    active (not monitoring), ERROR when the newest frame of some camera could not be judged
    (``invalid_streak`` frames in a row: rejected images, failed inference), else OK. ``extra``:
    more key-values (the cameras of a multi-camera node).
    """
    if stale:
        level, message = ERROR, "stale input: no images within watchdog_timeout_s"
    elif stalled:
        level, message = ERROR, "inference stalled: images arrive but no verdict within inference_timeout_s"
    elif state != "active":
        level, message = WARN, f"not monitoring (lifecycle state {state})"
    elif invalid_streak > 0:
        level, message = ERROR, f"not judging: the last {invalid_streak} frame(s) got no verdict ({snap.last_error})"
    else:
        level, message = OK, "monitoring"
    s = scorer
    values = {
        "lifecycle_state": state, "input_topic": input_topic,
        "input_rate_hz": round(snap.input_rate_hz, 3), "processed_rate_hz": round(snap.processed_rate_hz, 3),
        "received": snap.received, "processed": snap.processed, "dropped": snap.dropped, "rejected": snap.rejected,
        "errors": snap.errors, "stale_verdicts": snap.stale, "unjudged_in_a_row": invalid_streak,
        "latency_p50_ms": round(snap.latency_p50_ms, 3), "latency_p99_ms": round(snap.latency_p99_ms, 3),
        "inference_p50_ms": round(snap.inference_p50_ms, 3), "inference_p99_ms": round(snap.inference_p99_ms, 3),
        "device": str(s.device) if s else "", "model_id": s.model_id if s else "",
        "artefact_id": s.artefact_id if s else "", "threshold": float(s.threshold) if s else float("nan"),
        "mc_samples": s.mc_samples if s else mc_samples, "ood_flag": flag, "last_error": snap.last_error,
        **(extra or {}),
    }
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=values["device"])
    status.values = key_values(values)
    return DiagnosticArray(status=[status])


def values_of(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValues of a status as a dict (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
