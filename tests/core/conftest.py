"""Fixtures of the core tests that use the tiny trained monitor (``monitor_files``, tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def frames(monitor_files: Any) -> list[np.ndarray]:
    """InD test images and anomalies of them (what the monitor must tell apart): 2 InD, 2 fog, 2 mud."""
    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.cityscapes import CityscapesDataset

    pp = Preprocessing(monitor_files.height, monitor_files.width)
    out = []
    for anomaly in (None, "fog", "mud"):
        ds = CityscapesDataset(monitor_files.data_root, "test", pp, anomaly=anomaly, return_labels=False)
        out += [ds.rgb(i) for i in range(2)]
    return out
