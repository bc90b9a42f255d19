"""Fixtures of the reliability tests (fuzzing, soak, faults, calibration, artefact safety).

Builds on ``ros_env``, ``ros_domain_id`` and ``monitor_files`` from tests/conftest.py and on the
probe and command line of tests/ros/lsea_ros_testutil.py (imported, not copied). Every child process
is started with PR_SET_PDEATHSIG (it dies with pytest) and stopped in ``finally``.

The long variants are off by default: ``LSEA_SOAK_S=600`` runs the 10-minute soak,
``LSEA_FUZZ_EXAMPLES=2000`` a longer fuzz.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent / "ros"):  # this folder's helpers, and lsea_ros_testutil
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from lsea_rel_util import child_env  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running soak test (enable with LSEA_SOAK_S=<seconds>)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``soak`` tests unless LSEA_SOAK_S is set (a positive number of seconds)."""
    try:
        enabled = float(os.environ.get("LSEA_SOAK_S", "0") or 0) > 0
    except ValueError:
        enabled = False
    if enabled:
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture
def rel_env(ros_env: dict[str, str]) -> dict[str, str]:
    """``ros_env`` (LOCALHOST discovery, this test's DDS domain) plus this folder on PYTHONPATH."""
    return child_env(ros_env)


@pytest.fixture
def process_env(rel_env: dict[str, str]) -> dict[str, str]:
    """``start_process`` (tests/conftest.py) starts this folder's children with ``rel_env``."""
    return rel_env


@pytest.fixture
def make_probe(ros_domain_id: int) -> Iterator[Callable[[], Any]]:
    """In-test rclpy probes (verdicts, flags, /diagnostics) on the test's domain, each in its own namespace."""
    pytest.importorskip("rclpy", reason="ROS 2 Python wheels (ros-rclpy) not installed")
    from lsea_ros_testutil import Probe

    probes: list[Any] = []

    def make() -> Any:
        p = Probe(domain_id=ros_domain_id, namespace=f"r{uuid.uuid4().hex[:10]}")
        probes.append(p)
        return p

    try:
        yield make
    finally:
        for p in probes:
            try:
                p.close()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture(scope="session")
def rel_artefacts(monitor_files: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Artefacts for the node tests, from the session monitor's:

    ``accept_all``: threshold +1e30, so every valid frame is in distribution and the flag is driven
    only by ERROR verdicts (stale, rejected, model faults) and clears after ``clear_after`` frames;
    ``faulty``: the same, bound to the test-only class ``lsea_rel_faulty_model:FaultyDeepLab``.
    """
    from dataclasses import replace

    from lsea_monitor.artefact import DetectorArtefact
    from lsea_rel_faulty_model import MODEL_CLASS

    out = tmp_path_factory.mktemp("rel_artefacts")
    art = DetectorArtefact.load(monitor_files.artefact).with_threshold(1e30)
    return {"accept_all": art.save(out / "accept_all.safetensors"),
            "faulty": replace(art, binding=replace(art.binding, model_class=MODEL_CLASS)).save(
                out / "faulty.safetensors")}


@pytest.fixture(scope="session")
def camera_images(monitor_files: Any) -> list[str]:
    """A few in-distribution test images of the session monitor's synthetic dataset (PNG paths)."""
    paths = sorted(str(p) for p in (Path(monitor_files.data_root) / "leftImg8bit" / "test").glob("*/*.png"))[:4]
    assert paths, f"no test images under {monitor_files.data_root}"
    return paths
