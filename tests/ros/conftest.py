"""Fixtures of the ROS 2 node tests: predictable frames, an in-test probe node, node processes.

Builds on ``ros_env``, ``ros_domain_id``, ``start_process`` and ``monitor_files`` from tests/conftest.py.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest
from lsea_ros_testutil import Probe, StreamFrames, build_stream_frames


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
