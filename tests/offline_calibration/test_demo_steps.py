"""The demo's cached steps: a dataset of another configuration is regenerated (it is the demo's own
output), and the training's, the calibration's and the demo bag's stamps name the data they depend
on, so a regenerated dataset is trained on (unless only the test split changed), calibrated and
replayed again; a folder that is not the generator's output is never deleted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lsea_monitor.errors import DatasetLayoutError
from offline_calibration import demo
from offline_calibration.synthetic import MARKER_NAME

TINY = dataclasses.replace(demo.QUICK, n_train=2, n_val=2, n_test=1, height=64, width=128)


def _val_images(data: Path) -> int:
    return len(list((data / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")))


def test_a_dataset_of_another_configuration_is_regenerated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    demo.generate(tmp_path, TINY)
    assert _val_images(tmp_path / "data") == 2
    demo.generate(tmp_path, TINY)
    assert "[demo] generate data: cached" in capsys.readouterr().out

    bigger = dataclasses.replace(TINY, n_val=5)
    demo.generate(tmp_path, bigger)
    out = capsys.readouterr().out
    assert "written with another configuration, regenerating" in out and "generate data: done" in out
    assert _val_images(tmp_path / "data") == 5
    stamp = json.loads((tmp_path / "data" / "demo_stamp.json").read_text())
    assert stamp["config"]["n_val"] == 5


def test_a_folder_that_is_not_the_generators_output_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "my_images.txt").write_text("not the demo's")
    # a stamp of another configuration, but no generator marker: not the demo's output
    (data / "demo_stamp.json").write_text(json.dumps({"config": {"n_val": 1}, "result": {}}))
    with pytest.raises(DatasetLayoutError, match="folder is not empty"):
        demo.generate(tmp_path, TINY)
    assert (data / "my_images.txt").read_text() == "not the demo's"
    assert not (data / MARKER_NAME).exists()


def test_the_calibration_stamp_names_the_data(tmp_path: Path) -> None:
    calibration = {"dataset": {"root": "data"}, "sampling": {"mc_samples": 10}}
    stamp = tmp_path / "demo_stamp.json"
    demo._write_stamp(stamp, demo.calibration_stamp_config(calibration, "ab" * 32, TINY), {})
    assert demo._stamp_ok(stamp, demo.calibration_stamp_config(calibration, "ab" * 32, TINY))
    # same calibration settings and checkpoint, more validation images: not the same result
    more_val = dataclasses.replace(TINY, n_val=TINY.n_val + 1)
    assert not demo._stamp_ok(stamp, demo.calibration_stamp_config(calibration, "ab" * 32, more_val))
    assert not demo._stamp_ok(stamp, demo.calibration_stamp_config(calibration, "cd" * 32, TINY))


def test_the_demo_bag_stamp_names_the_test_split(tmp_path: Path) -> None:
    stamp = tmp_path / "demo_bag_stamp.json"
    demo._write_stamp(stamp, demo.demo_bag_stamp_config(TINY), {})
    assert demo._stamp_ok(stamp, demo.demo_bag_stamp_config(TINY))
    # the bag cycles through the test images: more of them make another drive
    assert not demo._stamp_ok(stamp, demo.demo_bag_stamp_config(dataclasses.replace(TINY, n_test=TINY.n_test + 1)))


@pytest.mark.slow  # trains twice (a tiny model, about 15 s)
def test_a_model_trained_on_other_data_is_retrained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = dataclasses.replace(TINY, train_height=64, train_width=128, batch_size=2)
    demo.generate(tmp_path, tiny)
    first = demo.train_model(tmp_path, tiny)
    demo.train_model(tmp_path, tiny)
    assert "[demo] train model: cached" in capsys.readouterr().out

    more_train = dataclasses.replace(tiny, n_train=tiny.n_train + 2)
    demo.generate(tmp_path, more_train)
    second = demo.train_model(tmp_path, more_train)
    out = capsys.readouterr().out
    assert "train model: cached" not in out and "train model: done" in out
    assert json.loads((tmp_path / "model" / "demo_stamp.json").read_text())["config"]["data"]["n_train"] == 4
    assert Path(second["best_checkpoint"]).is_file() and first["best_checkpoint"] == second["best_checkpoint"]

    # The test split's size is not something the model depends on: no retraining for it.
    more_test = dataclasses.replace(more_train, n_test=more_train.n_test + 1)
    demo.generate(tmp_path, more_test)
    demo.train_model(tmp_path, more_test)
    assert "[demo] train model: cached" in capsys.readouterr().out
