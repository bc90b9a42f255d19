"""WoodScape datasets (semantic segmentation and soiling) and the Lightning data module.

Layout read (the official WoodScape release)::

    root/rgb_images/<name>.png
    root/semantic_annotations/gtLabels/<name>.png        class indices 0..9
    root/semantic_annotations/rgbLabels/<name>.png       (colour preview, not used)
    root/soiling_dataset/{train,test}/{rgbImages,gtLabels,rgbLabels}/<name>.png

Images and labels are paired by file name (the original paired two sorted lists by position,
which silently misaligns when one file is missing; here a mismatch is an error). The 10 classes:
void, road, lanemarks, curb, person, rider, vehicles, bicycle, motorcycle, traffic_sign. The split
is the original's seeded shuffle: test 10 %, validation 20 % of the rest, train the remainder.

Normalisation: WoodScape's statistics are not stated in the method notes. The defaults below are
the per-channel mean and std hard-coded in the original package's ``dataset_utils/woodscape.py``
(``WoodScapeDataModule``); :func:`offline_calibration.cityscapes.compute_rgb_stats` recomputes
them from your copy if preferred.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import DataLoader

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError
from lsea_monitor.preprocessing import Preprocessing
from offline_calibration.anomalies import Anomaly
from offline_calibration.cityscapes import (
    Sample,
    SegmentationDataModule,
    SegmentationDataset,
    list_pngs,
    layout_error,
    match_labels,
)

WOODSCAPE_CLASS_NAMES: tuple[str, ...] = (
    "void", "road", "lanemarks", "curb", "person", "rider", "vehicles", "bicycle", "motorcycle", "traffic_sign",
)
WOODSCAPE_NUM_CLASSES = 10
#: RGB colours of ``rgbLabels`` (from the original), by class index.
WOODSCAPE_CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (255, 0, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255), (0, 255, 255), (255, 255, 0),
    (255, 128, 128), (128, 128, 0),
)
SOILING_CLASS_NAMES: tuple[str, ...] = ("clear", "transparent", "semi_transparent", "opaque")
#: Mean and std of WoodScape RGB on [0, 1], as used by the original package.
WOODSCAPE_MEAN = (0.32757252, 0.33050337, 0.33689716)
WOODSCAPE_STD = (0.20290555, 0.20525302, 0.2037721)
#: Network size of the method notes' WoodScape results (height, width).
WOODSCAPE_IMG_SIZE = (483, 640)
WOODSCAPE_SPLITS: tuple[str, ...] = ("train", "val", "test")
SOILING_SPLITS: tuple[str, ...] = ("train", "test")

WOODSCAPE_LAYOUT = (
    "  <root>/rgb_images/<name>.png\n"
    "  <root>/semantic_annotations/gtLabels/<name>.png   (class indices 0..9, same names)\n"
    "  <root>/soiling_dataset/{train,test}/{rgbImages,gtLabels,rgbLabels}/<name>.png   (optional, OoD set)"
)
SOILING_LAYOUT = (
    "  <soiling root>/{train,test}/rgbImages/<name>.png\n"
    "  <soiling root>/{train,test}/gtLabels/<name>.png    (soiling classes 0..3, same names)\n"
    "  <soiling root>/{train,test}/rgbLabels/<name>.png   (colour preview, not used)\n"
    "(<soiling root> defaults to <root>/soiling_dataset)"
)


class ClassIndexCheck:
    """Label map for files that already hold class indices: checks the range, returns them as is.

    A class (not a closure) so that datasets pickle into spawned DataLoader workers.
    """

    def __init__(self, num_classes: int, what: str) -> None:
        self.num_classes = num_classes
        self.what = what

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        n = self.num_classes
        if raw.size and int(raw.max()) >= n:
            bad = np.unique(raw[raw >= n])[:5].tolist()
            raise ImageDecodeError(
                f"Label image {path} holds values {bad} outside the {n} {self.what} classes 0..{n - 1} "
                "(a colour label from rgbLabels/ given instead of gtLabels/?)."
            )
        return raw


woodscape_label_map = ClassIndexCheck(WOODSCAPE_NUM_CLASSES, "WoodScape")
soiling_label_map = ClassIndexCheck(len(SOILING_CLASS_NAMES), "soiling")


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise InputValidationError(f"{name} must be a fraction in [0, 1), got {value!r}.")
    return float(value)


def woodscape_split(n: int, seed: int = 10, valid_size: float = 0.2, test_size: float = 0.1) -> dict[str, list[int]]:
    """The original's split of ``n`` sorted images: seeded shuffle, test first, then validation.

    ``random.Random(seed).shuffle(range(n))``; test = the first ``floor(test_size * n)``; validation =
    the next ``floor(valid_size * rest)``; train = the remainder. Each list is returned sorted.

    Returns
    -------
    dict with keys "train", "val", "test": disjoint index lists covering ``range(n)``.
    """
    valid_size, test_size = _check_fraction("valid_size", valid_size), _check_fraction("test_size", test_size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputValidationError(f"seed must be a non-negative integer, got {seed!r}.")
    indices = list(range(n))
    random.Random(int(seed)).shuffle(indices)
    n_test = int(np.floor(test_size * n))
    test, rest = indices[:n_test], indices[n_test:]
    n_val = int(np.floor(valid_size * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def find_woodscape_samples(root: str | os.PathLike, with_labels: bool = True) -> list[Sample]:
    """All images of a WoodScape folder, sorted by name, paired with their ``gtLabels``.

    Raises
    ------
    DatasetLayoutError
        Missing folders, no images, or images and labels that do not pair up by name.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise layout_error(f"WoodScape root {root_p} is not a folder.", root_p, WOODSCAPE_LAYOUT)
    img_dir = root_p / "rgb_images"
    if not img_dir.is_dir():
        raise layout_error(f"WoodScape images not found: {img_dir} does not exist.", img_dir, WOODSCAPE_LAYOUT)
    images = list_pngs(img_dir, images=True, expected=WOODSCAPE_LAYOUT)
    if not images:
        raise layout_error(f"No *.png images in {img_dir}.", img_dir, WOODSCAPE_LAYOUT)
    if not with_labels:
        return [Sample(p, None) for p in images]
    gt_dir = root_p / "semantic_annotations" / "gtLabels"
    if not gt_dir.is_dir():
        raise layout_error(f"WoodScape labels not found: {gt_dir} does not exist "
                           "(pass return_labels=False to read images only).", gt_dir, WOODSCAPE_LAYOUT)
    return match_labels(images, list_pngs(gt_dir), lambda p: p.name, lambda p: p.name, f"WoodScape {root_p}",
                        WOODSCAPE_LAYOUT, gt_dir)


def soiling_root(root: str | os.PathLike, soiling_dir: str | os.PathLike | None = None) -> Path:
    """The soiling folder: ``soiling_dir``, else ``root`` itself when it holds ``train/rgbImages``,
    else ``root/soiling_dataset``."""
    if soiling_dir is not None:
        return Path(soiling_dir)
    root_p = Path(root)
    if (root_p / "train" / "rgbImages").is_dir() or (root_p / "test" / "rgbImages").is_dir():
        return root_p
    return root_p / "soiling_dataset"


def find_soiling_samples(root: str | os.PathLike, split: str, with_labels: bool = False,
                         soiling_dir: str | os.PathLike | None = None) -> list[Sample]:
    """One split ("train" or "test") of the WoodScape soiling set."""
    if split not in SOILING_SPLITS:
        raise InputValidationError(f"Unknown soiling split {split!r}; expected one of {SOILING_SPLITS}.")
    base = soiling_root(root, soiling_dir)
    img_dir = base / split / "rgbImages"
    if not img_dir.is_dir():
        raise layout_error(f"WoodScape soiling split {split!r} not found: {img_dir} does not exist.", img_dir,
                           SOILING_LAYOUT)
    images = list_pngs(img_dir, images=True, expected=SOILING_LAYOUT)
    if not images:
        raise layout_error(f"Soiling split {split!r} is empty: no *.png in {img_dir}.", img_dir, SOILING_LAYOUT)
    if not with_labels:
        return [Sample(p, None) for p in images]
    gt_dir = base / split / "gtLabels"
    if not gt_dir.is_dir():
        raise layout_error(f"Soiling labels not found: {gt_dir} does not exist.", gt_dir, SOILING_LAYOUT)
    return match_labels(images, list_pngs(gt_dir), lambda p: p.name, lambda p: p.name, f"Soiling split {split!r}",
                        SOILING_LAYOUT, gt_dir)


def _split_samples(samples: list[Sample], split: str, seed: int, valid_size: float, test_size: float,
                   root: Path) -> list[Sample]:
    if split not in WOODSCAPE_SPLITS:
        raise InputValidationError(f"Unknown WoodScape split {split!r}; expected one of {WOODSCAPE_SPLITS}.")
    idx = woodscape_split(len(samples), seed, valid_size, test_size)[split]
    if not idx:
        raise DatasetLayoutError(
            f"WoodScape split {split!r} is empty: {len(samples)} images in {root / 'rgb_images'} with "
            f"test_size={test_size}, valid_size={valid_size} leave none for it. Add images or change the fractions."
        )
    return [samples[i] for i in idx]


def _default_preprocessing() -> Preprocessing:
    return Preprocessing(WOODSCAPE_IMG_SIZE[0], WOODSCAPE_IMG_SIZE[1], WOODSCAPE_MEAN, WOODSCAPE_STD)


class WoodScapeDataset(SegmentationDataset):
    """One split ("train", "val", "test") of WoodScape semantic segmentation.

    Parameters
    ----------
    root : path
        Folder holding ``rgb_images/`` and ``semantic_annotations/``.
    split : {"train", "val", "test"}
        From :func:`woodscape_split` with ``seed``, ``valid_size``, ``test_size``.
    preprocessing : Preprocessing, optional
        Default: 483 x 640 with :data:`WOODSCAPE_MEAN` / :data:`WOODSCAPE_STD`.
    anomaly : None, "random", "mud", "fog", "sunflare" or an Anomaly
        Named anomalies use the WoodScape parameters (fog alpha 0.6, wide sun flare).
    anomaly_seed : int
    return_labels, augment : bool
    max_images : int, optional
    seed : int
        Split seed (the original's default, 10).
    valid_size, test_size : float

    Items: see :class:`~offline_calibration.cityscapes.SegmentationDataset`; ``label`` in 0..9.
    """

    def __init__(self, root: str | os.PathLike, split: str, preprocessing: Preprocessing | None = None, *,
                 anomaly: str | Anomaly | None = None, anomaly_seed: int = 0, return_labels: bool = True,
                 augment: bool = False, max_images: int | None = None, seed: int = 10, valid_size: float = 0.2,
                 test_size: float = 0.1) -> None:
        self.root = Path(root)
        samples = _split_samples(find_woodscape_samples(root, with_labels=return_labels), split, seed, valid_size,
                                 test_size, self.root)
        super().__init__(samples, preprocessing if preprocessing is not None else _default_preprocessing(),
                         label_map=woodscape_label_map, anomaly=anomaly, anomaly_seed=anomaly_seed,
                         anomaly_dataset="woodscape", split=split, return_labels=return_labels, augment=augment,
                         max_images=max_images)


class WoodScapeSoilingDataset(SegmentationDataset):
    """The WoodScape soiling set (real lens soiling), an out-of-distribution source.

    Parameters
    ----------
    root : path
        WoodScape root (soiling under ``root/soiling_dataset``) or the soiling folder itself.
    split : {"train", "test"}
    preprocessing : Preprocessing, optional
        Default as :class:`WoodScapeDataset`.
    return_labels : bool
        Soiling masks (0 clear, 1 transparent, 2 semi-transparent, 3 opaque); off by default.
    max_images : int, optional
    soiling_dir : path, optional
        Explicit soiling folder.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", preprocessing: Preprocessing | None = None, *,
                 return_labels: bool = False, max_images: int | None = None,
                 soiling_dir: str | os.PathLike | None = None) -> None:
        self.root = soiling_root(root, soiling_dir)
        samples = find_soiling_samples(root, split, with_labels=return_labels, soiling_dir=soiling_dir)
        super().__init__(samples, preprocessing if preprocessing is not None else _default_preprocessing(),
                         label_map=soiling_label_map, anomaly=None, split=f"soiling-{split}",
                         return_labels=return_labels, max_images=max_images)


class WoodScapeDataModule(SegmentationDataModule):
    """WoodScape for training and calibration, with the anomaly and soiling OoD sets.

    Parameters
    ----------
    data_dir : path
    batch_size : int
    img_size : (height, width)
        Default 483 x 640 (the method notes' WoodScape setting).
    num_workers : int
    mean, std : 3 floats
        Default: the original's WoodScape statistics.
    train_augment : bool
    seed : int
        Split seed and training shuffle seed (default 10, the original's).
    valid_size, test_size : float
    anomaly_seed : int, optional
        Default ``seed``.
    pin_memory, drop_last : bool
        ``drop_last`` applies to the training loader only.
    max_images : int, optional
    soiling_dir : path, optional
        Default ``data_dir/soiling_dataset``.
    """

    anomaly_dataset = "woodscape"

    def __init__(self, data_dir: str | os.PathLike, batch_size: int = 1,
                 img_size: tuple[int, int] = WOODSCAPE_IMG_SIZE, num_workers: int = 0,
                 mean: Sequence[float] = WOODSCAPE_MEAN, std: Sequence[float] = WOODSCAPE_STD,
                 train_augment: bool = True, seed: int = 10, valid_size: float = 0.2, test_size: float = 0.1,
                 anomaly_seed: int | None = None, pin_memory: bool = False, drop_last: bool = False,
                 max_images: int | None = None, soiling_dir: str | os.PathLike | None = None) -> None:
        super().__init__(data_dir, batch_size, img_size, num_workers, mean, std, train_augment, seed, anomaly_seed,
                         pin_memory, drop_last, max_images)
        self.valid_size = _check_fraction("valid_size", valid_size)
        self.test_size = _check_fraction("test_size", test_size)
        self.soiling_dir = None if soiling_dir is None else Path(soiling_dir)
        self._all: list[Sample] | None = None
        self.save_hyperparameters({"data_dir": str(self.data_dir), "batch_size": self.batch_size,
                                   "img_size": list(self.img_size), "mean": list(self.mean), "std": list(self.std),
                                   "train_augment": self.train_augment, "seed": self.seed,
                                   "valid_size": self.valid_size, "test_size": self.test_size,
                                   "anomaly_seed": self.anomaly_seed, "max_images": max_images,
                                   "soiling_dir": None if soiling_dir is None else str(soiling_dir)})

    def _samples_for(self, split: str) -> tuple[list[Sample], bool]:
        if self._all is None:
            self._all = find_woodscape_samples(self.data_dir, with_labels=True)
        return _split_samples(self._all, split, self.seed, self.valid_size, self.test_size, self.data_dir), True

    def _make_dataset(self, split: str, anomaly: str | None, augment: bool) -> SegmentationDataset:
        return SegmentationDataset(self._samples[split], self.preprocessing, label_map=woodscape_label_map,
                                   anomaly=anomaly, anomaly_seed=self.anomaly_seed,
                                   anomaly_dataset=self.anomaly_dataset, split=split,
                                   return_labels=self._labelled[split], augment=augment, max_images=self.max_images)

    def soiling_dataset(self, split: str = "test", return_labels: bool = False) -> WoodScapeSoilingDataset:
        """The soiling images of ``split`` with this module's preprocessing."""
        return WoodScapeSoilingDataset(self.data_dir, split, self.preprocessing, return_labels=return_labels,
                                       max_images=self.max_images, soiling_dir=self.soiling_dir)

    def soiling_dataloader(self, split: str = "test") -> DataLoader:
        """Loader of the real soiling images (OoD), in file order."""
        return self._loader(self.soiling_dataset(split), shuffle=False)

