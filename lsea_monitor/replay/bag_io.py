"""Bag I/O only: open rosbag2 bags (sqlite3 or mcap, a bag folder or a bare ``.db3``/``.mcap`` file),
list topics, yield raw ``(topic, stamp_ns, bytes)``; write an output bag with the verdicts added.

Nothing is deserialised here (see :mod:`.decode`). Every storage failure becomes a
:class:`~.errors.ReplayError` naming the bag: at open time a :class:`~.errors.BagOpenError` or
:class:`~.errors.CorruptBagError`; while reading a :class:`~.errors.CorruptBagError` that says how many
messages were read before the failure. After the last message, the number read per topic is
checked against the bag's own index, so a bag that silently ends early is reported as truncated.

mcap chunks carry CRCs when the recorder wrote them (``ros2 bag record`` does, rosbags does not):
:meth:`BagReader.verify` checks them in one streaming pass, so payload corruption is caught before
any score is computed.
"""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lsea_monitor.replay.errors import (
    BagOpenError,
    CorruptBagError,
    EmptyBagError,
    MissingTopicError,
    ReplayError,
    UnsupportedMessageTypeError,
)
from lsea_monitor.replay.records import BagInfo, RawMessage, TopicInfo

STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def storage_of(path: Path) -> str:
    """``sqlite3`` or ``mcap`` from the files of a bag folder or a bare storage file; else ``unknown``."""
    if path.is_file():
        return STORAGE_SUFFIXES.get(path.suffix, "unknown")
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.suffix in STORAGE_SUFFIXES:
                return STORAGE_SUFFIXES[child.suffix]
            if child.name.endswith((".db3.zstd", ".mcap.zstd")):
                return STORAGE_SUFFIXES[Path(child.stem).suffix]
    return "unknown"


class BagReader:
    """A rosbag2 bag opened for reading through ``rosbags.rosbag2.Reader``.

    Use as a context manager::

        with BagReader("drive_bag") as bag:
            bag.require_topic("/camera/image_raw", IMAGE_TYPES)
            for topic, stamp_ns, raw in bag.messages(["/camera/image_raw"]):
                ...
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._reader: Any = None
        self.storage = "unknown"

    # --- open / close -----------------------------------------------------------------------
    def open(self) -> "BagReader":
        from rosbags.rosbag2 import Reader, ReaderError

        p = self.path
        if not p.exists():
            raise BagOpenError(f"No bag at {p}: the path does not exist. Give a rosbag2 folder (with metadata.yaml) "
                               "or a .db3 / .mcap file.", bag=str(p))
        if p.is_dir() and not (p / "metadata.yaml").is_file():
            raise BagOpenError(f"{p} is not a rosbag2 bag: the folder has no metadata.yaml. Give the bag folder "
                               "(the one holding metadata.yaml) or its .db3 / .mcap file.", bag=str(p))
        if p.is_file() and p.suffix not in STORAGE_SUFFIXES:
            raise BagOpenError(f"{p} is not a rosbag2 bag: unknown storage file type {p.suffix!r} (expected a bag "
                               "folder, .db3 for sqlite3 or .mcap).", bag=str(p))
        self.storage = storage_of(p)
        try:
            reader = Reader(p)
            reader.open()
        except ReaderError as err:
            raise CorruptBagError(f"Cannot open bag {p} ({self.storage} storage): it is corrupted or truncated "
                                  f"({err}).", bag=str(p)) from err
        except (PermissionError, IsADirectoryError) as err:
            raise BagOpenError(f"Cannot read bag {p}: {_describe(err)}.", bag=str(p)) from err
        except Exception as err:  # noqa: BLE001 - storage back ends raise anything (apsw, struct, zstd, ...)
            raise CorruptBagError(f"Cannot open bag {p} ({self.storage} storage): it is corrupted or truncated "
                                  f"({_describe(err)}).", bag=str(p)) from err
        self._reader = reader
        return self

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001 - closing a broken bag must not hide the real error
                pass
            self._reader = None

    def __enter__(self) -> "BagReader":
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _r(self) -> Any:
        if self._reader is None:
            raise ReplayError(f"Bag {self.path} is not open; use 'with BagReader(path) as bag:'.", bag=str(self.path))
        return self._reader

    # --- metadata -----------------------------------------------------------------------------
    @property
    def connections(self) -> list[Any]:
        return list(self._r().connections)

    def topics(self) -> dict[str, TopicInfo]:
        out: dict[str, TopicInfo] = {}
        for conn in self._r().connections:
            prev = out.get(conn.topic)
            count = conn.msgcount + (prev.count if prev else 0)
            out[conn.topic] = TopicInfo(conn.topic, conn.msgtype, count)
        return out

    def info(self) -> BagInfo:
        r = self._r()
        count = int(r.message_count)
        start = int(r.start_time) if count else 0
        end = int(r.end_time) if count else 0
        return BagInfo(path=str(self.path), storage=self.storage, start_ns=start, end_ns=end, message_count=count,
                       topics=self.topics())

    def require_topic(self, topic: str, msgtypes: Iterable[str] | None = None, *, what: str = "topic") -> TopicInfo:
        """The topic's info; raises when it is absent, of another type, or has no message."""
        topics = self.topics()
        if topic not in topics:
            listing = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in topics.values()) or "none"
            raise MissingTopicError(f"The {what} {topic!r} is not in bag {self.path}. Topics in the bag: {listing}.",
                                    bag=str(self.path))
        info = topics[topic]
        allowed = tuple(msgtypes or ())
        if allowed and info.msgtype not in allowed:
            raise UnsupportedMessageTypeError(
                f"The {what} {topic!r} in bag {self.path} has type {info.msgtype}; supported: {', '.join(allowed)}.",
                bag=str(self.path))
        if info.count == 0:
            raise EmptyBagError(f"The {what} {topic!r} in bag {self.path} holds no message: nothing to evaluate.",
                                bag=str(self.path))
        return info

    def require_messages(self) -> None:
        if self._r().message_count == 0:
            raise EmptyBagError(f"Bag {self.path} is empty: it holds no message at all "
                                f"(topics: {', '.join(self.topics()) or 'none'}).", bag=str(self.path))

    # --- messages -----------------------------------------------------------------------------
    def messages(self, topics: Sequence[str] = (), *, check_counts: bool = True) -> Iterator[RawMessage]:
        """Raw messages of ``topics`` (all when empty) in bag-time order.

        Raises
        ------
        CorruptBagError
            The storage failed midway, or (``check_counts``) fewer messages could be read than the
            bag's index lists; ``messages_read`` says how many were yielded before.
        """
        r = self._r()
        wanted = set(topics)
        conns = [c for c in r.connections if not wanted or c.topic in wanted]
        expected: dict[str, int] = {}
        for c in conns:
            expected[c.topic] = expected.get(c.topic, 0) + int(c.msgcount)
        seen: dict[str, int] = dict.fromkeys(expected, 0)
        n = 0
        if not conns:
            return
        it = r.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001 - apsw, struct, zstd, ReaderError, OSError ...
                raise CorruptBagError(
                    f"Bag {self.path} ({self.storage}) is corrupted or truncated: reading failed after {n} message(s) "
                    f"of {', '.join(sorted(expected))} ({_describe(err)}).", bag=str(self.path), messages_read=n,
                ) from err
            conn, stamp_ns, raw = item
            seen[conn.topic] = seen.get(conn.topic, 0) + 1
            n += 1
            yield RawMessage(conn.topic, int(stamp_ns), raw)
        if check_counts:
            short = {t: (seen.get(t, 0), e) for t, e in expected.items() if seen.get(t, 0) < e}
            if short:
                detail = ", ".join(f"{t}: {got} of {exp}" for t, (got, exp) in sorted(short.items()))
                raise CorruptBagError(f"Bag {self.path} ({self.storage}) is truncated: its index lists more messages "
                                      f"than could be read ({detail}).", bag=str(self.path), messages_read=n)

    def verify(self) -> None:
        """Check the CRCs of an mcap storage file in one streaming pass (no-op for sqlite3 or CRC-less files)."""
        if self.storage != "mcap":
            return
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.mcap"))
        try:
            from mcap.stream_reader import StreamReader
        except ImportError:  # the mcap package is optional for reading (rosbags reads mcap itself)
            return
        for f in files:
            try:
                with open(f, "rb") as fh:
                    for _ in StreamReader(fh, validate_crcs=True).records:
                        pass
            except Exception as err:  # noqa: BLE001 - CRC mismatch, bad record, truncated stream
                raise CorruptBagError(f"Bag {self.path}: mcap file {f.name} is corrupted ({_describe(err)}).",
                                      bag=str(self.path)) from err


# --- writing ----------------------------------------------------------------------------------


class OutputMessage(tuple):
    """(topic, msgtype, stamp_ns, cdr bytes) of a message to add to the output bag."""

    __slots__ = ()

    def __new__(cls, topic: str, msgtype: str, stamp_ns: int, rawdata: bytes) -> "OutputMessage":
        return super().__new__(cls, (topic, msgtype, int(stamp_ns), rawdata))


def check_output_bag_path(out: str | os.PathLike[str]) -> None:
    """Raise ReplayError if ``out`` cannot take a new bag (it exists: never overwritten)."""
    out_p = Path(out)
    if out_p.exists():
        raise ReplayError(f"Output bag {out_p} already exists; remove it or choose another path.", bag=str(out_p))


def write_bag(out: str | os.PathLike[str], *, source: BagReader | None, added: Iterable[OutputMessage],
              storage: str = "mcap") -> dict[str, Any]:
    """Write a new bag: every message of ``source`` (raw, untouched) merged in time order with ``added``.

    ``out`` ending in ``.mcap`` gives one self-contained mcap file (opens in Foxglove, and in
    rosbags/``ros2 bag`` as a bare storage file); any other path gives a rosbag2 folder with
    ``storage`` (``mcap`` or ``sqlite3``). An existing ``out`` is never overwritten.

    Returns ``{"path", "messages", "skipped_topics"}``; a source topic whose type definition is
    neither in the bag nor in the typestore is skipped and listed.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from lsea_monitor.replay.decode import typestore

    out_p = Path(out)
    check_output_bag_path(out_p)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    single_file = out_p.suffix == ".mcap"
    plugin = StoragePlugin.MCAP if (single_file or storage == "mcap") else StoragePlugin.SQLITE3
    tmp_root = Path(tempfile.mkdtemp(prefix=".lsea_bag_", dir=out_p.parent))
    bag_dir = tmp_root / out_p.stem if single_file else out_p
    ts = typestore()
    skipped: dict[str, str] = {}
    count = 0
    try:
        with Writer(bag_dir, version=9, storage_plugin=plugin) as writer:
            conns: dict[tuple[str, str], Any] = {}

            def connection(topic: str, msgtype: str, src: Any = None) -> Any:
                key = (topic, msgtype)
                if key not in conns:
                    if msgtype in ts.types:
                        conns[key] = writer.add_connection(topic, msgtype, typestore=ts)
                    elif src is not None and src.msgdef.data and src.digest:
                        conns[key] = writer.add_connection(topic, msgtype, msgdef=src.msgdef.data, rihs01=src.digest)
                    else:
                        conns[key] = None
                        skipped[topic] = f"type {msgtype} unknown (no definition in the bag or the typestore)"
                return conns[key]

            src_stream: Iterable[tuple[int, str, str, bytes]] = ()
            if source is not None:
                by_topic = {}
                for c in source.connections:
                    by_topic.setdefault(c.topic, c)
                    connection(c.topic, c.msgtype, c)
                src_stream = ((m.stamp_ns, m.topic, by_topic[m.topic].msgtype, m.rawdata)
                              for m in source.messages(check_counts=True))
            add_stream = ((m[2], m[0], m[1], m[3]) for m in sorted(added, key=lambda m: m[2]))
            for stamp_ns, topic, msgtype, raw in heapq.merge(src_stream, add_stream, key=lambda x: x[0]):
                conn = connection(topic, msgtype)
                if conn is None:
                    continue
                writer.write(conn, stamp_ns, raw)
                count += 1
        if single_file:
            produced = next(bag_dir.glob("*.mcap"))
            shutil.move(str(produced), str(out_p))
    except ReplayError:
        if not single_file:
            shutil.rmtree(out_p, ignore_errors=True)
        raise
    except Exception as err:  # noqa: BLE001 - a failed write must not leave a half bag that looks complete
        if not single_file:
            shutil.rmtree(out_p, ignore_errors=True)
        raise ReplayError(f"Could not write the output bag {out_p}: {_describe(err)}.", bag=str(out_p)) from err
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return {"path": str(out_p), "messages": count, "skipped_topics": skipped}
