"""Cityscapes datasets and the Lightning data module (also the base of the WoodScape ones).

Layout read (the official one, also written by :mod:`offline_calibration.synthetic`)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Images go through the ONE shared :class:`lsea_monitor.preprocessing.Preprocessing`: ``resize`` to
the network size, then (optionally) an anomaly on the resized ``uint8`` image, then ``normalize``.
Labels: Cityscapes ``id`` -> ``trainId`` through ``cityscapesscripts.helpers.labels``; every ignored
id (train id 255 or -1) becomes the extra class 19, as in the original; resized nearest-neighbour.

Nothing is ever skipped silently: an unreadable file raises :class:`ImageDecodeError` naming it, a
malformed folder raises :class:`DatasetLayoutError` showing the expected layout and what is there.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from cityscapesscripts.helpers.labels import labels as _CS_LABELS
from torch.utils.data import DataLoader, Dataset

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError
from lsea_monitor.preprocessing import CITYSCAPES_MEAN, CITYSCAPES_STD, Preprocessing
from offline_calibration.anomalies import ANOMALY_KINDS, Anomaly, index_seed, make_anomaly

log = logging.getLogger(__name__)

CITYSCAPES_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The 19 evaluated Cityscapes classes, by train id, plus the extra class for ignored pixels.
CITYSCAPES_CLASS_NAMES: tuple[str, ...] = tuple(
    lab.name for lab in sorted((lab for lab in _CS_LABELS if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
) + ("ignored",)
#: Train id given to every ignored Cityscapes id (trainId 255 or -1), as in the original.
IGNORE_TRAIN_ID = 19
NUM_CLASSES = 20
#: Highest Cityscapes label id; 255 is accepted as "unlabelled", anything else is an error.
MAX_LABEL_ID = 33


def _id_to_train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_TRAIN_ID, np.uint8)
    for lab in _CS_LABELS:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    return lut


#: Look-up table (256,) uint8: Cityscapes label id -> train id (ignored ids -> 19).
ID_TO_TRAIN_ID: np.ndarray = _id_to_train_id_lut()
ID_TO_TRAIN_ID.setflags(write=False)

CITYSCAPES_LAYOUT = (
    "  <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
    "  <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
    "(a synthetic dataset in this layout: python -m offline_calibration.synthetic --out DIR)"
)


# --- file reading -----------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # also handles non-ASCII paths, unlike cv2.imread
    except OSError as err:
        raise ImageDecodeError(f"Cannot read {what} {path}: {err}.") from err
    if data.size == 0:
        raise ImageDecodeError(f"Cannot decode {what} {path}: the file is empty (0 bytes). Re-copy the dataset.")
    return data


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Parameters
    ----------
    path : path-like
        PNG, JPEG or anything cv2 decodes; grey images are expanded to 3 channels, alpha is dropped.

    Returns
    -------
    ndarray of shape (H, W, 3), dtype uint8, RGB order.

    Raises
    ------
    ImageDecodeError
        The file is missing, empty or not a decodable image (the message names the file).
    """
    p = Path(path)
    data = _read_bytes(p, "image")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(
            f"Cannot decode image {p} ({data.size} bytes): not a valid image file (truncated or corrupt?). "
            "Re-copy or remove it; calibration does not skip images."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_palette_png(data: np.ndarray) -> bool:
    """True for a PNG whose IHDR colour type (byte 25) is 3, indexed colour."""
    return data.size > 25 and data[:8].tobytes() == _PNG_SIGNATURE and int(data[25]) == 3


def _palette_indices(data: np.ndarray, path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only palette labels need Pillow

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im.load()
            mode, indices = im.mode, np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"Cannot decode label image {path} ({data.size} bytes): {err}.") from err
    if mode != "P":
        raise ImageDecodeError(f"Label image {path} declares a palette but decodes as mode {mode!r}.")
    return indices


def load_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label image (class indices or label ids).

    Returns
    -------
    ndarray of shape (H, W), dtype uint8.

    Raises
    ------
    ImageDecodeError
        Missing, empty, undecodable, multi-channel (e.g. a ``*_color.png`` given by mistake) or
        with values above 255.

    Notes
    -----
    A palette ("P" mode) PNG gives its palette indices, not the palette's colours.
    """
    p = Path(path)
    data = _read_bytes(p, "label image")
    if _is_palette_png(data):
        # cv2 expands a palette PNG to the palette's colours; its class indices are the palette
        # indices, which Pillow returns as they are (as the original package read labels).
        return _palette_indices(data, p)
    lab = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ImageDecodeError(f"Cannot decode label image {p} ({data.size} bytes): corrupt or not an image.")
    if lab.ndim == 3:
        if lab.shape[2] >= 3 and np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 0], lab[..., 2]):
            lab = lab[..., 0]
        else:
            raise ImageDecodeError(
                f"Label image {p} has {lab.shape[2]} different channels; expected one channel of class indices "
                "(a colour-coded label such as *_gtFine_color.png or rgbLabels/ cannot be used)."
            )
    if lab.dtype != np.uint8:
        if np.issubdtype(lab.dtype, np.integer) and lab.size and int(lab.max()) <= 255:
            lab = lab.astype(np.uint8)
        else:
            raise ImageDecodeError(
                f"Label image {p} has dtype {lab.dtype} with values above 255; expected 8-bit class indices."
            )
    return lab


def compute_rgb_stats(paths: Iterable[str | os.PathLike], preprocessing: Preprocessing | None = None
                      ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of RGB values scaled to [0, 1], for ``Preprocessing(mean=, std=)``.

    Parameters
    ----------
    paths : iterable of image paths
    preprocessing : Preprocessing, optional
        When given, images are first resized with it (statistics at the network size).

    Returns
    -------
    (mean, std) : two tuples of 3 floats.
    """
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for path in paths:
        rgb = load_rgb(path)
        if preprocessing is not None:
            rgb = preprocessing.resize(rgb)
        x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        n += len(x)
    if n == 0:
        raise InputValidationError("compute_rgb_stats needs at least one image.")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]


def _listing(folder: Path, limit: int = 8) -> str:
    """What actually is at ``folder`` (or at its nearest existing parent), for error messages."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in probe.iterdir())
    more = f" ... ({len(entries)} entries)" if len(entries) > limit else ""
    shown = ", ".join(entries[:limit]) if entries else "(empty)"
    prefix = "" if probe == folder else f"{folder} does not exist; nearest existing folder "
    return f"{prefix}{probe} contains: {shown}{more}"


def layout_error(problem: str, folder: Path, expected: str) -> DatasetLayoutError:
    """A :class:`DatasetLayoutError` with the problem, the expected layout and what was found."""
    return DatasetLayoutError(f"{problem}\nExpected layout:\n{expected}\nFound: {_listing(folder)}")


#: Image files that are not PNG: an image folder holding one is an error, not a file to pass over.
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


def list_pngs(folder: Path, *, images: bool = False, expected: str = "") -> list[Path]:
    """The ``*.png`` files of ``folder`` (not recursive), sorted by name.

    ``images=True`` for a folder of input images: other image files (JPEG, ...) or sub-folders in it
    raise :class:`DatasetLayoutError` (with ``expected``, the layout), since calibration never skips
    data silently. Label folders hold other files by design (Cityscapes' polygon JSON).
    """
    entries = list(folder.iterdir())
    if images:
        strays = sorted(p.name + ("/" if p.is_dir() else "") for p in entries
                        if p.is_dir() or p.suffix.lower() in OTHER_IMAGE_SUFFIXES)
        if strays:
            raise layout_error(f"{folder} holds {len(strays)} entries that are not PNG images, e.g. {strays[:3]}: "
                               "the layout has PNG files only here. Convert them to PNG or move them out "
                               "(no image is skipped silently).", folder, expected)
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() == ".png")


# --- samples ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image and its label file (``None`` when the split has no labels)."""

    image: Path
    label: Path | None


def match_labels(images: Sequence[Path], labels: Sequence[Path], image_key: Callable[[Path], str],
                 label_key: Callable[[Path], str], where: str, expected: str, folder: Path) -> list[Sample]:
    """Pair images with labels by key; any unmatched file on either side is an error."""
    by_key = {label_key(p): p for p in labels}
    keys = [image_key(p) for p in images]
    missing = [p for p, k in zip(images, keys) if k not in by_key]
    extra = sorted(set(by_key) - set(keys))
    if missing or extra:
        parts = [f"{where}: {len(images)} images but {len(labels)} label files."]
        if missing:
            parts.append(f"{len(missing)} images have no label, e.g. {[str(p) for p in missing[:3]]}.")
        if extra:
            parts.append(f"{len(extra)} labels have no image, e.g. {[str(by_key[k]) for k in extra[:3]]}.")
        parts.append("Restore the missing files (or remove the strays); no image is skipped silently.")
        raise layout_error(" ".join(parts), folder, expected)
    return [Sample(p, by_key[k]) for p, k in zip(images, keys)]


_CS_IMAGE = re.compile(r"^(?P<stem>[^_/]+_\d+_\d+)_leftImg8bit\.png$")


def find_cityscapes_samples(root: str | os.PathLike, split: str, with_labels: bool = True) -> list[Sample]:
    """List one split of a Cityscapes-layout folder, sorted by city then file name.

    Raises
    ------
    InputValidationError
        Unknown split name.
    DatasetLayoutError
        Missing folders, no images, badly named files, or images and labels that do not pair up.
    """
    if split not in CITYSCAPES_SPLITS:
        raise InputValidationError(f"Unknown Cityscapes split {split!r}; expected one of {CITYSCAPES_SPLITS}.")
    root_p = Path(root)
    if not root_p.is_dir():
        raise layout_error(f"Cityscapes root {root_p} is not a folder.", root_p, CITYSCAPES_LAYOUT)
    img_dir = root_p / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise layout_error(f"Cityscapes split {split!r} not found: {img_dir} does not exist.", img_dir,
                           CITYSCAPES_LAYOUT)
    cities = sorted(p for p in img_dir.iterdir() if p.is_dir())
    if not cities:
        raise layout_error(f"No city folders in {img_dir}.", img_dir, CITYSCAPES_LAYOUT)
    loose = sorted(p.name for p in img_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in (".png", *OTHER_IMAGE_SUFFIXES))
    if loose:
        raise layout_error(f"{len(loose)} images lie directly in {img_dir}, outside any city folder, e.g. "
                           f"{loose[:3]}; move them into leftImg8bit/{split}/<city>/ (no image is skipped "
                           "silently).", img_dir, CITYSCAPES_LAYOUT)
    images: list[Path] = []
    for city in cities:
        pngs = list_pngs(city, images=True, expected=CITYSCAPES_LAYOUT)
        bad = [p.name for p in pngs if not _CS_IMAGE.match(p.name)]
        if bad:
            raise layout_error(f"{len(bad)} files in {city} do not follow <city>_<seq>_<frame>_leftImg8bit.png, "
                               f"e.g. {bad[:3]}.", city, CITYSCAPES_LAYOUT)
        images.extend(pngs)
    if not images:
        raise layout_error(f"Split {split!r} is empty: no *_leftImg8bit.png under {img_dir}.", cities[0],
                           CITYSCAPES_LAYOUT)
    if not with_labels:
        return [Sample(p, None) for p in images]
    gt_dir = root_p / "gtFine" / split
    if not gt_dir.is_dir():
        raise layout_error(f"Labels of split {split!r} not found: {gt_dir} does not exist "
                           "(pass return_labels=False to read images only).", gt_dir, CITYSCAPES_LAYOUT)
    labels = [p for city in sorted(gt_dir.iterdir()) if city.is_dir()
              for p in sorted(city.glob("*_gtFine_labelIds.png"))]

    def image_key(p: Path) -> str:
        return f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}"

    def label_key(p: Path) -> str:
        return f"{p.parent.name}/{p.name[: -len('_gtFine_labelIds.png')]}"

    return match_labels(images, labels, image_key, label_key, f"Split {split!r} of {root_p}", CITYSCAPES_LAYOUT,
                        gt_dir)


# --- datasets ---------------------------------------------------------------------------------------


def _resolve_anomaly(anomaly: str | Anomaly | None, dataset: str) -> tuple[Anomaly | None, str]:
    if anomaly is None or anomaly == "none":
        return None, "none"
    if isinstance(anomaly, str):
        if anomaly not in (*ANOMALY_KINDS, "random"):
            raise InputValidationError(
                f"Unknown anomaly {anomaly!r}; expected None, 'random' or one of {ANOMALY_KINDS}."
            )
        return make_anomaly(anomaly, dataset), anomaly  # type: ignore[arg-type]
    if not callable(getattr(anomaly, "apply", None)):
        raise InputValidationError(
            f"anomaly must be None, a kind name or an object with apply(rgb, seed), got {anomaly!r}."
        )
    return anomaly, str(getattr(anomaly, "kind", type(anomaly).__name__))


class SegmentationDataset(Dataset):
    """Images (and labels) through the shared preprocessing, optional seeded anomaly and augmentation.

    Parameters
    ----------
    samples : sequence of Sample
    preprocessing : Preprocessing
    label_map : callable, optional
        Raw label (H, W) uint8 + its path -> class indices (H, W) uint8 (validation included).
    anomaly : None, "random", a kind in ``ANOMALY_KINDS``, or an object with ``apply(rgb, seed)``
        Applied to the RESIZED uint8 image, with seed ``index_seed(anomaly_seed, index, split)``.
    anomaly_seed : int
    anomaly_dataset : {"cityscapes", "woodscape"}
        Parameter set of the named anomalies.
    split : str
        Name used in the per-image anomaly seed.
    return_labels : bool
        Include ``label`` in each item (needs ``label`` paths in the samples).
    augment : bool
        Random horizontal flip (image and label) and brightness/contrast jitter, drawn from torch's
        global generator (seeded per DataLoader worker, so ``pl.seed_everything(workers=True)``
        makes it reproducible).
    max_images : int, optional
        Keep only the first ``max_images`` samples.

    Items
    -----
    dict with ``image`` float32 Tensor (3, H, W), ``label`` int64 Tensor (H, W) (when
    ``return_labels``), ``path`` str, ``index`` int, ``anomaly`` str (kind applied, or "none").
    """

    def __init__(self, samples: Sequence[Sample], preprocessing: Preprocessing, *,
                 label_map: Callable[[np.ndarray, Path], np.ndarray] | None = None,
                 anomaly: str | Anomaly | None = None, anomaly_seed: int = 0, anomaly_dataset: str = "cityscapes",
                 split: str = "", return_labels: bool = True, augment: bool = False,
                 max_images: int | None = None) -> None:
        if not isinstance(preprocessing, Preprocessing):
            raise InputValidationError(
                f"preprocessing must be a lsea_monitor Preprocessing, got {type(preprocessing).__name__}."
            )
        if max_images is not None and (not isinstance(max_images, (int, np.integer)) or max_images < 1):
            raise InputValidationError(f"max_images must be a positive integer or None, got {max_images!r}.")
        if not isinstance(anomaly_seed, (int, np.integer)) or anomaly_seed < 0:
            raise InputValidationError(f"anomaly_seed must be a non-negative integer, got {anomaly_seed!r}.")
        self.samples = list(samples)[: max_images] if max_images else list(samples)
        if return_labels and any(s.label is None for s in self.samples):
            raise InputValidationError("return_labels=True but the samples have no label files.")
        self.preprocessing = preprocessing
        self.label_map = label_map
        self.anomaly, self.anomaly_name = _resolve_anomaly(anomaly, anomaly_dataset)
        self.anomaly_seed = int(anomaly_seed)
        self.split = split
        self.return_labels = return_labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, anomaly={self.anomaly_name!r}, "
                f"size={self.preprocessing.height}x{self.preprocessing.width}, labels={self.return_labels})")

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return index % len(self)

    def image_seed(self, index: int) -> int:
        """Seed of the anomaly applied to image ``index``."""
        return index_seed(self.anomaly_seed, self._check_index(index), self.split)

    def anomaly_kind(self, index: int) -> str:
        """The anomaly kind applied to image ``index`` ("none" without anomaly)."""
        if self.anomaly is None:
            return "none"
        kind_for = getattr(self.anomaly, "kind_for", None)
        return kind_for(self.image_seed(index)) if kind_for else self.anomaly_name

    def rgb(self, index: int) -> np.ndarray:
        """Image ``index`` resized to the network size, anomaly applied, before normalisation.

        Returns
        -------
        ndarray (height, width, 3) uint8.
        """
        index = self._check_index(index)
        return self._prepared(load_rgb(self.samples[index].image), index)

    def _prepared(self, raw_rgb: np.ndarray, index: int) -> np.ndarray:
        rgb = self.preprocessing.resize(raw_rgb)
        if self.anomaly is not None:
            rgb = self.anomaly.apply(rgb, self.image_seed(index))
        return rgb

    def label(self, index: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Class indices of image ``index`` at the network size, (height, width) uint8.

        ``image_shape``, the (height, width) of the image file, is checked against the label file's:
        resized separately, a label of another size would be stretched over the image silently.
        """
        index = self._check_index(index)
        path = self.samples[index].label
        if path is None:
            raise InputValidationError(f"Image {self.samples[index].image} has no label file.")
        raw = load_label(path)
        if image_shape is not None and raw.shape != tuple(image_shape):
            raise ImageDecodeError(
                f"Label image {path} is {raw.shape[1]}x{raw.shape[0]} pixels but its image "
                f"{self.samples[index].image} is {image_shape[1]}x{image_shape[0]}: a label must have its "
                "image's size (a label of another image, or a resized copy?)."
            )
        lab = self.label_map(raw, path) if self.label_map is not None else raw
        size = (self.preprocessing.width, self.preprocessing.height)
        if lab.shape[::-1] != size:
            lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST_EXACT)
        return lab

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        raw_rgb = load_rgb(self.samples[index].image)
        rgb = self._prepared(raw_rgb, index)
        label = self.label(index, raw_rgb.shape[:2]) if self.return_labels else None
        if self.augment:
            rgb, label = _augment(rgb, label)
        item: dict[str, Any] = {
            "image": self.preprocessing.normalize(torch.from_numpy(np.ascontiguousarray(rgb))[None])[0],
            "path": str(self.samples[index].image),
            "index": index,
            "anomaly": self.anomaly_kind(index),
        }
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))
        return item


def _augment(rgb: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Horizontal flip (p 0.5, image and label); contrast +-20 % and brightness +-10 % (p 0.5)."""
    u = torch.rand(4).tolist()
    if u[0] < 0.5:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
        if label is not None:
            label = np.ascontiguousarray(label[:, ::-1])
    if u[1] < 0.5:
        contrast = 0.8 + 0.4 * u[2]  # about the image mean
        brightness = (u[3] - 0.5) * 51.0  # +-25 grey levels (10 %)
        mean = float(rgb.mean())
        # Saturate at 0 and 255. (cv2.convertScaleAbs, used before, takes the ABSOLUTE value: with a
        # negative offset it turned dark pixels into brighter ones instead of black.)
        shifted = rgb.astype(np.float32) * contrast + (brightness + mean * (1 - contrast))
        rgb = np.clip(np.rint(shifted), 0, 255).astype(np.uint8)
    return rgb, label


def cityscapes_label_map(raw: np.ndarray, path: Path) -> np.ndarray:
    """Cityscapes label ids (H, W) -> train ids 0..18, ignored -> 19.

    Raises
    ------
    ImageDecodeError
        Values that are no Cityscapes id (34..254), e.g. a ``*_labelTrainIds.png`` given instead.
    """
    top = int(raw.max()) if raw.size else 0
    if top > MAX_LABEL_ID and np.any((raw > MAX_LABEL_ID) & (raw != 255)):
        bad = np.unique(raw[(raw > MAX_LABEL_ID) & (raw != 255)])[:5].tolist()
        raise ImageDecodeError(
            f"Label image {path} holds values {bad} that are no Cityscapes label ids (0..{MAX_LABEL_ID}); "
            "expected *_gtFine_labelIds.png."
        )
    return ID_TO_TRAIN_ID[raw]


class CityscapesDataset(SegmentationDataset):
    """One split of a Cityscapes-layout dataset (real or synthetic).

    Parameters
    ----------
    root : path
        Folder holding ``leftImg8bit/`` and ``gtFine/``.
    split : {"train", "val", "test"}
    preprocessing : Preprocessing, optional
        Default: 256 x 512 with the original's Cityscapes mean and std.
    anomaly : None, "random", "mud", "fog", "sunflare" or an Anomaly
    anomaly_seed : int
    return_labels : bool
        The real test split has no public labels (its label files are all "ignored"): read it with
        ``return_labels=False`` (:class:`CityscapesDataModule` detects this).
    augment : bool
    max_images : int, optional

    Items: see :class:`SegmentationDataset`; ``label`` values are train ids 0..18 and 19 (ignored).
    """

    def __init__(self, root: str | os.PathLike, split: str, preprocessing: Preprocessing | None = None, *,
                 anomaly: str | Anomaly | None = None, anomaly_seed: int = 0, return_labels: bool = True,
                 augment: bool = False, max_images: int | None = None) -> None:
        self.root = Path(root)
        samples = find_cityscapes_samples(root, split, with_labels=return_labels)
        super().__init__(samples, preprocessing if preprocessing is not None else Preprocessing(),
                         label_map=cityscapes_label_map, anomaly=anomaly, anomaly_seed=anomaly_seed,
                         anomaly_dataset="cityscapes", split=split, return_labels=return_labels, augment=augment,
                         max_images=max_images)


def split_has_labels(samples: Sequence[Sample], label_map: Callable[[np.ndarray, Path], np.ndarray],
                     ignore_value: int) -> bool:
    """Whether a split carries real labels: its first label file exists and is not all ignored."""
    if not samples or samples[0].label is None:
        return False
    first = samples[0].label
    return bool(np.any(label_map(load_label(first), first) != ignore_value))


# --- data modules -----------------------------------------------------------------------------------


class SegmentationDataModule(pl.LightningDataModule):
    """Shared loader logic; subclasses implement ``_samples(split)`` and ``_make_dataset``.

    Follows Lightning conventions: ``__init__`` stores the configuration only, ``prepare_data``
    keeps no state, ``setup(stage)`` lists the splits (with the given seed).
    """

    splits_for_stage: dict[str | None, tuple[str, ...]] = {
        "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("val", "test"),
        None: ("train", "val", "test"),
    }
    anomaly_dataset = "cityscapes"

    def __init__(self, data_dir: str | os.PathLike, batch_size: int, img_size: tuple[int, int], num_workers: int,
                 mean: Sequence[float], std: Sequence[float], train_augment: bool, seed: int,
                 anomaly_seed: int | None, pin_memory: bool, drop_last: bool, max_images: int | None) -> None:
        super().__init__()
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InputValidationError(f"{name} must be an integer >= {low}, got {value!r}.")
        if len(tuple(img_size)) != 2:
            raise InputValidationError(f"img_size must be (height, width), got {img_size!r}.")
        self.data_dir = Path(data_dir)
        self.batch_size = int(batch_size)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.num_workers = int(num_workers)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.train_augment = bool(train_augment)
        self.seed = int(seed)
        self.anomaly_seed = self.seed if anomaly_seed is None else int(anomaly_seed)
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)
        self.max_images = max_images
        # Validated now (cheap, no I/O) so that a bad size fails at construction.
        self.preprocessing = Preprocessing(self.img_size[0], self.img_size[1],
                                           self.mean, self.std)  # type: ignore[arg-type]
        self._samples: dict[str, list[Sample]] = {}
        self._labelled: dict[str, bool] = {}
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        self.test_set: SegmentationDataset | None = None

    # subclass hooks
    def _samples_for(self, split: str) -> tuple[list[Sample], bool]:
        """(samples, labelled) of ``split``."""
        raise NotImplementedError

    def _make_dataset(self, split: str, anomaly: str | None, augment: bool) -> SegmentationDataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """List the files of the splits ``stage`` needs and build their datasets."""
        if stage not in self.splits_for_stage:
            raise InputValidationError(f"Unknown stage {stage!r}; expected one of {list(self.splits_for_stage)}.")
        for split in self.splits_for_stage[stage]:
            if split not in self._samples:
                self._samples[split], self._labelled[split] = self._samples_for(split)
            dataset = self._make_dataset(split, None, augment=self.train_augment and split == "train")
            setattr(self, f"{split}_set", dataset)

    def has_labels(self, split: str) -> bool:
        """Whether ``split`` has real labels (after ``setup``)."""
        self._ensure(split)
        return self._labelled[split]

    def _ensure(self, split: str) -> None:
        if split not in self._samples:
            self._samples[split], self._labelled[split] = self._samples_for(split)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=self.drop_last and shuffle, generator=generator,
                          persistent_workers=self.num_workers > 0)

    def _split_set(self, split: str) -> SegmentationDataset:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            stage = {"train": "fit", "val": "validate", "test": "test"}[split]
            self.setup(stage)
            dataset = getattr(self, f"{split}_set")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split_set("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split_set("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split_set("test"), shuffle=False)

    def anomaly_dataset_for(self, split: str, kind: str = "random") -> SegmentationDataset:
        """The SAME images of ``split`` altered by ``kind`` ("random": one of the three per image)."""
        if split not in self.splits_for_stage[None]:
            raise InputValidationError(f"Unknown split {split!r}; expected one of {self.splits_for_stage[None]}.")
        if kind not in (*ANOMALY_KINDS, "random"):
            raise InputValidationError(f"Unknown anomaly kind {kind!r}; expected 'random' or one of {ANOMALY_KINDS}.")
        self._ensure(split)
        return self._make_dataset(split, kind, augment=False)

    def anomaly_dataloader(self, split: str, kind: str = "random") -> DataLoader:
        """Loader of ``split`` with one anomaly kind (cross-type generalisation) or "random"."""
        return self._loader(self.anomaly_dataset_for(split, kind), shuffle=False)

    def anomaly_val_dataloader(self) -> DataLoader:
        """Validation images, each with a random anomaly (seeded per image)."""
        return self.anomaly_dataloader("val", "random")

    def anomaly_test_dataloader(self) -> DataLoader:
        """Test images, each with a random anomaly (seeded per image)."""
        return self.anomaly_dataloader("test", "random")


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes (or the synthetic default dataset) for training and calibration.

    Parameters
    ----------
    data_dir : path
        Root of the Cityscapes layout.
    batch_size : int
    img_size : (height, width)
        Network input size (guide: 256 x 512).
    num_workers : int
    mean, std : 3 floats
        Normalisation (default: the original's Cityscapes values).
    train_augment : bool
        Flip and brightness/contrast jitter on the training split.
    seed : int
        Seed of the training shuffle order, and default anomaly seed.
    anomaly_seed : int, optional
        Seed of the per-image anomalies (default ``seed``).
    pin_memory : bool
    drop_last : bool
        Applies to the training loader only: evaluation loaders never drop images.
    test_labels : bool, optional
        Whether the test split has labels. ``None`` (default) detects it: labels are used when
        ``gtFine/test`` exists and its first label is not entirely ignored (the real Cityscapes
        test labels are placeholders). Test items then have no ``label`` key.
    max_images : int, optional
        Cap per split (quick runs).
    """

    def __init__(self, data_dir: str | os.PathLike, batch_size: int = 1, img_size: tuple[int, int] = (256, 512),
                 num_workers: int = 0, mean: Sequence[float] = CITYSCAPES_MEAN, std: Sequence[float] = CITYSCAPES_STD,
                 train_augment: bool = True, seed: int = 0, anomaly_seed: int | None = None, pin_memory: bool = False,
                 drop_last: bool = False, test_labels: bool | None = None, max_images: int | None = None) -> None:
        super().__init__(data_dir, batch_size, img_size, num_workers, mean, std, train_augment, seed, anomaly_seed,
                         pin_memory, drop_last, max_images)
        self.test_labels = test_labels
        self.save_hyperparameters({"data_dir": str(self.data_dir), "batch_size": self.batch_size,
                                   "img_size": list(self.img_size), "mean": list(self.mean), "std": list(self.std),
                                   "train_augment": self.train_augment, "seed": self.seed,
                                   "anomaly_seed": self.anomaly_seed, "test_labels": test_labels,
                                   "max_images": max_images})

    def _samples_for(self, split: str) -> tuple[list[Sample], bool]:
        if split != "test" or self.test_labels is True:
            return find_cityscapes_samples(self.data_dir, split, with_labels=True), True
        if self.test_labels is False or not (self.data_dir / "gtFine" / "test").is_dir():
            return find_cityscapes_samples(self.data_dir, split, with_labels=False), False
        samples = find_cityscapes_samples(self.data_dir, split, with_labels=True)
        if split_has_labels(samples, cityscapes_label_map, IGNORE_TRAIN_ID):
            return samples, True
        log.info("Cityscapes test labels in %s are placeholders (all ignored): test items carry no 'label'.",
                 self.data_dir / "gtFine" / "test")
        return [Sample(s.image, None) for s in samples], False

    def _make_dataset(self, split: str, anomaly: str | None, augment: bool) -> SegmentationDataset:
        samples = self._samples[split]
        labelled = self._labelled[split]
        ds = SegmentationDataset(samples, self.preprocessing, label_map=cityscapes_label_map, anomaly=anomaly,
                                 anomaly_seed=self.anomaly_seed, anomaly_dataset=self.anomaly_dataset, split=split,
                                 return_labels=labelled, augment=augment, max_images=self.max_images)
        return ds
