"""``lsea-train``'s checkpoints (real Lightning training on a tiny procedural dataset) and its crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from offline_calibration.synthetic import generate_dataset
from offline_calibration.train import RandomCrop, TrainConfig, train, training_block_size


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    generate_dataset(root, n_train=4, n_val=2, n_test=1, height=64, width=128, seed=0, progress=False)
    return root


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    # 4 images, batch 2: 2 steps per epoch; block 2 fits the 4 x 8 deepest map of 64 x 128 frames
    base = dict(data_dir=str(data), out_dir=str(out), batch_size=2, img_size=(64, 128), train_size=(64, 128),
                encoder_name="mobilenet_v2", block_size=2)
    base.update(kw)
    return TrainConfig(**base)


def _step(path: str | Path) -> int:
    """Training steps behind a checkpoint (2 per epoch here)."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])  # our own file


@pytest.mark.slow
def test_the_last_epoch_is_validated_and_saved_whatever_val_every(tiny_data: Path, tmp_path: Path) -> None:
    """Lightning checkpoints only after a validation: with 3 epochs validated every 2, epoch 3's model
    was neither validated nor written (last.ckpt held epoch 2's)."""
    report = train(_config(tiny_data, tmp_path / "a", epochs=3, val_every=2), progress=False)
    assert _step(report["last_checkpoint"]) == 6  # all 3 epochs
    assert Path(report["best_checkpoint"]).name == "best.ckpt"
    assert _step(report["best_checkpoint"]) in (4, 6)  # validated after epochs 2 and 3
    # validating less often than there are epochs: still a best.ckpt, from the last epoch
    report = train(_config(tiny_data, tmp_path / "b", epochs=2, val_every=5), progress=False)
    assert Path(report["best_checkpoint"]).name == "best.ckpt"
    assert _step(report["best_checkpoint"]) == _step(report["last_checkpoint"]) == 4


@pytest.mark.slow
def test_a_rerun_into_the_same_folder_rewrites_best_and_last(tiny_data: Path, tmp_path: Path) -> None:
    """With Lightning's version counter a rerun wrote best-v1.ckpt, and the documented best.ckpt
    (the demo's parameter file names it) still held the previous run's model."""
    out = tmp_path / "run"
    first = train(_config(tiny_data, out, epochs=1), progress=False)
    second = train(_config(tiny_data, out, epochs=2), progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert first["best_checkpoint"] == second["best_checkpoint"]
    assert _step(second["best_checkpoint"]) == _step(second["last_checkpoint"]) == 4  # the second run's model


def _windows(loader: DataLoader) -> list[tuple[int, int]]:
    """(top, left) of every crop: the image's pixel (0, 0) holds its source row and column."""
    out = []
    for batch in loader:
        for img in batch["image"]:
            out.append((int(img[0, 0, 0]), int(img[1, 0, 0])))
    return out


def test_crop_windows_differ_between_workers_and_epochs() -> None:
    """A worker holds a copy of the crop's generator: without its own seed every worker drew the same
    windows, and the same again each epoch."""
    h, w = 32, 48
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    items = [{"image": torch.stack([rows, cols, rows]), "label": torch.zeros(h, w, dtype=torch.long)}
             for _ in range(8)]
    crops = RandomCrop(items, (8, 8), seed=0)
    single = _windows(DataLoader(crops, batch_size=1))
    assert len(set(single)) > 4  # in-process: varied windows
    torch.manual_seed(0)
    loader = DataLoader(crops, batch_size=1, num_workers=2, multiprocessing_context="spawn")
    epoch1, epoch2 = _windows(loader), _windows(loader)
    by_worker = [epoch1[0::2], epoch1[1::2]]  # batches alternate between the two workers
    assert by_worker[0] != by_worker[1]
    assert epoch1 != epoch2
    assert all(0 <= t <= h - 8 and 0 <= left <= w - 8 for t, left in epoch1 + epoch2)
    assert np.unique(np.array(epoch1), axis=0).shape[0] > 4


@pytest.mark.slow
def test_train_block_size_applies_while_training_and_the_checkpoint_keeps_block_size(tiny_data: Path,
                                                                                     tmp_path: Path) -> None:
    """Training on crops smaller than the frames the monitor sees: the DropBlock trains with
    train_block_size, and the checkpoint (what the monitor samples with) has block_size."""
    import pytorch_lightning as pl

    from lsea_monitor.checkpoint import load_model
    from offline_calibration.cityscapes import CityscapesDataModule
    from offline_calibration.model import MODEL_CLASS, DeepLabV3PlusModule

    seen: list[int] = []

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(pl_module.deeplab_v3plus_model.drop_block1.block_size)

    module = DeepLabV3PlusModule(encoder_name="mobilenet_v2", block_size=3, train_block_size=2)
    assert module.deeplab_v3plus_model.drop_block1.block_size == 3
    dm = CityscapesDataModule(data_dir=str(tiny_data), batch_size=2, img_size=(64, 128))
    dm.setup("fit")
    pl.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[Recorder()],
               default_root_dir=tmp_path).fit(module, dm.train_dataloader())
    assert seen == [2, 2, 2, 2]  # 2 epochs of 2 batches, every one with the training block
    assert module.deeplab_v3plus_model.drop_block1.block_size == 3  # restored after training

    report = train(_config(tiny_data, tmp_path / "run", epochs=1, block_size=3, train_block_size=2), progress=False)
    loaded = load_model(report["best_checkpoint"], MODEL_CLASS, trust_checkpoint=True)
    assert loaded.deeplab_v3plus_model.drop_block1.block_size == 3
    assert loaded.hparams.train_block_size == 2
    with pytest.raises(ValueError, match="train_block_size must be a positive int"):
        DeepLabV3PlusModule(encoder_name="mobilenet_v2", train_block_size=0)


def test_training_block_size_defaults_to_the_block_scaled_to_the_crops() -> None:
    cfg = TrainConfig("d", "o", img_size=(256, 512), train_size=(128, 256), block_size=12)
    assert training_block_size(cfg) == 6  # the original's 12 at 16 x 32 -> 6 at the crops' 8 x 16
    assert training_block_size(TrainConfig("d", "o", img_size=(256, 512), train_size=(256, 512))) == 12
    assert training_block_size(TrainConfig("d", "o", train_size=(128, 512), block_size=9)) == 4  # smaller side
    assert training_block_size(TrainConfig("d", "o", train_size=(16, 32), block_size=3)) == 1
    assert training_block_size(TrainConfig("d", "o", block_size=9, train_block_size=6)) == 6  # as given
