"""Fixtures of the ROS 2 node tests: predictable frames, an in-test probe node, node processes.

Builds on ``ros_env``, ``ros_domain_id`` and ``monitor_files`` from tests/conftest.py.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from lsea_ros_testutil import NodeProcess, Probe, StreamFrames, build_stream_frames


@pytest.fixture(scope="session")
def stream_frames(monitor_files: Any, tmp_path_factory: pytest.TempPathFactory) -> StreamFrames:
    """Frames and a re-thresholded artefact with predictable raw verdicts (see StreamFrames)."""
    return build_stream_frames(monitor_files, tmp_path_factory.mktemp("stream_frames"))


@pytest.fixture
def probe(ros_domain_id: int) -> Iterator[Probe]:
    """An rclpy node in the test process on the test's DDS domain (verdicts, flags, /diagnostics).

    It listens to a node in a namespace of its own (pass ``namespace=probe.namespace`` to
    node_command): DDS domains are drawn at random, and another test's monitor may share one.
    """
    pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
    p = Probe(domain_id=ros_domain_id, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def start_process(ros_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start child processes (env = ros_env); each is stopped with SIGINT, then SIGKILL, at teardown."""
    started: list[NodeProcess] = []

    def start(cmd: list[str], name: str = "node", env: dict[str, str] | None = None) -> NodeProcess:
        proc = NodeProcess(cmd, env or ros_env, tmp_path / f"{name}-{len(started)}.log")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(signal.SIGINT)

