"""Shared test fixtures. Every ROS process a test starts stays on this machine (LOCALHOST
discovery) and on a DDS domain of its own, so parallel runs never see each other."""

from __future__ import annotations

import os
import random

import pytest

# Set before anything can import rclpy, for in-process nodes too.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(10, 99)))


@pytest.fixture
def ros_domain_id() -> int:
    """A DDS domain id for one test (10..99; 0 is the default domain and stays untouched)."""
    return random.Random(f"{os.getpid()}-{os.environ.get('PYTEST_CURRENT_TEST')}").randint(10, 99)


@pytest.fixture
def ros_env(ros_domain_id: int) -> dict[str, str]:
    """A clean environment for a child ROS process.

    The ROS wheels re-execute the interpreter with their library path and mark it with
    ``_ROS_WHEELS_BOOTSTRAP_COMPLETE``; a child inheriting that mark without the path cannot
    import rclpy, so the mark is dropped and the child bootstraps itself.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("_ROS_WHEELS")}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(ros_domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env
