"""Fixtures of the replay tests: synthetic rosbag2 bags written with rosbags' Writer in tmp_path, and
the session's real monitor (checkpoint + artefact) when the top-level ``monitor_files`` fixture exists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rosbags", reason="replay needs rosbags (pip install lsea-monitor[replay])")

from lsea_replay_testutil import BagSpec, FakeScorer, write_bag  # noqa: E402


@pytest.fixture
def make_bag(tmp_path: Path) -> Callable[..., BagSpec]:
    """Factory: ``make_bag(name, storage=..., kind=..., n=..., gt=...)`` -> :class:`BagSpec` in tmp_path."""

    def make(name: str = "bag", **kwargs: Any) -> BagSpec:
        return write_bag(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def fake_scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture(scope="session")
def replay_monitor(request: pytest.FixtureRequest) -> Any:
    """The session's real tiny monitor (``monitor_files`` of tests/conftest.py); skipped while it does not exist."""
    try:
        return request.getfixturevalue("monitor_files")
    except pytest.FixtureLookupError:
        pytest.skip("the monitor_files fixture (a trained checkpoint + calibrated artefact) is not available")


@pytest.fixture(scope="session")
def demo_bags(replay_monitor, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny demo drives from the monitor's own dataset: 4 InD, then 2 OoD + 2 InD per anomaly kind (16 frames)."""
    from lsea_monitor.replay.demo_bag import DemoBagConfig, build_demo_bag

    root = tmp_path_factory.mktemp("demo_bags")
    out = {}
    for name, storage, compressed in (("mcap_raw", "mcap", "none"), ("sqlite3_png", "sqlite3", "png")):
        cfg = DemoBagConfig(ind_frames=4, ood_frames=2, gap_frames=2, compressed=compressed)
        summary = build_demo_bag(replay_monitor.data_root, root / name, storage=storage, cfg=cfg)
        assert summary["frames"] == 16 and len(summary["intervals"]) == 3
        out[name] = root / name
    return out
