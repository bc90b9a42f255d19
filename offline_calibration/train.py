"""``lsea-train``: train the reference DeepLabV3+ (with ``drop_block1``) on a Cityscapes-layout dataset.

Example::

    lsea-train --data-dir work_dirs/demo/data --out-dir work_dirs/demo/model --epochs 8 --train-size 128 256

With ``--train-size`` smaller than ``--img-size``, training uses random crops of that size (cheaper
per step, objects at their run-time scale; the network is fully convolutional); validation runs
on whole frames at ``--img-size``, after the last epoch and, with ``--val-every N``, every N
epochs. Writes ``checkpoints/last.ckpt``, ``checkpoints/best.ckpt`` (the best validation mIoU among
those validations: without ``--val-every`` the last epoch's model) and ``train_report.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

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
    block_size: int = 12
    drop_prob: float = 0.2
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    num_workers: int = 0
    seed: int = 0
    accelerator: str = "auto"
    devices: str | int = "auto"
    val_every: int = 0  #: validate every n epochs; 0 = only after the last epoch
    extra: dict = field(default_factory=dict)


class RandomCrop(Dataset):
    """Random ``(height, width)`` crops of a segmentation dataset's image and label (same window)."""

    def __init__(self, dataset: Dataset, size: tuple[int, int], seed: int = 0) -> None:
        self.dataset, self.size = dataset, size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        h, w = item["image"].shape[-2:]
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top = int(self.rng.integers(0, h - ch + 1))
        left = int(self.rng.integers(0, w - cw + 1))
        item["image"] = item["image"][..., top:top + ch, left:left + cw]
        item["label"] = item["label"][..., top:top + ch, left:left + cw]
        return item


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
                                optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_last=True)
    callbacks = [best, TQDMProgressBar(refresh_rate=5)] if progress else [best]
    # Validation only at the end of training by default: at full size it costs as much as an epoch.
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                         default_root_dir=str(out), callbacks=callbacks, enable_progress_bar=progress,
                         check_val_every_n_epoch=cfg.val_every or cfg.epochs, logger=False,
                         enable_model_summary=progress, log_every_n_steps=5)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=dm.val_dataloader())
    seconds = time.perf_counter() - start
    val = trainer.validate(model, dataloaders=dm.val_dataloader(), ckpt_path=best.best_model_path or None,
                           verbose=False)[0]
    report = {"config": asdict(cfg), "model_class": MODEL_CLASS, "train_seconds": round(seconds, 1),
              "val_miou": float(val["val_miou"]), "val_loss": float(val["val_loss"]),
              "best_checkpoint": str(Path(best.best_model_path or ckpt_dir / "last.ckpt").resolve()),
              "last_checkpoint": str((ckpt_dir / "last.ckpt").resolve())}
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
    p.add_argument("--block-size", type=int, default=defaults.block_size)
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
