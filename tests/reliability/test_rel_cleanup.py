"""The tests' own process hygiene: a child started by the helpers dies when its parent (pytest) dies,
even by SIGKILL; without the death signal it would be orphaned (the control)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lsea_rel_util import HERE, record

# A stand-in for pytest: starts one child with (or without) the helper's death signal, reports
# the child's pid, then waits to be killed.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, {here!r})
    from lsea_rel_util import pdeathsig_preexec
    child = subprocess.Popen([sys.executable, "-c", {child!r}, {marker!r}], start_new_session=True,
                             preexec_fn=pdeathsig_preexec() if {use!r} else None)
    print(child.pid, flush=True)
    time.sleep(600)
""")
# The child: on SIGTERM, leave a marker and exit 0.
CHILD = textwrap.dedent("""
    import signal, sys, time
    def bye(*_):
        open(sys.argv[1], "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    open(sys.argv[1] + ".ready", "w").close()
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _orphan_after_parent_kill(tmp_path: Path, use_pdeathsig: bool) -> tuple[int, Path]:
    marker = tmp_path / f"marker-{use_pdeathsig}"
    code = PARENT.format(here=str(HERE), child=CHILD, marker=str(marker), use=use_pdeathsig)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if not k.startswith("_ROS_WHEELS")})
    try:
        child_pid = int(parent.stdout.readline())
        ready, deadline = Path(f"{marker}.ready"), time.monotonic() + 30.0
        while not ready.exists() and time.monotonic() < deadline:  # the child installs its handler
            time.sleep(0.05)
        assert ready.exists(), "the child never installed its SIGTERM handler"
        parent.kill()  # the "pytest" process dies hard
        parent.wait(timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
    return child_pid, marker


def test_children_die_with_a_killed_parent_and_are_orphaned_without_the_death_signal(tmp_path: Path) -> None:
    child, marker = _orphan_after_parent_kill(tmp_path, use_pdeathsig=True)
    deadline = time.monotonic() + 10.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its SIGKILLed parent despite PR_SET_PDEATHSIG"
    assert marker.read_text() == "SIGTERM"

    orphan, orphan_marker = _orphan_after_parent_kill(tmp_path, use_pdeathsig=False)
    try:
        time.sleep(1.0)
        assert _alive(orphan), "control: without the death signal the child should have been orphaned"
        assert not orphan_marker.exists()
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
    record("process_cleanup", {"child_killed_with_parent": True, "orphan_without_pdeathsig": True})


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_helper_child_process_stops_and_escalates(tmp_path: Path, sig: int) -> None:
    """ChildProcess.stop escalates to SIGKILL when the signal is ignored, and always reaps."""
    from lsea_rel_util import ChildProcess

    proc = ChildProcess([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "print('up', flush=True); time.sleep(600)"],
                        {k: v for k, v in os.environ.items() if not k.startswith("_ROS_WHEELS")}, tmp_path / "c.log")
    deadline = time.monotonic() + 20
    while "up" not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    rc = proc.stop(sig, timeout_s=1.0)
    assert rc == -signal.SIGKILL and proc.returncode is not None
    json.dumps({"rc": rc})
