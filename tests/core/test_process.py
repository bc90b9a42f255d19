"""lsea_monitor.process: the parent-death signal for the node processes the tools start.

That a child started with it dies with a SIGKILLed parent (and one without it does not) is shown in
tests/reliability/test_rel_cleanup.py; the replay tool's node in tests/replay/test_replay_live.py.
"""

from __future__ import annotations

import sys
import threading

import pytest

from lsea_monitor.process import die_with_parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_preexec_function_from_the_main_thread() -> None:
    assert callable(die_with_parent())


def test_none_outside_the_main_thread() -> None:
    """The kernel ties the signal to the forking thread: a child forked by a worker thread would be
    killed when that thread ends, so no death signal is set up there."""
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(die_with_parent()))
    worker.start()
    worker.join()
    assert got == [None]
