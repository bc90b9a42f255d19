"""``lsea-train``'s command line: its options reach TrainConfig, bad values are usage errors.

Training itself runs for real in the session's ``monitor_files`` (tests/conftest.py) and in the demo test."""

from __future__ import annotations

from typing import Any

import pytest

from offline_calibration import train as train_module


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    configs: list[Any] = []

    def fake_train(cfg: Any, *, progress: bool = True) -> dict[str, Any]:
        configs.append(cfg)
        return {"val_miou": 0.5, "train_seconds": 1.0, "best_checkpoint": "best.ckpt"}

    monkeypatch.setattr(train_module, "train", fake_train)
    return configs


def test_val_every_reaches_the_trainer_config(captured: list[Any]) -> None:
    assert train_module.main(["--data-dir", "d", "--out-dir", "o", "--epochs", "4", "--val-every", "2"]) == 0
    assert captured[0].val_every == 2 and captured[0].epochs == 4
    assert train_module.main(["--data-dir", "d", "--out-dir", "o"]) == 0
    assert captured[1].val_every == 0  # the default: validate after the last epoch only


def test_negative_val_every_is_a_usage_error(captured: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        train_module.main(["--data-dir", "d", "--out-dir", "o", "--val-every", "-1"])
    assert info.value.code == 2 and "--val-every must be >= 0" in capsys.readouterr().err
    assert captured == []
