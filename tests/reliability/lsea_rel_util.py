"""Helpers of the reliability tests: /proc figures of a process, waiting on the probe, the camera
process, and the figures file ``work_dirs/reliability/summary.json``.

Child processes are tests/ros's :class:`lsea_ros_testutil.NodeProcess` (here ``ChildProcess``),
started with ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: if the pytest process dies (even by SIGKILL), the
kernel sends SIGTERM to every child, so no node or camera is orphaned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ROS_TESTS = REPO / "tests" / "ros"
SUMMARY = REPO / "work_dirs" / "reliability" / "summary.json"
CAMERA = HERE / "lsea_rel_camera.py"
STARTUP_TIMEOUT_S = 240.0  # torch import + model load + warm-up on a busy 2-core machine

# --- children that cannot outlive pytest: tests/ros's process helper ---------------------------
if str(ROS_TESTS) not in sys.path:  # also when imported by a bare child script (test_rel_cleanup)
    sys.path.insert(0, str(ROS_TESTS))
from lsea_ros_testutil import NodeProcess as ChildProcess  # noqa: E402,F401 - re-exported
from lsea_ros_testutil import pdeathsig_preexec  # noqa: E402,F401 - re-exported


def child_env(ros_env: dict[str, str]) -> dict[str, str]:
    """``ros_env`` plus this folder on PYTHONPATH (the test-only model class is imported by the node)."""
    env = dict(ros_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# --- /proc figures --------------------------------------------------------------------------------
def proc_figures(pid: int) -> dict[str, float]:
    """Resident memory (MB), its peak, threads and open file descriptors of a process, from /proc."""
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    kb = lambda k: float(status.get(k, "0 kB").split()[0])  # noqa: E731
    return {"rss_mb": kb("VmRSS") / 1024.0, "hwm_mb": kb("VmHWM") / 1024.0, "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def shm_files_of(pid: int) -> set[str]:
    """The /dev/shm files a process has mapped or open (Fast DDS shared-memory segments and locks)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip() if len(line.split(None, 5)) == 6 else ""
                if path.startswith("/dev/shm/"):
                    found.add(path.replace(" (deleted)", ""))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    found.add(target.replace(" (deleted)", ""))
    return found


class ProcSampler:
    """Samples :func:`proc_figures` of a process every ``period_s`` in a thread (t = time.time())."""

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        self.pid, self.period_s = pid, period_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProcSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.samples.append({"t": time.time(), **proc_figures(self.pid)})
            self._stop.wait(self.period_s)


def _cpu_ticks_total() -> tuple[int, int]:
    """(busy, all) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _cpu_ticks_of(pid: int) -> int:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    return 0


class CpuMeter:
    """CPU used by the whole machine and by our own processes over an interval, in cores.

    ``external_cores`` (machine minus ours) tells whether other work competed for the CPUs, which
    makes tail latencies on a small machine meaningless as a stability figure.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)

    def __enter__(self) -> "CpuMeter":
        self._t0 = time.monotonic()
        self._m0 = _cpu_ticks_total()
        self._p0 = {p: _cpu_ticks_of(p) for p in self.pids}
        return self

    def add(self, pid: int) -> None:
        self.pids.append(pid)
        self._p0[pid] = _cpu_ticks_of(pid)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> dict[str, float]:
        if hasattr(self, "result"):
            return self.result
        hz = os.sysconf("SC_CLK_TCK")
        dt = max(time.monotonic() - self._t0, 1e-9)
        busy = _cpu_ticks_total()[0] - self._m0[0]
        own = sum(max(0, _cpu_ticks_of(p) - self._p0[p]) for p in self.pids)
        self.result = {"machine_cores": round(busy / hz / dt, 2), "own_cores": round(own / hz / dt, 2),
                       "external_cores": round(max(0.0, (busy - own) / hz / dt), 2), "cpus": os.cpu_count()}
        return self.result


# --- probe helpers ---------------------------------------------------------------------------------
def kv(msg: Any) -> dict[str, str]:
    return {k.key: k.value for k in msg.status[0].values}


def stamp_of(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def latest_health(probe: Any, since_wall_s: float = 0.0) -> Optional[dict[str, str]]:
    """Values of the newest health message received after ``since_wall_s``."""
    _, _, health = probe.snapshot()
    for r in reversed(health):
        if r.t_wall_s < since_wall_s:
            return None
        for s in r.msg.status:
            if s.name == f"{probe.status_prefix}: health":
                return {k.key: k.value for k in s.values}
    return None


def wait_active(probe: Any, node: ChildProcess, since_wall_s: float, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Wait until this node (health received after ``since_wall_s``) reports lifecycle_state active."""
    def active(p: Any) -> bool:
        if node.returncode is not None:
            raise AssertionError(f"node exited with {node.returncode}:\n{node.log()[-3000:]}")
        v = latest_health(p, since_wall_s)
        return v is not None and v["lifecycle_state"] == "active"

    probe.wait_for(active, timeout_s, "the node to report lifecycle_state active on /diagnostics")


def wait_health(probe: Any, predicate: Callable[[dict[str, str]], bool], timeout_s: float, what: str,
                since_wall_s: float = 0.0) -> dict[str, str]:
    out: dict[str, dict[str, str]] = {}

    def ok(p: Any) -> bool:
        v = latest_health(p, since_wall_s)
        if v is not None and predicate(v):
            out["v"] = v
            return True
        return False

    probe.wait_for(ok, timeout_s, what)
    return out["v"]


def wait_matched(pub: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise AssertionError("the node's image subscription never matched")
        time.sleep(0.05)
    time.sleep(0.5)


def verdict_by_stamp(probe: Any, key: tuple[int, int], timeout_s: float) -> Any:
    """The verdict that carries ``key`` as its header stamp (waits for it)."""
    found: dict[str, Any] = {}

    def seen(p: Any) -> bool:
        for r in reversed(p.verdicts):
            if stamp_of(r.msg.header) == key:
                found["r"] = r
                return True
        return False

    probe.wait_for(seen, timeout_s, f"the verdict with stamp {key}")
    return found["r"]


# --- camera process ---------------------------------------------------------------------------------
def start_camera(env: dict[str, str], out_dir: Path, name: str, *, topic: str, images: list[str], rate_hz: float,
                 duration_s: float = 0.0, prefix: str = "cam", reliable: bool = False) -> tuple[ChildProcess, Path]:
    """Start ``lsea_rel_camera.py``; return the process and its sent log (JSON lines, one per frame)."""
    sent = out_dir / f"{name}.sent.jsonl"
    cfg = out_dir / f"{name}.json"
    cfg.write_text(json.dumps({"topic": topic, "images": images, "rate_hz": rate_hz, "duration_s": duration_s,
                               "sent_log": str(sent), "prefix": prefix, "reliable": reliable}))
    return ChildProcess([sys.executable, str(CAMERA), str(cfg)], env, out_dir / f"{name}.log"), sent


def read_sent(path: Path) -> list[dict[str, Any]]:
    """Frames a camera logged (a line cut short by SIGKILL is skipped)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


# --- figures ---------------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def record(section: str, figures: dict[str, Any], path: Path = SUMMARY) -> None:
    """Merge ``figures`` under ``section`` into the summary JSON (locked read-modify-replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(ValueError):
                data = json.loads(path.read_text())
        data[section] = {**figures, "recorded_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data["_meta"] = {"git_commit": _git_commit(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                         "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float))
        os.replace(tmp, path)
    print(f"\n[reliability] {section}: {json.dumps(figures, default=float)}")


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")
