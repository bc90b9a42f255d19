"""WoodScape datasets, split and data module on a tiny fixture in the official layout (with soiling)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError
from lsea_monitor.preprocessing import Preprocessing
from offline_calibration.anomalies import ANOMALY_KINDS
from offline_calibration.woodscape import (
    WOODSCAPE_CLASS_NAMES,
    WOODSCAPE_IMG_SIZE,
    WOODSCAPE_MEAN,
    WOODSCAPE_STD,
    WoodScapeDataModule,
    WoodScapeDataset,
    WoodScapeSoilingDataset,
    woodscape_split,
)

H, W = 24, 32
N = 20


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_woodscape(root: Path, n: int = N, n_soiling: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cams = ("FV", "RV", "MVL", "MVR")
    for i in range(n):
        name = f"{i:05d}_{cams[i % 4]}.png"
        _write(root / "rgb_images" / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        labels = (np.arange(W)[None] + i).repeat(H, 0) % 10
        _write(root / "semantic_annotations" / "gtLabels" / name, labels.astype(np.uint8))
        _write(root / "semantic_annotations" / "rgbLabels" / name, np.zeros((H, W, 3), np.uint8))
    for split in ("train", "test"):
        for i in range(n_soiling):
            name = f"{i:04d}_{cams[i % 4]}.png"
            base = root / "soiling_dataset" / split
            _write(base / "rgbImages" / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
            _write(base / "gtLabels" / name, (np.arange(W)[None].repeat(H, 0) % 4).astype(np.uint8))
            _write(base / "rgbLabels" / name, np.zeros((H, W, 3), np.uint8))
    return root


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    return make_woodscape(tmp_path / "woodscape")


def small() -> Preprocessing:
    return Preprocessing(H, W, WOODSCAPE_MEAN, WOODSCAPE_STD)


def original_split(n: int, seed: int, valid_size: float = 0.2, test_size: float = 0.1) -> dict[str, set[int]]:
    """The original package's code path (module-level random, floor of fractions)."""
    indices = list(range(n))
    random.seed(seed)
    random.shuffle(indices)
    split = int(np.floor(test_size * n))
    train_ss, test = indices[split:], indices[:split]
    split_train = int(np.floor(valid_size * len(train_ss)))
    return {"train": set(train_ss[split_train:]), "val": set(train_ss[:split_train]), "test": set(test)}


@pytest.mark.parametrize(("n", "seed"), [(20, 10), (20, 0), (8234, 10), (7, 3)])
def test_split_matches_the_original_and_is_disjoint(n: int, seed: int) -> None:
    state = random.getstate()
    got = woodscape_split(n, seed)
    assert random.getstate() == state  # the global generator is left alone
    expected = original_split(n, seed)
    assert {k: set(v) for k, v in got.items()} == expected
    assert sorted(got["train"] + got["val"] + got["test"]) == list(range(n))
    assert len(got["test"]) == int(np.floor(0.1 * n))
    assert got == woodscape_split(n, seed)


def test_split_argument_errors() -> None:
    with pytest.raises(InputValidationError, match="valid_size"):
        woodscape_split(10, valid_size=1.5)
    with pytest.raises(InputValidationError, match="seed"):
        woodscape_split(10, seed=-1)


def test_dataset_items(ws_root: Path) -> None:
    ds = WoodScapeDataset(ws_root, "train", small())
    assert len(ds) == 15  # 20 - 2 test - 3 val
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["label"].shape == (H, W) and item["label"].dtype == torch.int64
    assert 0 <= int(item["label"].min()) and int(item["label"].max()) <= 9
    name = Path(item["path"]).name
    raw = cv2.imread(str(ws_root / "semantic_annotations/gtLabels" / name), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(item["label"].numpy(), raw)  # paired by name, values kept
    assert len(WOODSCAPE_CLASS_NAMES) == 10


def test_defaults() -> None:
    assert WOODSCAPE_IMG_SIZE == (483, 640)
    dm = WoodScapeDataModule("/nonexistent")  # config only: no I/O in __init__
    assert dm.img_size == (483, 640) and dm.mean == WOODSCAPE_MEAN and dm.std == WOODSCAPE_STD and dm.seed == 10


def test_data_module_splits_are_deterministic_and_disjoint(ws_root: Path) -> None:
    def paths(dm: WoodScapeDataModule) -> dict[str, list[str]]:
        dm.setup(None)
        return {s: [sample.image.name for sample in getattr(dm, f"{s}_set").samples] for s in ("train", "val", "test")}

    a = paths(WoodScapeDataModule(ws_root, img_size=(H, W)))
    b = paths(WoodScapeDataModule(ws_root, img_size=(H, W)))
    c = paths(WoodScapeDataModule(ws_root, img_size=(H, W), seed=11))
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "val", "test")] == [15, 3, 2]
    assert not (set(a["train"]) & set(a["val"]) or set(a["train"]) & set(a["test"]) or set(a["val"]) & set(a["test"]))
    ds = WoodScapeDataset(ws_root, "val", small())
    assert [Path(s.image).name for s in ds.samples] == a["val"]


def test_loaders_and_anomalies(ws_root: Path) -> None:
    dm = WoodScapeDataModule(ws_root, batch_size=2, img_size=(H, W))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    clean = list(dm.val_dataloader())
    anomalous = list(dm.anomaly_val_dataloader())
    for c, a in zip(clean, anomalous):
        assert c["path"] == a["path"] and not torch.equal(c["image"], a["image"])
        assert all(k in ANOMALY_KINDS for k in a["anomaly"])
    assert [a["path"] for a in anomalous] == [a["path"] for a in dm.anomaly_val_dataloader()]
    fog = dm.anomaly_dataset_for("test", "fog")
    assert fog.anomaly.alpha_coef == 0.6  # WoodScape parameters
    flare = dm.anomaly_dataset_for("test", "sunflare")
    assert flare.anomaly.flare_roi == (0.2, 0.2, 0.8, 0.8)
    test_clean = list(dm.test_dataloader())
    test_anom = list(dm.anomaly_test_dataloader())
    assert len(test_anom) == len(test_clean) == 1
    assert not torch.equal(test_clean[0]["image"], test_anom[0]["image"])


def test_soiling_loader(ws_root: Path) -> None:
    dm = WoodScapeDataModule(ws_root, batch_size=3, img_size=(H, W))
    batch = next(iter(dm.soiling_dataloader("test")))
    assert batch["image"].shape == (3, 3, H, W) and "label" not in batch
    assert all("soiling_dataset/test/rgbImages" in p for p in batch["path"])
    labelled = WoodScapeSoilingDataset(ws_root, "train", small(), return_labels=True)
    assert int(labelled[0]["label"].max()) == 3
    direct = WoodScapeSoilingDataset(ws_root / "soiling_dataset", "test", small())  # the soiling folder itself
    assert len(direct) == 3
    with pytest.raises(InputValidationError, match="Unknown soiling split"):
        WoodScapeSoilingDataset(ws_root, "val")


def test_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"(?s)rgb_images does not exist.*Expected layout.*images/"):
        WoodScapeDataset(tmp_path, "train")
    (tmp_path / "rgb_images").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"(?s)No \*\.png images.*\(empty\)"):
        WoodScapeDataset(tmp_path, "train")
    _write(tmp_path / "rgb_images" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match="gtLabels does not exist"):
        WoodScapeDataset(tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match="soiling split 'test' not found"):
        WoodScapeSoilingDataset(tmp_path, "test")


def test_non_png_images_are_errors_not_skipped(ws_root: Path) -> None:
    (ws_root / "rgb_images" / "00042_FV.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DatasetLayoutError, match=r"(?s)rgb_images holds 1 entries that are not PNG.*00042_FV\.jpg"):
        WoodScapeDataset(ws_root, "train")


def test_empty_split(tmp_path: Path) -> None:
    root = make_woodscape(tmp_path / "ws", n=5, n_soiling=0)
    with pytest.raises(DatasetLayoutError, match=r"split 'test' is empty: 5 images"):
        WoodScapeDataset(root, "test")
    assert len(WoodScapeDataset(root, "train", small())) == 4


def test_mismatched_images_and_labels(ws_root: Path) -> None:
    (ws_root / "semantic_annotations/gtLabels/00003_MVR.png").rename(ws_root / "semantic_annotations/gtLabels/x.png")
    with pytest.raises(DatasetLayoutError, match=r"20 images but 20 label files.*00003_MVR.*x\.png"):
        WoodScapeDataset(ws_root, "train")


def test_corrupt_image_and_colour_label(ws_root: Path) -> None:
    ds = WoodScapeDataset(ws_root, "train", small())
    bad = Path(ds.samples[2].image)
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError, match=bad.name):
        ds[2]
    label = ws_root / "semantic_annotations/gtLabels" / Path(ds.samples[3].image).name
    _write(label, np.full((H, W), 12, np.uint8))
    with pytest.raises(ImageDecodeError, match=r"values \[12\] outside the 10 WoodScape classes"):
        ds[3]
