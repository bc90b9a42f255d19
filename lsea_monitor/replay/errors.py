"""Errors of the replay evaluation. Each message names the problem, the bag and what to do.

Every class carries the process exit code that ``lsea-replay-eval`` returns for it:

===  ==================================================================================
 0   complete evaluation, every check passed
 1   unexpected internal error (a bug: please report it with the traceback)
 2   bad input or usage: no such bag, missing topic, empty bag, unsupported encoding or
     message type, invalid ground truth, invalid parameters
 3   the bag is corrupted or truncated; if reading failed midway the report is written
     and marked INCOMPLETE
 4   ``--mode both``: offline and live scores disagree beyond the tolerance
 5   live mode failed: the node did not start, died, or never answered
 6   nothing to evaluate: a mode got no valid verdict, or live verdicts could not be
     matched to their frames (repeated header stamps without ``--restamp``)
===  ==================================================================================
"""

from __future__ import annotations

from lsea_monitor.errors import LseaError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CORRUPT = 3
EXIT_DISAGREE = 4
EXIT_LIVE = 5
EXIT_UNJUDGED = 6


class ReplayError(LseaError):
    """Base class of the replay errors; ``bag`` is the bag path concerned ('' when none)."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, bag: str = "") -> None:
        super().__init__(message)
        self.bag = str(bag)


class BagOpenError(ReplayError):
    """The path is not a readable rosbag2 bag (missing, unknown storage, unreadable metadata)."""


class MissingTopicError(ReplayError):
    """A topic named on the command line is not in the bag."""


class EmptyBagError(ReplayError):
    """The bag, or the topic to evaluate, holds no message."""


class CorruptBagError(ReplayError):
    """The bag's storage is corrupted or truncated.

    ``messages_read`` is how many messages of the requested topics were read before the failure
    (0 when the bag could not even be opened).
    """

    exit_code = EXIT_CORRUPT

    def __init__(self, message: str, *, bag: str = "", messages_read: int = 0) -> None:
        super().__init__(message, bag=bag)
        self.messages_read = int(messages_read)


class UnsupportedEncodingError(ReplayError):
    """The image topic holds an encoding or compressed format the monitor cannot decode."""


class UnsupportedMessageTypeError(ReplayError):
    """A topic has a message type this tool cannot use there (e.g. an image topic of PointCloud2)."""


class GroundTruthError(ReplayError):
    """The ground truth (Bool topic or sidecar file) is missing, malformed or out of the bag's time range."""


class ParamsFileError(ReplayError):
    """The node parameters YAML cannot be read or holds invalid values."""


class LiveModeError(ReplayError):
    """Live mode failed: the node did not start, exited, or produced no verdict."""

    exit_code = EXIT_LIVE
