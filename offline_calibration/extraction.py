"""Latent-entropy extraction through Lightning, cached on disk and resumable.

``Trainer.predict`` runs :class:`LatentExtractionModule` (the core's
:class:`~lsea_monitor.pipeline.LatentFeatureExtractor`, nothing re-implemented) on any accelerator,
device count or DDP strategy; :class:`CacheWriter` writes each batch's results atomically into a
checksummed ``.npz`` on every rank. A rerun only extracts the images whose entries are missing; a
corrupted entry is detected by its checksum, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Subset

from lsea_monitor.errors import DatasetLayoutError
from lsea_monitor.pipeline import LatentFeatureExtractor

#: Every cache entry holds the dataset index of each of its rows.
CORE_KEYS = ("index",)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache entry atomically (temp file, fsync, rename) with its checksum inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __checksum__=np.array(_checksum(arrays)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_entry(path: Path) -> dict[str, np.ndarray] | None:
    """Read a cache entry; None when it is unreadable or fails its checksum."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != "__checksum__"}
            stored = str(data["__checksum__"])
    except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
        return None
    if stored != _checksum(arrays) or any(k not in arrays for k in CORE_KEYS):
        return None
    return arrays


def _file_signature(path: Path, root: Path | None) -> str:
    try:
        rel = path.relative_to(root) if root is not None else path.absolute()
    except ValueError:  # outside the dataset root: the absolute path
        rel = path.absolute()
    try:
        st = path.stat()
    except OSError as err:
        raise DatasetLayoutError(f"Image set file {path} cannot be read ({err}); was the dataset changed while "
                                 "calibrating? Re-run lsea-calibrate once it is complete.") from err
    return f"{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}"


def image_list_digest(dataset: Any) -> str:
    """SHA-256 of an image set's file list: per image, in order, its path relative to the dataset
    root, its size in bytes and its ``mtime_ns`` (and the same for its label file when the set
    returns labels). The make/rsync convention: an image added, removed, renamed or rewritten
    changes the digest, so the cache, which addresses entries by position, is never reused for
    other images; hashing every image's bytes would be slow on real datasets.

    ``dataset`` needs ``samples`` (items with ``image`` and ``label`` paths, as
    :class:`~offline_calibration.cityscapes.SegmentationDataset` holds).
    """
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TypeError(f"{type(dataset).__name__} has no 'samples' list: the cache cannot tell its images apart.")
    root = getattr(dataset, "root", None)
    root = Path(root) if root is not None else None
    with_labels = bool(getattr(dataset, "return_labels", False))
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(_file_signature(Path(sample.image), root).encode())
        if with_labels and sample.label is not None:
            digest.update(b"|label|" + _file_signature(Path(sample.label), root).encode())
        digest.update(b"\n")
    return f"{len(samples)}:{digest.hexdigest()}"


class FeatureCache:
    """Per-image extraction results of one image set, stored as batch files in ``root``."""

    def __init__(self, root: str | os.PathLike[str], key: dict[str, Any]) -> None:
        self.root = Path(root)
        self.key = key
        self.root.mkdir(parents=True, exist_ok=True)
        key_file = self.root / "key.json"
        key_json = json.dumps(key, sort_keys=True, indent=1)
        if key_file.exists() and key_file.read_text() != key_json:
            # Another model/config wrote here: its entries are not ours.
            for f in self.root.glob("*.npz"):
                f.unlink()
        key_file.write_text(key_json)

    def load(self) -> tuple[dict[int, dict[str, np.ndarray]], list[Path]]:
        """All valid entries by image index, and the corrupted files that were found (and deleted)."""
        per_image: dict[int, dict[str, np.ndarray]] = {}
        corrupted = []
        for f in sorted(self.root.glob("batch-*.npz")):
            entry = read_entry(f)
            if entry is None:
                corrupted.append(f)
                f.unlink(missing_ok=True)
                continue
            for row, index in enumerate(entry["index"].tolist()):
                per_image[int(index)] = {k: v[row] for k, v in entry.items()}
        return per_image, corrupted


def image_seed(seed: int, namespace: str, index: int) -> int:
    """Seed of one image's Monte-Carlo draws: a function of the image alone, never of batching,
    worker count, rank or resumption, so an interrupted and resumed run equals an uninterrupted one."""
    digest = hashlib.sha256(f"{seed}|{namespace}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _seeded_per_image(batch: dict[str, Any], seed: int, namespace: str,
                      fn: Callable[[torch.Tensor], dict[str, np.ndarray]],
                      common_seed: int | None = None) -> dict[str, np.ndarray]:
    """Run ``fn`` on each image of the batch under that image's own seed (``common_seed``, when
    given, for every image: as the node seeds every frame with the artefact's ``mc_seed``); stack the rows."""
    images, indices = batch["image"], batch["index"].cpu().tolist()
    device_type = images.device.type
    rows = []
    for i, index in enumerate(indices):
        with torch.random.fork_rng(devices=[images.device] if device_type == "cuda" else [], device_type=device_type):
            torch.manual_seed(common_seed if common_seed is not None else image_seed(seed, namespace, int(index)))
            rows.append(fn(images[i:i + 1]))
    out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    out["index"] = np.asarray(indices, dtype=np.int64)
    return out


class LatentExtractionModule(pl.LightningModule):
    """Wraps the user's model for ``Trainer.predict``: per image, its latent entropies ``h_z`` (C,).

    Parameters
    ----------
    model : nn.Module
        The segmentation network holding ``layer``.
    layer, mc_samples, strategy, entropy_k, precision
        As in :class:`~lsea_monitor.pipeline.LatentFeatureExtractor`.
    """

    def __init__(self, model: torch.nn.Module, *, layer: str, mc_samples: int, strategy: str = "fast",
                 entropy_k: int | None = None, precision: str = "fp32", seed: int = 0,
                 common_seed: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.seed = seed
        self.common_seed = common_seed  #: the artefact's mc_seed: every image drawn with it
        self.namespace = ""  #: set per image set, so each set draws its own reproducible samples
        self.layer, self.mc_samples, self.strategy = layer, mc_samples, strategy
        self.entropy_k, self.precision = entropy_k, precision
        self.extractor: LatentFeatureExtractor | None = None

    def on_predict_start(self) -> None:
        # Built here, once the model sits on its final device.
        self.extractor = LatentFeatureExtractor(self.model, self.layer, self.mc_samples, strategy=self.strategy,
                                                entropy_k=self.entropy_k, precision=self.precision)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, np.ndarray]:
        if self.extractor is None:
            self.on_predict_start()

        def features(image: torch.Tensor) -> dict[str, np.ndarray]:
            h_z, finite = self.extractor.features(image)
            return {"h_z": h_z, "finite": finite}

        out = _seeded_per_image(batch, self.seed, self.namespace, features, self.common_seed)
        if not out["finite"].all():
            bad = out["index"][~out["finite"]].tolist()
            raise FloatingPointError(f"Non-finite latent samples for image indices {bad}: the model produced NaN/inf. "
                                     "Calibration never skips data; check the checkpoint and the inputs.")
        del out["finite"]
        return out


class ScoreExtractionModule(pl.LightningModule):
    """``Trainer.predict`` wrapper for per-image scores ``scores(model, images) -> dict[str, Tensor (B,)]``."""

    def __init__(self, model: torch.nn.Module,
                 scores: Callable[[torch.nn.Module, torch.Tensor], dict[str, torch.Tensor]], *, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.scores = scores
        self.seed = seed
        self.namespace = ""

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, np.ndarray]:
        def scores(image: torch.Tensor) -> dict[str, np.ndarray]:
            return {name: values.detach().float().cpu().numpy().astype(np.float64)
                    for name, values in self.scores(self.model, image).items()}

        return _seeded_per_image(batch, self.seed, self.namespace, scores)


class CacheWriter(BasePredictionWriter):
    """Writes each predicted batch into the cache as soon as it is done (on every DDP rank)."""

    def __init__(self, cache: FeatureCache) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        idx = prediction["index"]
        write_entry(self.cache.root / f"batch-{int(idx.min()):07d}-{int(idx.max()):07d}-r{trainer.global_rank}.npz",
                    prediction)


def extract_set(dataset: Dataset, cache: FeatureCache, module: pl.LightningModule, *, batch_size: int,
                num_workers: int = 0, accelerator: str = "auto", devices: Any = "auto", strategy: str = "auto",
                progress: bool = True) -> dict[str, np.ndarray]:
    """Extract every image of ``dataset`` that the cache lacks, then return all results sorted by index.

    Returns
    -------
    dict of arrays, each with one row per image in index order (``index`` (N,), ``h_z`` (N, C), ...).
    """
    # Lightning's per-Trainer banners (devices, tips) would repeat for every image set.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    module.namespace = str(cache.key.get("set", cache.root.name))
    done, _ = cache.load()
    todo = [i for i in range(len(dataset)) if i not in done]
    if todo:
        loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, logger=False,
                             callbacks=[CacheWriter(cache)], enable_progress_bar=progress,
                             enable_model_summary=False, enable_checkpointing=False)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        done, corrupted = cache.load()
        if corrupted:
            raise RuntimeError(f"Freshly written cache entries failed their checksum: {corrupted}. Disk full?")
    missing = [i for i in range(len(dataset)) if i not in done]
    if missing:
        raise RuntimeError(f"Extraction incomplete in {cache.root}: {len(missing)} images missing "
                           f"(first: {missing[:5]}). Re-run to resume.")
    keys = done[0].keys() if done else CORE_KEYS
    return {k: np.stack([done[i][k] for i in range(len(dataset))]) for k in keys}
