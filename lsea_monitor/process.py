"""Child processes that do not outlive the process that started them.

The replay evaluation, the demo and the benchmark start the monitor node as a child process. If
they are killed (SIGKILL, an out-of-memory kill, a CI timeout), nothing runs their clean-up, and an
orphaned node would go on holding its ROS domain, its camera subscription and, on a GPU, its
memory. Linux's ``prctl(PR_SET_PDEATHSIG)`` has the kernel signal the child when its parent dies.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when its parent dies.

    Everything is resolved before the fork; in the child only ``prctl``, ``getppid`` and ``kill``
    run. If the parent already died between the fork and the ``prctl``, the child signals itself.

    Returns None (no ``preexec_fn``) where it cannot work: off Linux, and outside the main thread,
    because the kernel ties the signal to the thread that forked, so the child would be killed when
    that thread ends rather than when the process does.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return preexec
