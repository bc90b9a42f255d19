"""Offline mode: the bag's frames through :class:`~lsea_monitor.pipeline.FrameScorer` and
:class:`~lsea_monitor.pipeline.Hysteresis` in this process, exactly as the node uses them.

Same parameters as the node (read from its params YAML, overridden on the command line), same
image conversion (:mod:`lsea_monitor.ros_image`), same hysteresis rules (an undecodable image or an
invalid score raises the flag at once, as ``force_raise`` in the node).

Deterministic: the MC-dropout draws of a frame are seeded from its header stamp
(:func:`frame_seed`), so a frame gets the same score on every run, and the same score as in the
node when the node seeds its draws the same way. Reading and decoding run in a prefetch thread
while the model works, so the per-frame cost is the model's.
"""

from __future__ import annotations

import inspect
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lsea_monitor.errors import ImageDecodeError, InputValidationError
from lsea_monitor.node_params import SPECS, MonitorParams
from lsea_monitor.replay import decode
from lsea_monitor.replay.bag_io import BagReader
from lsea_monitor.replay.errors import CorruptBagError, ParamsFileError
from lsea_monitor.replay.records import Frame, Verdict

# --- the node's parameters --------------------------------------------------------------------------

DEFAULT_NODE_NAME = "lsea_monitor"
_NODE = MonitorParams()  # the node's defaults


@dataclass(frozen=True)
class MonitorConfig:
    """The node parameters that decide a frame's verdict; names and defaults come from
    :data:`lsea_monitor.node_params.SPECS` (the node's own declarations)."""

    checkpoint: str = _NODE.checkpoint
    artefact: str = _NODE.artefact
    trust_checkpoint: bool = _NODE.trust_checkpoint
    model_class: str = _NODE.model_class
    layer: str = _NODE.layer
    device: str = _NODE.device
    precision: str = _NODE.precision
    mc_samples: int = _NODE.mc_samples
    raise_after: int = _NODE.raise_after
    window: int = _NODE.window
    clear_after: int = _NODE.clear_after
    input_type: str = _NODE.input_type
    max_image_pixels: int = _NODE.max_image_pixels

    def hysteresis(self) -> dict[str, int]:
        return {"raise_after": self.raise_after, "window": self.window, "clear_after": self.clear_after}


#: ROS parameter name -> MonitorConfig field (the node's own mapping, restricted to these fields)
ROS_NAMES: dict[str, str] = {s.name: s.field for s in SPECS if s.field in {f.name for f in fields(MonitorConfig)}}


def _fqn_matches(pattern: str, fqn: str) -> bool:
    """ROS 2 parameter-file node-name matching: ``/**`` any namespaces, ``*`` one token."""
    pat = [t for t in pattern.strip("/").split("/") if t]
    name = [t for t in fqn.strip("/").split("/") if t]

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(name)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(name) + 1))
        if j < len(name) and (pat[i] == "*" or pat[i] == name[j]):
            return match(i + 1, j + 1)
        return False

    return match(0, 0)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_params_files(paths: Sequence[str | os.PathLike[str]], *, node_name: str = DEFAULT_NODE_NAME,
                      namespace: str = "") -> dict[str, Any]:
    """Parameters that ROS would give node ``namespace/node_name`` from these YAML files (later wins).

    Raises
    ------
    ParamsFileError
        A file is missing, not YAML, or not in the ``<node>: {ros__parameters: {...}}`` layout.
    """
    import yaml

    fqn = "/".join(t for t in (namespace.strip("/"), node_name) if t)
    out: dict[str, Any] = {}
    for path in paths:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except OSError as err:
            raise ParamsFileError(f"Cannot read the node parameters file {p}: {err}.") from err
        except yaml.YAMLError as err:
            raise ParamsFileError(f"Node parameters file {p} is not valid YAML: {err}") from err
        if not isinstance(doc, dict):
            raise ParamsFileError(f"Node parameters file {p}: expected '<node name>: {{ros__parameters: ...}}' "
                                  f"at the top, got {type(doc).__name__}.")
        for key, body in doc.items():
            if not _fqn_matches(str(key), fqn):
                continue
            if not isinstance(body, dict) or not isinstance(body.get("ros__parameters"), dict):
                raise ParamsFileError(f"Node parameters file {p}: entry {key!r} has no 'ros__parameters' mapping.")
            out.update(_flatten(body["ros__parameters"]))
    return out


def monitor_config(params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                   *, base: Path | None = None) -> MonitorConfig:
    """A :class:`MonitorConfig` from ROS-named ``params`` then field-named ``overrides`` (None values skipped)."""
    cfg = MonitorConfig()
    values: dict[str, Any] = {}
    for ros_name, fld in ROS_NAMES.items():
        if ros_name in params:
            values[fld] = params[ros_name]
    for k, v in (overrides or {}).items():
        if v is not None and v != "":
            values[k] = v
    types = {f.name: type(getattr(cfg, f.name)) for f in fields(MonitorConfig)}
    for k, v in values.items():
        want = types[k]
        if want is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ParamsFileError(f"Parameter {k} must be an integer, got {v!r}.")
        if want is str and not isinstance(v, str):
            raise ParamsFileError(f"Parameter {k} must be a string, got {v!r}.")
        if want is bool and not isinstance(v, bool):  # "false" (a string) must not turn unpickling on
            raise ParamsFileError(f"Parameter {k} must be true or false, got {v!r}.")
    cfg = replace(cfg, **values)
    if not (1 <= cfg.raise_after <= cfg.window) or cfg.clear_after < 1:
        raise ParamsFileError(f"Hysteresis needs 1 <= raise_after <= window and clear_after >= 1, got raise_after "
                              f"{cfg.raise_after}, window {cfg.window}, clear_after {cfg.clear_after}.")
    return cfg


# --- scoring --------------------------------------------------------------------------------------


class Scorer(Protocol):
    """What offline mode needs of :class:`~lsea_monitor.pipeline.FrameScorer`."""

    threshold: float

    def score_images(self, images: Sequence[np.ndarray]) -> list[Any]: ...


def frame_seed(header_stamp_ns: int) -> int:
    """Seed of a frame's MC-dropout draws from its header stamp in ns (:func:`lsea_monitor.pipeline.frame_seed`).

    The same frame gets the same draws in every run and, as the node seeds the same way, in the node.
    """
    from lsea_monitor.pipeline import frame_seed as core_frame_seed

    return int(core_frame_seed(header_stamp_ns))


def seed_for(scorer: Any, header_stamp_ns: int) -> int:
    """The seed the node gives this frame: the scorer's :meth:`~lsea_monitor.pipeline.FrameScorer.frame_seed`
    (the artefact's common seed, else the stamp's); a scorer without one is seeded by the stamp."""
    method = getattr(scorer, "frame_seed", None)
    return int(method(header_stamp_ns)) if callable(method) else frame_seed(header_stamp_ns)


def _accepts_seed(scorer: Any) -> bool:
    try:
        return "seed" in inspect.signature(scorer.score_images).parameters
    except (TypeError, ValueError):
        return False


def score_seeded(scorer: Any, images: Sequence[np.ndarray], seed: int) -> list[Any]:
    """``scorer.score_images(images)`` with the MC draws seeded by ``seed`` (torch's global state restored).

    Uses the core's own ``score_images(..., seed=)`` when it has one (the node's path); otherwise seeds
    torch's generators around the call the same way.
    """
    if _accepts_seed(scorer):
        return scorer.score_images(images, seed=seed)
    import torch

    device = getattr(scorer, "device", None)
    cuda = [device] if device is not None and getattr(device, "type", "") == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return scorer.score_images(images)


def load_scorer(cfg: MonitorConfig) -> Any:
    """The node's :class:`~lsea_monitor.pipeline.FrameScorer` from the configured files, warmed up."""
    from lsea_monitor.pipeline import FrameScorer

    if not cfg.checkpoint or not cfg.artefact:
        missing = [n for n in ("checkpoint", "artefact") if not getattr(cfg, n)]
        raise ParamsFileError(f"Offline mode needs {' and '.join(missing)}: give --{' and --'.join(missing)} or "
                              "set them in --params-file.")
    scorer = FrameScorer.from_files(checkpoint=cfg.checkpoint, model_class=cfg.model_class, layer=cfg.layer,
                                    artefact=cfg.artefact, device=cfg.device, precision=cfg.precision,
                                    mc_samples=cfg.mc_samples, trust_checkpoint=cfg.trust_checkpoint)
    scorer.warmup()
    return scorer


# --- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedFrame:
    frame: Frame
    rgb: np.ndarray | None  #: None when the image could not be decoded
    reason: str = ""  #: why not (the node's "rejected image: ..." text)
    raw: bytes = b""  #: CDR as published (live mode); empty offline


def iter_frames(bag: BagReader, topic: str, *, max_pixels: int | None = None, restamp: bool = False,
                decode_pixels: bool = True, keep_raw: bool = False) -> Iterator[DecodedFrame]:
    """Frames of ``topic`` in bag order: metadata, RGB pixels (or why not), optionally the raw CDR.

    ``restamp``: use each message's bag time as its header stamp (for bags whose header stamps are
    zero or repeated); with ``keep_raw`` the raw CDR is re-serialised with that stamp.

    Raises
    ------
    UnsupportedEncodingError
        The first image's encoding/format is not one the monitor decodes.
    CorruptBagError
        A message does not deserialise, or the storage fails (``messages_read`` = frames yielded).
    """
    msgtype = bag.require_topic(topic, decode.IMAGE_TYPES, what="image topic").msgtype
    for i, m in enumerate(bag.messages([topic])):
        try:
            msg = decode.deserialize(m.rawdata, msgtype)
        except decode.DeserializationError as err:
            raise CorruptBagError(f"Bag {bag.path} is corrupted: message {i} on {topic} (bag time {m.stamp_ns} ns) "
                                  f"does not deserialise: {err}", bag=str(bag.path), messages_read=i) from err
        if i == 0:
            decode.check_first_frame(msg, msgtype, topic=topic, bag=str(bag.path))
        frame = decode.frame_of(i, m.stamp_ns, topic, msg, msgtype)
        raw = m.rawdata if keep_raw else b""
        if restamp:
            frame = replace(frame, header_stamp_ns=m.stamp_ns)
            if keep_raw:
                raw = decode.restamped(msg, m.stamp_ns, msgtype)
        if not decode_pixels:
            yield DecodedFrame(frame, None, "", bytes(raw))
            continue
        try:
            rgb = decode.to_rgb(msg, max_pixels=max_pixels)
        except ImageDecodeError as err:
            yield DecodedFrame(frame, None, f"rejected image: {err}", bytes(raw))
            continue
        if msgtype == decode.COMPRESSED:
            frame = replace(frame, height=int(rgb.shape[0]), width=int(rgb.shape[1]))
        yield DecodedFrame(frame, rgb, "", bytes(raw))


def check_image_topic(bag: BagReader, topic: str) -> None:
    """Deserialise the topic's first message and refuse an encoding the monitor cannot decode (cheap, early)."""
    frames = iter_frames(bag, topic, decode_pixels=False)
    try:
        next(frames, None)
    finally:
        frames.close()

_DONE = object()


class Prefetch:
    """Runs an iterator in a daemon thread, ``depth`` items ahead; re-raises its exception in order."""

    def __init__(self, it: Iterator[Any], depth: int = 4) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), name="replay-prefetch", daemon=True)
        self._thread.start()

    def _run(self, it: Iterator[Any]) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put(("done", _DONE))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(("error", err))

    def _put(self, item: tuple[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Any]:
        while True:
            kind, value = self._q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    """Verdicts of one mode over one bag; ``complete`` False when the bag could not be read to the end."""

    mode: str
    frames: list[Frame] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    complete: bool = True
    error: str = ""
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_offline(bag: BagReader, topic: str, scorer: Any, cfg: MonitorConfig, *, seeded: bool = True,
                batch_size: int = 1, restamp: bool = False,
                progress: Callable[[int], None] | None = None) -> ModeResult:
    """Score every frame of ``topic`` in bag order; a read failure midway gives an incomplete result.

    ``batch_size`` > 1 scores frames in batches with one seed per batch (deterministic and faster
    on a GPU, but not comparable frame by frame with the node, which scores one frame at a time).
    """
    from lsea_monitor.pipeline import FrameScore, Hysteresis

    if batch_size < 1:
        raise InputValidationError(f"batch_size must be >= 1, got {batch_size}.")
    hyst = Hysteresis(**cfg.hysteresis())
    result = ModeResult(mode="offline", extra={"seeded": seeded, "batch_size": batch_size, "restamp": restamp})
    threshold = float(scorer.threshold)
    source = Prefetch(iter_frames(bag, topic, max_pixels=cfg.max_image_pixels, restamp=restamp), depth=2 * batch_size + 2)
    pending: list[tuple[DecodedFrame, float]] = []
    t_start = time.perf_counter()

    def flush() -> None:
        good = [(d, t0) for d, t0 in pending if d.rgb is not None]
        scores: dict[int, Any] = {}
        if good:
            images = [d.rgb for d, _ in good]
            seeds = [seed_for(scorer, d.frame.header_stamp_ns) for d, _ in good]
            out = score_seeded(scorer, images, seeds[0]) if seeded else scorer.score_images(images)
            scores = {d.frame.index: s for (d, _), s in zip(good, out)}
        t_done = time.perf_counter()
        for d, t0 in pending:
            fs = scores.get(d.frame.index) or FrameScore.invalid(d.reason or "no score")
            flag = hyst.update(fs.is_ood) if fs.valid else hyst.force_raise()
            result.verdicts.append(Verdict(
                frame_index=d.frame.index, stamp_ns=d.frame.stamp_ns, header_stamp_ns=d.frame.header_stamp_ns,
                score=float(fs.score), raw_is_ood=bool(fs.is_ood), flag=bool(flag), valid=bool(fs.valid),
                reason=fs.reason, latency_ms=(t_done - t0) * 1e3, source="offline"))
        pending.clear()
        if progress is not None:
            progress(len(result.verdicts))

    try:
        for d in source:
            result.frames.append(d.frame)
            pending.append((d, time.perf_counter()))
            if len(pending) >= batch_size:
                flush()
        flush()
    except CorruptBagError as err:
        flush()
        result.complete = False
        result.error = str(err)
        result.extra["error_type"] = type(err).__name__
    finally:
        source.close()
    result.wall_s = time.perf_counter() - t_start
    n = len(result.verdicts)
    result.extra.update({"threshold": threshold, "frames_per_s": n / result.wall_s if result.wall_s > 0 else math.nan,
                         "per_frame_ms": 1e3 * result.wall_s / n if n else math.nan,
                         "duplicate_header_stamps": n - len({v.header_stamp_ns for v in result.verdicts})})
    return result
