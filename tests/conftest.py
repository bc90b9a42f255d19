"""Shared test fixtures. Every ROS process a test starts stays on this machine (LOCALHOST
discovery) and on a DDS domain of its own, so parallel runs never see each other."""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

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


@pytest.fixture
def process_env(ros_env: dict[str, str]) -> dict[str, str]:
    """The environment ``start_process`` gives its children (a folder's conftest may override it)."""
    return ros_env


@pytest.fixture
def start_process(process_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start child processes (tests/ros/lsea_ros_testutil.NodeProcess: output in a log file under
    ``tmp_path``, PR_SET_PDEATHSIG); each is stopped at teardown (SIGINT, then SIGKILL of its group)."""
    ros_tests = str(Path(__file__).resolve().parent / "ros")
    if ros_tests not in sys.path:
        sys.path.insert(0, ros_tests)
    from lsea_ros_testutil import NodeProcess

    started: list[NodeProcess] = []

    def start(cmd: list[str], name: str = "node", env: dict[str, str] | None = None) -> NodeProcess:
        proc = NodeProcess(cmd, env or process_env, tmp_path / f"{name}-{len(started)}.log")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        errors = []
        for proc in reversed(started):
            try:
                proc.stop(signal.SIGINT)
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


# --- a real, small monitor: trained checkpoint + calibrated artefact --------------------------
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class MonitorFiles:
    """A real Lightning checkpoint and the artefact lsea-calibrate fitted for it, on tiny data."""

    checkpoint: Path
    artefact: Path
    model_class: str
    layer: str
    data_root: Path  #: the synthetic Cityscapes-layout dataset (val/test images for InD frames)
    report: Path  #: calibration report.json
    height: int
    width: int
    mc_samples: int


TINY_SIZE = (128, 256)


def build_monitor_files(root: Path) -> MonitorFiles:
    """Generate data, train a few steps, calibrate: the whole offline chain at toy scale (~1 min)."""
    import yaml

    from offline_calibration.calibrate import run_calibration
    from offline_calibration.config import load_config
    from offline_calibration.model import HOOKED_LAYER, MODEL_CLASS
    from offline_calibration.synthetic import generate_dataset
    from offline_calibration.train import TrainConfig, train

    h, w = TINY_SIZE
    data = root / "data"
    generate_dataset(data, n_train=8, n_val=24, n_test=12, height=h, width=w, seed=0, progress=False)
    # block_size 3: the deepest feature map is only 8 x 16 cells at this size.
    trained = train(TrainConfig(data_dir=str(data), out_dir=str(root / "model"), epochs=1, batch_size=4,
                                img_size=(h, w), train_size=(h, w), block_size=3, seed=0), progress=False)
    cfg = {"output_dir": "calibration", "dataset": {"root": "data", "img_size": [h, w]},
           "model": {"checkpoint": trained["best_checkpoint"], "model_class": MODEL_CLASS, "layer": HOOKED_LAYER},
           "sampling": {"mc_samples": 8, "batch_size": 8},
           "detection": {"pca_components": 8, "threshold_folds": 3},
           "baselines": {"enabled": True, "mc_samples": 2, "max_images": 6},
           "report": {"pacmap": False}}
    (root / "calibration.yaml").write_text(yaml.safe_dump(cfg))
    report = run_calibration(load_config(root / "calibration.yaml"), progress=False, log=lambda *_: None)
    return MonitorFiles(checkpoint=Path(trained["best_checkpoint"]), artefact=Path(report["deployed"]["artefact"]),
                        model_class=MODEL_CLASS, layer=HOOKED_LAYER, data_root=data,
                        report=root / "calibration" / "report.json", height=h, width=w, mc_samples=8)


@pytest.fixture(scope="session")
def monitor_files(tmp_path_factory: pytest.TempPathFactory) -> MonitorFiles:
    """Session-wide tiny monitor (built once per test session)."""
    return build_monitor_files(tmp_path_factory.mktemp("monitor"))
