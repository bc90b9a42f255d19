"""Plain records of the replay evaluation. Times are integer nanoseconds of bag time unless named otherwise.

"Bag time" is the rosbag2 log (receive) timestamp of a message; ``header_stamp_ns`` is the time in
the message's own header, which the node copies into its verdict and which is how live verdicts are
matched to frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


class RawMessage(NamedTuple):
    """One message as stored: what the bag reader yields, nothing deserialised."""

    topic: str
    stamp_ns: int  #: log time (bag time)
    rawdata: bytes  #: CDR, as recorded


class TopicInfo(NamedTuple):
    name: str
    msgtype: str  #: e.g. ``sensor_msgs/msg/Image``
    count: int  #: messages according to the bag's index/metadata


class BagInfo(NamedTuple):
    """What a bag says about itself before any message is read."""

    path: str
    storage: str  #: ``sqlite3``, ``mcap`` or ``unknown``
    start_ns: int  #: earliest message (bag time)
    end_ns: int  #: just after the latest message
    message_count: int
    topics: dict[str, TopicInfo]

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class Frame:
    """One camera frame of the bag, decoded metadata only (the pixels travel separately)."""

    index: int  #: position on the image topic, 0-based
    stamp_ns: int  #: bag (log) time
    header_stamp_ns: int  #: the message header's stamp (what the node echoes in its verdict)
    topic: str
    frame_id: str = ""
    width: int = 0
    height: int = 0
    encoding: str = ""  #: raw encoding, or the CompressedImage format


@dataclass(frozen=True)
class Verdict:
    """The monitor's answer for one frame, from either mode.

    ``flag`` is the debounced OoD flag after this frame (what ``~/ood`` publishes); ``raw_is_ood``
    is ``score > threshold`` for this frame alone. ``latency_ms`` is, offline, the wall time to
    decode and score the frame; live, the end-to-end time from publishing the image to receiving
    the verdict. ``node_latency_ms`` is the latency the node itself reports (live only).
    """

    frame_index: int
    stamp_ns: int
    header_stamp_ns: int
    score: float
    raw_is_ood: bool
    flag: bool
    valid: bool
    reason: str = ""
    latency_ms: float = math.nan
    node_latency_ms: float = math.nan
    source: str = "offline"


@dataclass(frozen=True)
class Interval:
    """An OoD stretch ``[start_ns, end_ns)`` in bag time, with an optional label (e.g. ``fog``)."""

    start_ns: int
    end_ns: int
    label: str = ""

    def contains(self, stamp_ns: int) -> bool:
        return self.start_ns <= stamp_ns < self.end_ns

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class GroundTruth:
    """OoD intervals of a bag and where they came from.

    ``source`` is ``none``, ``topic:<name>``, ``yaml:<path>`` or ``csv:<path>``; with ``none`` there
    are no intervals and no label for any frame (scores and timing only).
    """

    intervals: tuple[Interval, ...] = ()
    source: str = "none"

    @property
    def available(self) -> bool:
        return self.source != "none"
