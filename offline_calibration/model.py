"""Reference segmentation model: DeepLabV3+ with ``drop_block1`` as a LightningModule.

Mirrors the original's ``DeepLabV3PlusModule``: the network is the attribute
``deeplab_v3plus_model`` and the latent layer the monitor hooks is
``deeplab_v3plus_model.drop_block1`` (a DropBlock2D on the deepest encoder feature).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from offline_calibration.deeplab import DeepLabV3PlusDropBlock

#: Import path and hooked layer of this module, as written into artefacts and node parameters.
MODEL_CLASS = "offline_calibration.model:DeepLabV3PlusModule"
HOOKED_LAYER = "deeplab_v3plus_model.drop_block1"


class DeepLabV3PlusModule(pl.LightningModule):
    """DeepLabV3+ (segmentation-models-pytorch) with a DropBlock2D on the deepest encoder feature.

    Parameters
    ----------
    num_classes : int
        Output classes; Cityscapes uses 19 train ids plus one void class (index 19).
    ignore_index : int or None
        Class excluded from the loss and the mIoU (the void class), None to keep all.
    encoder_name : str
        smp encoder, e.g. ``resnet18`` (built-in default) or ``resnet101`` (the original).
    block_size, drop_prob : DropBlock2D parameters of ``drop_block1``; ``block_size`` is the one the
        loaded checkpoint has, i.e. the one the monitor's MC sampling uses.
    train_block_size : int or None
        Block size while training (None: ``block_size``). Training on crops smaller than the frames
        the monitor sees gives smaller feature maps; a block that suits them can be too small for
        the full frames. Set on each training epoch's start, ``block_size`` restored at its end.
    optimizer : {"sgd", "adamw"}
    lr, weight_decay, momentum : optimiser settings; the learning rate follows a polynomial decay.
    """

    def __init__(self, *, num_classes: int = 20, ignore_index: int | None = 19, encoder_name: str = "resnet18",
                 block_size: int = 12, drop_prob: float = 0.2, optimizer: str = "sgd", lr: float = 0.01,
                 weight_decay: float = 1e-4, momentum: float = 0.9, train_block_size: int | None = None) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}.")
        if train_block_size is not None and (isinstance(train_block_size, bool) or not isinstance(train_block_size, int)
                                             or train_block_size < 1):
            raise ValueError(f"train_block_size must be a positive int or None, got {train_block_size!r}.")
        self.save_hyperparameters()
        self.deeplab_v3plus_model = DeepLabV3PlusDropBlock(encoder_name=encoder_name, classes=num_classes,
                                                           block_size=block_size, drop_prob=drop_prob)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
        self.val_miou = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore_index, average="macro")
        self.test_miou = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore_index, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes, H, W) logits."""
        return self.deeplab_v3plus_model(x)

    def _common_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        labels = batch["label"]
        loss = self.loss_fn(logits, labels)
        batch_size = labels.shape[0]
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=batch_size)
        if stage != "train":
            metric = self.val_miou if stage == "val" else self.test_miou
            metric.update(logits.argmax(dim=1), labels)
            self.log(f"{stage}_miou", metric, prog_bar=True, on_epoch=True, on_step=False, batch_size=batch_size)
        return loss

    def on_train_epoch_start(self) -> None:
        self.deeplab_v3plus_model.drop_block1.block_size = self.hparams.train_block_size or self.hparams.block_size

    def on_train_epoch_end(self) -> None:
        self.deeplab_v3plus_model.drop_block1.block_size = self.hparams.block_size

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
