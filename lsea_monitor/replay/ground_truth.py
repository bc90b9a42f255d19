"""Ground truth: which stretches of a drive are out of distribution, as intervals of bag time.

Three sources, or none:

``std_msgs/Bool`` topic in the bag (``--gt-topic``)
    ``True`` = OoD from that message's bag time on, until the next ``False``. A ``True`` still set at
    the last message lasts to the end of the bag. Messages may be sent at every frame or only on
    changes.

YAML sidecar (``--gt-file x.yaml``)::

    # OoD intervals of drive_0042 (lsea-replay ground truth)
    intervals:
      - {start_s: 12.0, end_s: 18.5, label: fog}     # seconds relative to the bag start
      - {start_ns: 30000000000, end_ns: 34000000000}  # nanoseconds relative to the bag start
      - {start_abs_ns: 1700000040000000000, end_abs_ns: 1700000045000000000, label: mud}  # absolute bag time

CSV sidecar (``--gt-file x.csv``): a header naming the pair of time columns, one interval a row,
``label`` optional; ``#`` lines are comments::

    start_s,end_s,label
    12.0,18.5,fog
    40,45,mud

Each interval uses one pair: ``start_s``/``end_s`` (seconds relative to the bag start),
``start_ns``/``end_ns`` (ns relative to the bag start) or ``start_abs_ns``/``end_abs_ns`` (absolute
bag time in ns, i.e. the log timestamps ``ros2 bag info`` shows). "Bag start" is the log time of the
bag's earliest message (any topic). Intervals are half-open ``[start, end)``: a frame whose bag time
is ``t`` is OoD iff ``start <= t < end``. Overlapping or touching intervals are merged. Unknown keys
or columns (a misspelt ``intervals`` or ``label``) are errors, never ignored: a drive without OoD
says so with ``intervals: []``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsea_monitor.replay.errors import GroundTruthError
from lsea_monitor.replay.records import GroundTruth, Interval

#: (start key, end key, scale to ns, relative to the bag start)
TIME_KEYS: tuple[tuple[str, str, float, bool], ...] = (
    ("start_s", "end_s", 1e9, True),
    ("start_ns", "end_ns", 1.0, True),
    ("start_abs_ns", "end_abs_ns", 1.0, False),
)


def merge_intervals(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort and merge overlapping or touching intervals (labels joined with '+')."""
    out: list[Interval] = []
    for iv in sorted(intervals, key=lambda i: (i.start_ns, i.end_ns)):
        if out and iv.start_ns <= out[-1].end_ns:
            last = out[-1]
            labels = [x for x in dict.fromkeys([*last.label.split("+"), *iv.label.split("+")]) if x]
            out[-1] = Interval(last.start_ns, max(last.end_ns, iv.end_ns), "+".join(labels))
        else:
            out.append(iv)
    return tuple(out)


def labels_for(stamps_ns: Sequence[int] | np.ndarray, intervals: Sequence[Interval]) -> np.ndarray:
    """Per-frame OoD labels (bool array): ``stamp`` in any ``[start, end)``."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    out = np.zeros(stamps.shape, dtype=bool)
    for iv in intervals:
        out |= (stamps >= iv.start_ns) & (stamps < iv.end_ns)
    return out


# --- from the bag ------------------------------------------------------------------------------


def from_bool_messages(messages: Iterable[tuple[int, bool]], *, bag_end_ns: int, source: str) -> GroundTruth:
    """Intervals from ``(stamp_ns, value)`` of a Bool topic, in time order."""
    intervals: list[Interval] = []
    onset: int | None = None
    last = None
    for stamp, value in messages:
        if last is not None and stamp < last:
            raise GroundTruthError(f"Ground-truth topic {source}: messages are not in time order ({stamp} after {last}).")
        last = stamp
        if value and onset is None:
            onset = stamp
        elif not value and onset is not None:
            intervals.append(Interval(onset, stamp))
            onset = None
    if onset is not None:
        intervals.append(Interval(onset, max(bag_end_ns, onset + 1)))
    return GroundTruth(merge_intervals(intervals), source)


def from_topic(bag: Any, topic: str) -> GroundTruth:
    """Read a ``std_msgs/Bool`` topic of an open :class:`~.bag_io.BagReader`."""
    from lsea_monitor.replay.decode import BOOL, DeserializationError, deserialize

    bag.require_topic(topic, (BOOL,), what="ground-truth topic")
    info = bag.info()

    def values() -> Iterable[tuple[int, bool]]:
        for m in bag.messages([topic]):
            try:
                yield m.stamp_ns, bool(deserialize(m.rawdata, BOOL).data)
            except DeserializationError as err:
                raise GroundTruthError(f"Ground-truth topic {topic!r} in bag {bag.path}: a message at "
                                       f"{m.stamp_ns} ns is not a valid std_msgs/Bool ({err}).", bag=str(bag.path))

    return from_bool_messages(values(), bag_end_ns=info.end_ns, source=f"topic:{topic}")


# --- sidecar files -----------------------------------------------------------------------------


def _interval_from_row(row: Mapping[str, Any], *, bag_start_ns: int, where: str) -> Interval:
    known = {k for k0, k1, _, _ in TIME_KEYS for k in (k0, k1)} | {"label"}
    unknown = sorted(str(k) for k in row if k not in known)
    if unknown:  # e.g. 'lable', or 'end' for 'end_s': silently dropped, it would change the evaluation
        raise GroundTruthError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}.")
    for k0, k1, scale, relative in TIME_KEYS:
        if k0 in row or k1 in row:
            if row.get(k0) in (None, "") or row.get(k1) in (None, ""):
                raise GroundTruthError(f"{where}: needs both {k0} and {k1}, got {dict(row)}.")
            if isinstance(row[k0], bool) or isinstance(row[k1], bool):
                raise GroundTruthError(f"{where}: {k0}/{k1} must be numbers, got {row[k0]!r}, {row[k1]!r}.")
            try:
                a, b = float(row[k0]), float(row[k1])
            except (TypeError, ValueError) as err:
                raise GroundTruthError(f"{where}: {k0}/{k1} must be numbers, got {row[k0]!r}, {row[k1]!r}.") from err
            if not (math.isfinite(a) and math.isfinite(b)):
                raise GroundTruthError(f"{where}: {k0}/{k1} must be finite, got {a}, {b}.")
            if relative and a < 0:
                raise GroundTruthError(f"{where}: {k0} is relative to the bag start and must be >= 0, got {a}.")
            base = bag_start_ns if relative else 0
            start, end = base + _to_ns(row[k0], scale), base + _to_ns(row[k1], scale)
            if end <= start:
                raise GroundTruthError(f"{where}: the interval ends ({k1}={row[k1]}) before or where it starts "
                                       f"({k0}={row[k0]}); intervals are [start, end) with end > start.")
            label = str(row.get("label") or "")
            return Interval(start, end, label)
    keys = ", ".join(f"{a}/{b}" for a, b, _, _ in TIME_KEYS)
    raise GroundTruthError(f"{where}: no time columns; use one of the pairs {keys}. Got keys {sorted(row)}.")


def _to_ns(value: Any, scale: float) -> int:
    """Exact for integer nanoseconds (absolute stamps exceed float precision); rounded otherwise."""
    if scale == 1.0 and isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(round(float(value) * scale))


def _parse_int_exact(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def from_yaml(path: str | os.PathLike[str], *, bag_start_ns: int) -> GroundTruth:
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as err:
        raise GroundTruthError(f"Cannot read the ground-truth file {p}: {err}.") from err
    except yaml.YAMLError as err:
        raise GroundTruthError(f"Ground-truth file {p} is not valid YAML: {err}") from err
    if isinstance(doc, list):
        rows = doc
    elif isinstance(doc, dict) and isinstance(doc.get("intervals"), list) and set(doc) == {"intervals"}:
        rows = doc["intervals"]
    elif isinstance(doc, dict):  # a misspelt key must not read as "no OoD anywhere"
        raise GroundTruthError(f"Ground-truth file {p}: expected exactly one key, 'intervals', holding a list "
                               f"(an empty list for a drive without OoD); got keys {sorted(map(str, doc))}.")
    else:
        raise GroundTruthError(f"Ground-truth file {p}: expected a mapping with an 'intervals' list "
                               f"(see lsea_monitor.replay.ground_truth), got {type(doc).__name__}.")
    intervals = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise GroundTruthError(f"Ground-truth file {p}: interval {i} is not a mapping: {row!r}.")
        intervals.append(_interval_from_row(row, bag_start_ns=bag_start_ns, where=f"{p} interval {i}"))
    return GroundTruth(merge_intervals(intervals), f"yaml:{p}")


def from_csv(path: str | os.PathLike[str], *, bag_start_ns: int) -> GroundTruth:
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as err:
        raise GroundTruthError(f"Cannot read the ground-truth file {p}: {err}.") from err
    if not lines:
        raise GroundTruthError(f"Ground-truth file {p} is empty: it needs a header such as 'start_s,end_s,label'.")
    reader = csv.DictReader(lines, skipinitialspace=True)
    fields = [f.strip() for f in reader.fieldnames or []]
    if not any(k0 in fields for k0, _, _, _ in TIME_KEYS):
        raise GroundTruthError(f"Ground-truth file {p}: the header {fields} names no time columns; use start_s,end_s "
                               "or start_ns,end_ns or start_abs_ns,end_abs_ns (and optionally label).")
    intervals = []
    for i, row in enumerate(reader, start=2):
        clean = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
        for k in ("start_ns", "end_ns", "start_abs_ns", "end_abs_ns"):
            if clean.get(k) not in (None, ""):
                try:
                    clean[k] = _parse_int_exact(clean[k])
                except ValueError as err:
                    raise GroundTruthError(f"{p} line {i}: {k} must be a number, got {clean[k]!r}.") from err
        intervals.append(_interval_from_row(clean, bag_start_ns=bag_start_ns, where=f"{p} line {i}"))
    return GroundTruth(merge_intervals(intervals), f"csv:{p}")


def from_file(path: str | os.PathLike[str], *, bag_start_ns: int) -> GroundTruth:
    """A YAML (``.yaml``/``.yml``) or CSV (``.csv``) sidecar."""
    p = Path(path)
    if not p.is_file():
        raise GroundTruthError(f"Ground-truth file {p} does not exist.")
    if p.suffix.lower() in (".yaml", ".yml"):
        return from_yaml(p, bag_start_ns=bag_start_ns)
    if p.suffix.lower() == ".csv":
        return from_csv(p, bag_start_ns=bag_start_ns)
    raise GroundTruthError(f"Ground-truth file {p}: unknown format {p.suffix!r}; use .yaml, .yml or .csv.")


def check_within(gt: GroundTruth, *, bag_start_ns: int, bag_end_ns: int, bag: str = "") -> None:
    """Refuse intervals that lie entirely outside the bag (usually a relative/absolute mix-up)."""
    outside = [iv for iv in gt.intervals if iv.end_ns <= bag_start_ns or iv.start_ns >= bag_end_ns]
    if outside:
        iv = outside[0]
        raise GroundTruthError(
            f"Ground truth {gt.source}: {len(outside)} interval(s) lie outside bag {bag or ''} "
            f"([{bag_start_ns}, {bag_end_ns}) ns), e.g. [{iv.start_ns}, {iv.end_ns}). Relative times "
            "(start_s, start_ns) count from the bag start; absolute ones (start_abs_ns) are log timestamps.", bag=bag)


def load(bag: Any, *, topic: str | None = None, file: str | None = None) -> GroundTruth:
    """The ground truth for an open bag from ``topic`` or ``file`` (not both), or none."""
    if topic and file:
        raise GroundTruthError("Give the ground truth as a topic or as a file, not both.")
    info = bag.info()
    if topic:
        gt = from_topic(bag, topic)
    elif file:
        gt = from_file(file, bag_start_ns=info.start_ns)
    else:
        return GroundTruth()
    check_within(gt, bag_start_ns=info.start_ns, bag_end_ns=info.end_ns, bag=str(bag.path))
    return gt
