"""Synthetic Cityscapes-layout generator: pixel-exact labels, determinism, layout, idempotence, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label

from lsea_monitor.errors import DatasetLayoutError, InputValidationError
from offline_calibration.cityscapes import CityscapesDataModule
from offline_calibration.synthetic import (
    MARKER_NAME,
    SKY,
    SYNTHETIC_LABEL_IDS,
    generate_dataset,
    image_seed,
    main,
    render_scene,
    stem_for,
)

H, W = 64, 128  # small but large enough for every element


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(seed, H, W) for seed in range(12)]


def test_scene_arrays(scenes) -> None:
    for s in scenes:
        assert s.rgb.shape == (H, W, 3) and s.rgb.dtype == np.uint8
        assert s.label_ids.shape == (H, W) and s.label_ids.dtype == np.uint8
        assert set(np.unique(s.label_ids).tolist()) <= SYNTHETIC_LABEL_IDS


def test_labels_are_exactly_the_rasterised_shapes(scenes) -> None:
    """The label map is the painter's rasterisation (fillPoly, LINE_8) of the listed polygons: no
    anti-aliasing, blur or resampling ever touches labels."""
    for s in scenes:
        assert s.shapes[0].label_id == SKY
        redrawn = np.zeros((H, W), np.uint8)
        for shape in s.shapes:
            cv2.fillPoly(redrawn, [shape.polygon], shape.label_id, cv2.LINE_8)
        assert np.array_equal(redrawn, s.label_ids)


def test_every_pixel_of_a_topmost_region_has_its_label(scenes) -> None:
    """Each labelled polygon's raster, minus what later polygons cover, carries exactly its label."""
    checked = 0
    for s in scenes:
        later = np.zeros((H, W), bool)
        for shape in reversed(s.shapes[1:]):
            mask = np.zeros((H, W), np.uint8)
            cv2.fillPoly(mask, [shape.polygon], 1, cv2.LINE_8)
            visible = mask.astype(bool) & ~later
            if visible.any():
                assert np.all(s.label_ids[visible] == shape.label_id)
                checked += 1
            later |= mask.astype(bool)
    assert checked > 100


def test_scenes_are_deterministic_and_varied(scenes) -> None:
    again = render_scene(3, H, W)
    assert np.array_equal(again.rgb, scenes[3].rgb) and np.array_equal(again.label_ids, scenes[3].label_ids)
    assert not np.array_equal(scenes[0].rgb, scenes[1].rgb)
    classes = set().union(*(np.unique(s.label_ids).tolist() for s in scenes))
    assert len(classes) >= 12, sorted(classes)
    assert np.mean([len(np.unique(s.label_ids)) for s in scenes]) >= 7
    # Horizon (the road's vanishing point: its top row) and brightness vary between scenes.
    road = id2label[7].id
    horizons = {int(np.argmax((s.label_ids == road).any(1))) for s in scenes}
    assert len(horizons) > 3, horizons
    assert np.ptp([s.rgb.mean() for s in scenes]) > 15


def test_render_rejects_tiny_images() -> None:
    with pytest.raises(InputValidationError, match="at least 32 x 64"):
        render_scene(0, 16, 32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generate_writes_the_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    summary = generate_dataset(root, 2, 1, 1, height=H, width=W, seed=7, progress=False)
    assert not summary.skipped and summary.counts == {"train": 2, "val": 1, "test": 1}
    assert summary.ms_per_image > 0 and summary.label_pixel_fraction
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            city, stem = stem_for(split, i)
            assert stem.startswith(city + "_") and stem.endswith("_000019") and len(stem.split("_")) == 3
            img = cv2.imread(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
            ids = cv2.imread(str(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
            color = cv2.imread(str(root / "gtFine" / split / city / f"{stem}_gtFine_color.png"))
            scene = render_scene(image_seed(7, split, i), H, W)
            assert np.array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), scene.rgb)  # lossless PNG
            assert ids.dtype == np.uint8 and np.array_equal(ids, scene.label_ids)
            expected_color = np.array([id2label[int(v)].color for v in ids.ravel()], np.uint8).reshape(H, W, 3)
            assert np.array_equal(cv2.cvtColor(color, cv2.COLOR_BGR2RGB), expected_color)
    # The same Cityscapes loader reads it.
    dm = CityscapesDataModule(root, batch_size=2, img_size=(H, W), train_augment=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert int(batch["label"].max()) <= 19 and len(batch["label"].unique()) > 3
    assert dm.has_labels("test")  # synthetic test labels are real


def test_image_i_does_not_depend_on_split_sizes_or_workers(tmp_path: Path) -> None:
    small = tmp_path / "small"
    generate_dataset(small, 2, 0, 0, height=H, width=W, seed=1, progress=False, color=False)
    big = tmp_path / "big"
    generate_dataset(big, 3, 1, 0, height=H, width=W, seed=1, progress=False, color=False, workers=2)
    files_small, files_big = _files(small), _files(big)
    assert set(files_small) < set(files_big)
    assert all(files_big[k] == v for k, v in files_small.items())
    assert not any(k.endswith("_color.png") for k in files_small)


def test_dead_worker_processes_raise_instead_of_hanging(tmp_path: Path) -> None:
    # Spawned workers re-import __main__, which fails for a script read from stdin: the pool must
    # report that (multiprocessing.Pool replaced each dead worker with another, forever).
    code = (f"from offline_calibration.synthetic import generate_dataset\n"
            f"generate_dataset({str(tmp_path / 'cs')!r}, 4, 0, 0, height={H}, width={W}, workers=2, progress=False)\n")
    proc = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "worker process died" in proc.stderr and "workers=1" in proc.stderr


def test_rerun_is_idempotent_and_config_changes_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    generate_dataset(root, 1, 1, 0, height=H, width=W, progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    again = generate_dataset(root, 1, 1, 0, height=H, width=W, progress=False)
    assert again.skipped
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["config"]["counts"] == {"train": 1, "val": 1, "test": 0}
    with pytest.raises(DatasetLayoutError, match="another configuration"):
        generate_dataset(root, 2, 1, 0, height=H, width=W, progress=False)


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetLayoutError, match=r"not empty.*mine\.txt"):
        generate_dataset(tmp_path, 1, 0, 0, height=H, width=W, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_an_interrupted_run_resumes(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    generate_dataset(root, 1, 0, 0, height=H, width=W, progress=False)
    marker = root / MARKER_NAME
    (root / ".lsea_synthetic.partial.json").write_text(json.dumps({"config": json.loads(marker.read_text())["config"]}))
    marker.unlink()  # as if killed before the end
    assert not generate_dataset(root, 1, 0, 0, height=H, width=W, progress=False).skipped
    assert marker.is_file() and not (root / ".lsea_synthetic.partial.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": -1, "n_val": 0, "n_test": 0}, "n_train must be a non-negative integer"),
        ({"n_train": 0, "n_val": 0, "n_test": 0}, "Nothing to generate"),
        ({"n_train": 1, "n_val": 0, "n_test": 0, "height": 8}, "at least 32 x 64"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        generate_dataset(tmp_path / "x", progress=False, **kwargs)


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--n-train", "1", "--n-val", "1", "--n-test", "0", "--height", "32", "--width", "64",
            "--quiet", "--no-color"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": 1, "val": 1, "test": 0} and not summary["skipped"]
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["skipped"]
    assert main([*args[:3], "2", *args[4:]]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "offline_calibration.synthetic", "--out", str(out), "--n-train", "1",
                           "--n-val", "0", "--n-test", "1", "--height", "32", "--width", "64", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["test"] == 1
    assert len(list((out / "leftImg8bit" / "test").rglob("*_leftImg8bit.png"))) == 1
