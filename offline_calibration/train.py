"""``lsea-train``: train the reference DeepLabV3+ (with ``drop_block1``) on a Cityscapes-layout dataset.

Example::

    lsea-train --data-dir work_dirs/demo/data --out-dir work_dirs/demo/model --epochs 8 --train-size 128 256

With ``--train-size`` smaller than ``--img-size``, training uses random crops of that size (cheaper
per step, objects at their run-time scale; the network is fully convolutional); validation runs
on whole frames at ``--img-size``, after the last epoch and, with ``--val-every N``, every N
epochs. Writes ``checkpoints/last.ckpt`` (the model after the last epoch), ``checkpoints/best.ckpt``
(the best validation mIoU among those validations: without ``--val-every`` the last epoch's model;
a rerun into the same folder replaces both) and ``train_report.json``.

The defaults suit a CPU (AdamW at 2e-3, ResNet-18 encoder, block 12, scaled to 6 while training on
the half-size crops: see ``--train-block-size``); the original trained a
ResNet-101 with SGD: ``--encoder resnet101 --optimizer sgd --lr ...`` for that.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset, get_worker_info

from offline_calibration.model import MODEL_CLASS, DeepLabV3PlusModule


@dataclass
class TrainConfig:
    data_dir: str
    out_dir: str
    epochs: int = 8
    batch_size: int = 8
    img_size: tuple[int, int] = (256, 512)
    train_size: tuple[int, int] = (128, 256)
    encoder_name: str = "resnet18"
    block_size: int = 12  #: the checkpoint's DropBlock block, which the monitor samples with
    drop_prob: float = 0.2
    #: the block while training on train_size crops (None: block_size scaled by the crop-to-frame ratio)
    train_block_size: int | None = None
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    num_workers: int = 0
    seed: int = 0
    accelerator: str = "auto"
    devices: str | int = "auto"
    val_every: int = 0  #: validate every n epochs; 0 = only after the last epoch
    extra: dict = field(default_factory=dict)


def training_block_size(cfg: TrainConfig) -> int:
    """DropBlock block size while training: ``cfg.train_block_size`` when given, else ``block_size``
    scaled by the crops' size relative to the frames (the deepest map shrinks with the crop, and a
    block meant for the frames' map could blank most of the crops'; the original's 12 for 256x512
    frames gives 6 on 128x256 crops)."""
    if cfg.train_block_size is not None:
        return cfg.train_block_size
    ratio = min(cfg.train_size[0] / cfg.img_size[0], cfg.train_size[1] / cfg.img_size[1], 1.0)
    return max(1, round(cfg.block_size * ratio))


class RandomCrop(Dataset):
    """Random ``(height, width)`` crops of a segmentation dataset's image and label (same window)."""

    def __init__(self, dataset: Dataset, size: tuple[int, int], seed: int = 0) -> None:
        self.dataset, self.size = dataset, size
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    def _generator(self) -> np.random.Generator:
        # A DataLoader worker holds a copy of this object, generator state included: every worker
        # would draw the same windows, again each epoch. Its own seed (torch's, per worker and per
        # epoch, seeded by pl.seed_everything(workers=True)) gives it its own stream.
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self.rng, self._worker_seed = np.random.default_rng(info.seed), info.seed
        return self.rng

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        h, w = item["image"].shape[-2:]
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        rng = self._generator()
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        item["image"] = item["image"][..., top:top + ch, left:left + cw]
        item["label"] = item["label"][..., top:top + ch, left:left + cw]
        return item


def _validate_last_epoch_callback():  # noqa: ANN202 - a Lightning callback class, built lazily
    from pytorch_lightning.callbacks import Callback

    class ValidateLastEpoch(Callback):
        """Validate after the last epoch too when it is not a multiple of ``check_val_every_n_epoch``:
        Lightning writes checkpoints only after a validation, so the last epochs' model would be
        neither validated nor saved (and with ``--val-every`` above ``--epochs``, no best.ckpt at all)."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
                trainer.check_val_every_n_epoch = 1  # read by the epoch loop at the end of each epoch

    return ValidateLastEpoch()


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Train and return the report (also written to ``out_dir/train_report.json``)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    from offline_calibration.cityscapes import CityscapesDataModule

    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    dm = CityscapesDataModule(data_dir=cfg.data_dir, batch_size=cfg.batch_size, img_size=tuple(cfg.img_size),
                              num_workers=cfg.num_workers, seed=cfg.seed)
    dm.setup("fit")
    train_loader = dm.train_dataloader()
    if tuple(cfg.train_size) != tuple(cfg.img_size):
        # Random crops keep the scale of objects as the network will see them at run time; a
        # downscaled frame would teach it objects half their size.
        train_loader = DataLoader(RandomCrop(train_loader.dataset, tuple(cfg.train_size), cfg.seed),
                                  batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, drop_last=True)
    model = DeepLabV3PlusModule(encoder_name=cfg.encoder_name, block_size=cfg.block_size, drop_prob=cfg.drop_prob,
                                optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                train_block_size=training_block_size(cfg))
    # No version counter: a rerun into the same folder writes best.ckpt and last.ckpt again (with it,
    # best-v1.ckpt beside the old run's best.ckpt, which the documented path would still name).
    # Saved after each validation (save_on_train_epoch_end=False): Lightning otherwise decides where
    # to save from check_val_every_n_epoch, which _validate_last_epoch_callback changes mid-run.
    # last.ckpt is written below, after fit: ModelCheckpoint(save_last=True) rewrites it only when a
    # validation improved on the best, so it need not hold the last model.
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max",
                           enable_version_counter=False, save_on_train_epoch_end=False)
    callbacks = [best, _validate_last_epoch_callback()]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    # Validation only at the end of training by default: at full size it costs as much as an epoch.
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                         default_root_dir=str(out), callbacks=callbacks, enable_progress_bar=progress,
                         check_val_every_n_epoch=cfg.val_every or cfg.epochs, logger=False,
                         enable_model_summary=progress, log_every_n_steps=5)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=dm.val_dataloader())
    seconds = time.perf_counter() - start
    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last)
    val = trainer.validate(model, dataloaders=dm.val_dataloader(), ckpt_path=best.best_model_path or None,
                           verbose=False)[0]
    report = {"config": asdict(cfg), "model_class": MODEL_CLASS, "train_seconds": round(seconds, 1),
              "val_miou": float(val["val_miou"]), "val_loss": float(val["val_loss"]),
              "best_checkpoint": str(Path(best.best_model_path or last).resolve()),
              "last_checkpoint": str(last.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsea-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="dataset root in the Cityscapes layout (leftImg8bit/, gtFine/)")
    p.add_argument("--out-dir", required=True, help="where checkpoints and train_report.json go")
    defaults = TrainConfig("", "")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--img-size", type=int, nargs=2, default=defaults.img_size, metavar=("H", "W"))
    p.add_argument("--train-size", type=int, nargs=2, default=defaults.train_size, metavar=("H", "W"))
    p.add_argument("--encoder", dest="encoder_name", default=defaults.encoder_name)
    p.add_argument("--block-size", type=int, default=defaults.block_size,
                   help="DropBlock block size in feature-map cells, kept in the checkpoint: the monitor samples with it")
    p.add_argument("--train-block-size", type=int, default=None, metavar="N",
                   help="block size while training on --train-size crops, whose feature maps are smaller than "
                        "the frames' (default: --block-size scaled by the crop-to-frame ratio)")
    p.add_argument("--drop-prob", type=float, default=defaults.drop_prob)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=defaults.optimizer)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--num-workers", type=int, default=defaults.num_workers)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--accelerator", default=defaults.accelerator)
    p.add_argument("--val-every", type=int, default=defaults.val_every, metavar="N",
                   help="validate every N epochs (best.ckpt is chosen among these); 0 = after the last epoch only")
    p.add_argument("--no-progress", action="store_true")
    args = vars(p.parse_args(argv))
    if args["val_every"] < 0:
        p.error(f"--val-every must be >= 0 (0 = after the last epoch only), got {args['val_every']}")
    progress = not args.pop("no_progress")
    report = train(TrainConfig(**args), progress=progress)
    print(f"val mIoU {report['val_miou']:.3f} after {report['train_seconds']} s; checkpoint {report['best_checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
