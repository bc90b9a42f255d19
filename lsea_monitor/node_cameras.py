"""Several cameras in one monitor node: names and topics, the per-camera watchdog, the batching buffer.

Pure Python (no rclpy, no torch), thread-safe where noted, unit-tested on its own.

The node parameter ``image_topics`` lists the cameras. Empty (the default): one camera on the input
topic ``image`` (remap it), verdicts on ``~/verdict`` and ``~/ood``: the single-camera interface.
Otherwise each entry is ``name=topic`` or just ``topic``; a camera's verdicts go to
``~/<name>/verdict`` and ``~/<name>/ood``, its status name is ``<node>/<name>: ood verdict``, and it
has its own hysteresis and its own watchdog. Without ``name=`` the name comes from the topic: its
segments joined with ``_`` after dropping trailing image-ish segments (``image``, ``image_raw``,
``image_rect``, ``image_rect_color``, ``image_color``, ``compressed``), so ``/front/image_raw`` is
``front`` and ``/cam/left/image_raw/compressed`` is ``cam_left``.

The worker takes the newest frame of every camera that has one (:class:`CameraSlots`) and scores
them in one batched forward pass; each frame keeps its own MC seed (its stamp), so batching does
not change a frame's verdict.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Optional, Sequence, TypeVar

T = TypeVar("T")

IMAGE_SUFFIXES = ("image", "image_raw", "image_rect", "image_rect_color", "image_color", "compressed")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TOPIC_RE = re.compile(r"^(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Camera:
    """One input stream: ``name`` ('' for the single default camera) and its image ``topic``."""

    name: str
    topic: str

    @property
    def verdict_topic(self) -> str:
        return f"~/{self.name}/verdict" if self.name else "~/verdict"

    @property
    def ood_topic(self) -> str:
        return f"~/{self.name}/ood" if self.name else "~/ood"

    def status_name(self, node_prefix: str) -> str:
        """Name of the verdict's DiagnosticStatus: '<node>: ood verdict' or '<node>/<name>: ood verdict'."""
        return f"{node_prefix}/{self.name}: ood verdict" if self.name else f"{node_prefix}: ood verdict"


SINGLE_CAMERA = Camera("", "image")


def camera_name(topic: str) -> str:
    """Default camera name of a topic (see the module docstring)."""
    parts = [p for p in topic.split("/") if p and p != "~"]
    while len(parts) > 1 and parts[-1] in IMAGE_SUFFIXES:
        parts.pop()
    name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))
    return name if name[:1].isalpha() else f"cam_{name}"


def parse_image_topics(entries: Iterable[str] | None) -> tuple[Camera, ...]:
    """The cameras of an ``image_topics`` value; raises ``ValueError`` with every problem found."""
    entries = [e.strip() for e in (entries or ())]
    if not entries:
        return (SINGLE_CAMERA,)
    cams, errors = [], []
    for entry in entries:
        name, sep, topic = entry.partition("=")
        name, topic = (name.strip(), topic.strip()) if sep else ("", entry)
        if not _TOPIC_RE.match(topic):
            errors.append(f"{entry!r}: {topic!r} is not a valid topic name")
            continue
        name = name or camera_name(topic)
        if not _NAME_RE.match(name):
            errors.append(f"{entry!r}: camera name {name!r} must match [A-Za-z][A-Za-z0-9_]*")
            continue
        cams.append(Camera(name, topic))
    for what, values in (("camera name", [c.name for c in cams]), ("topic", [c.topic for c in cams])):
        dups = sorted({v for v in values if values.count(v) > 1})
        if dups:
            errors.append(f"duplicate {what}(s) {', '.join(dups)} (use name=topic to tell cameras apart)")
    if errors:
        raise ValueError("image_topics: " + "; ".join(errors))
    return tuple(cams)


def image_topics_problems(entries: Iterable[str] | None) -> list[str]:
    """``parse_image_topics`` problems as a list of messages (empty when valid)."""
    try:
        parse_image_topics(entries)
    except ValueError as err:
        return [str(err)]
    return []


#: what ``Watchdog.check`` may ask to publish; the verdict's reason starts with ``"<action>: "``
WATCHDOG_ACTIONS: tuple[str, ...] = ("stale", "stalled")


def is_watchdog_reason(reason: str) -> bool:
    """A verdict the node published on its own (no input, or no verdict in time), not a frame's."""
    return reason.startswith(tuple(f"{a}: " for a in WATCHDOG_ACTIONS))


class Watchdog:
    """Input and progress watchdog of one camera (times in ns from ``time.monotonic_ns``).

    Two ways a camera's verdicts can stop while nothing else says so: no image arrives (``stale``,
    after ``timeout_s``), or images arrive but no verdict follows (``stalled``, after
    ``stall_timeout_s``: inference hung, e.g. on a wedged GPU, or slower than the timeout).
    ``check`` says what to do now: ``"stale"`` or ``"stalled"`` (publish such a verdict; repeated at
    most every ``min(timeout, 1 s)`` and at least every second while the condition lasts),
    ``"cleared"`` (images or verdicts are back) or ``""`` (nothing). Thread-safe: the subscription
    callbacks report input, the inference worker reports verdicts, a timer checks.
    """

    def __init__(self, now_ns: int) -> None:
        self._lock = threading.Lock()
        self.reset(now_ns)

    def reset(self, now_ns: int) -> None:
        with self._lock:
            self.last_input_ns = now_ns
            self.stale = False  #: stale or stalled: no verdict can be trusted to come
            self.stalled = False
            self._waiting_since_ns: Optional[int] = None  # input waiting for a verdict since then
            self._last_stale_ns = 0

    def on_input(self, now_ns: int) -> None:
        with self._lock:
            self.last_input_ns = now_ns
            if self._waiting_since_ns is None:
                self._waiting_since_ns = now_ns

    def on_verdict(self, now_ns: int, frame_recv_ns: int) -> None:
        """A verdict for the frame received at ``frame_recv_ns`` went out at ``now_ns``."""
        with self._lock:
            # Newer frames came meanwhile: they wait from now on (the newest frame wins, so one
            # verdict per inference pass is progress even when frames are dropped).
            self._waiting_since_ns = now_ns if self.last_input_ns > frame_recv_ns else None

    @property
    def no_input(self) -> bool:
        """Stale because no image arrives (as opposed to stalled, images arriving but not judged)."""
        return self.stale and not self.stalled

    def idle_s(self, now_ns: int) -> float:
        return (now_ns - self.last_input_ns) / 1e9

    def waiting_s(self, now_ns: int) -> float:
        """How long input has waited for a verdict (0 when nothing waits)."""
        since = self._waiting_since_ns
        return 0.0 if since is None else (now_ns - since) / 1e9

    def check(self, now_ns: int, timeout_s: float, stall_timeout_s: float = 0.0) -> str:
        with self._lock:
            idle = timeout_s > 0 and self.idle_s(now_ns) > timeout_s
            stalled = not idle and stall_timeout_s > 0 and self.waiting_s(now_ns) > stall_timeout_s
            if not (idle or stalled):
                if self.stale:
                    self.stale = self.stalled = False
                    return "cleared"
                return ""
            period_s = min(timeout_s if idle else stall_timeout_s, 1.0)
            if self.stale and self.stalled == stalled and (now_ns - self._last_stale_ns) / 1e9 < period_s:
                return ""
            self.stale, self.stalled, self._last_stale_ns = True, stalled, now_ns
            return "stalled" if stalled else "stale"


@dataclass
class CameraChannel:
    """A camera at run time: its hysteresis, watchdog and (in the node) ROS entities."""

    camera: Camera
    hysteresis: Any
    watchdog: Watchdog
    sub: Any = None
    #: the subscription's resolved topic while subscribed, else "" (other threads read this string,
    #: never ``sub``: a destroyed subscription's ``topic_name`` raises)
    subscribed_topic: str = ""
    verdict_pub: Any = None
    ood_pub: Any = None
    invalid_streak: int = 0  #: frames in a row that could not be judged (rejected or inference failed)


class CameraSlots(Generic[T]):
    """One newest-wins slot per camera; the worker takes the newest frame of every camera at once.

    Thread-safe. Memory stays bounded by one item per camera whatever the input rates; the caller
    counts overwrites (``put`` returns True) as drops.
    """

    def __init__(self, n_cameras: int) -> None:
        if n_cameras < 1:
            raise ValueError(f"n_cameras must be >= 1, got {n_cameras}.")
        self._cond = threading.Condition()
        self._items: list[Optional[T]] = [None] * n_cameras
        self._full = [False] * n_cameras

    def __len__(self) -> int:
        return len(self._items)

    def put(self, index: int, item: T) -> bool:
        """Store camera ``index``'s newest item; True when it replaced one nobody took (a drop)."""
        with self._cond:
            replaced = self._full[index]
            self._items[index], self._full[index] = item, True
            self._cond.notify_all()
            return replaced

    def take_all(self, timeout_s: Optional[float] = None, gather_s: float = 0.0) -> list[tuple[int, T]]:
        """Take the items of every camera that has one, as ``[(index, item), ...]`` in camera order.

        Waits up to ``timeout_s`` for a first item (returns [] if none comes), then up to
        ``gather_s`` more while some camera has none yet, so that frames of cameras triggered
        together share one forward pass (returns as soon as every camera has one).
        """
        with self._cond:
            if not any(self._full):
                self._cond.wait(timeout_s)
                if not any(self._full):
                    return []
            if gather_s > 0 and not all(self._full):
                deadline = time.monotonic() + gather_s
                while not all(self._full):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            out = [(i, item) for i, (item, full) in enumerate(zip(self._items, self._full)) if full]
            self._items = [None] * len(self._items)
            self._full = [False] * len(self._full)
            return out  # type: ignore[return-value]

    def clear(self) -> int:
        """Discard every item; return how many were discarded."""
        with self._cond:
            n = sum(self._full)
            self._items = [None] * len(self._items)
            self._full = [False] * len(self._full)
            return n


def health_values(channels: Sequence[CameraChannel]) -> dict[str, str]:
    """Per-camera keys for the node's health status (multi-camera nodes only; empty for one camera)."""
    if not channels or (len(channels) == 1 and not channels[0].camera.name):
        return {}
    return {
        "cameras": ",".join(c.camera.name for c in channels),
        "stale_cameras": ",".join(c.camera.name for c in channels if c.watchdog.no_input),
        "stalled_cameras": ",".join(c.camera.name for c in channels if c.watchdog.stalled),
        "unjudged_cameras": ",".join(c.camera.name for c in channels if c.invalid_streak > 0),
        "flagged_cameras": ",".join(c.camera.name for c in channels if c.hysteresis is None or c.hysteresis.flag),
    }
