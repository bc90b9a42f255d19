"""How much each anomaly hurts the segmentation: the other half of judging a monitor.

A detector that misses an anomaly the network segments through unharmed is less of a failure
than one that misses an anomaly that wrecks the segmentation. This module measures, on labelled
validation images, the model's deterministic (eval-mode) segmentation of the clean image and of
the same image under each anomaly kind: per-image confusion matrices (through Lightning, cached
like the latent samples), and from them mIoU, pixel accuracy and the per-image accuracy drop.

Confusion matrices are ``(K, K)`` counts, rows = label, columns = prediction, ``K`` = the model's
output channels; pixels labelled ``ignore_index`` (or outside ``0..K-1``) are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

#: Per-image pixel accuracy drop (clean minus altered, in accuracy units) counted as "hurt".
HURT_DROP = 0.05


def resolve_ignore_index(model: torch.nn.Module, configured: Any) -> int | None:
    """``"auto"``: the model's ``hparams.ignore_index`` when it has one, else none; an int; or ``None``."""
    if configured == "auto":
        hparams = getattr(model, "hparams", None)
        value = hparams.get("ignore_index") if hasattr(hparams, "get") else None
        return None if value is None else int(value)
    return None if configured is None else int(configured)


def confusion_matrices(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Per-image confusion counts.

    Parameters
    ----------
    logits : Tensor (B, K, h, w)
        Class scores; resized (bilinear) to the label size when it differs.
    labels : Tensor (B, H, W) of integer class ids
    ignore_index : int or None

    Returns
    -------
    Tensor (B, K, K) int64, rows = label, columns = predicted class.
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits (B, K, h, w) and labels (B, H, W), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}: the model must return one segmentation logit map per image.")
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    k = logits.shape[1]
    pred = logits.argmax(dim=1)
    labels = labels.to(pred.device).long()
    valid = (labels >= 0) & (labels < k)
    if ignore_index is not None:
        valid &= labels != ignore_index
    return torch.stack([torch.bincount(labels[i][valid[i]] * k + pred[i][valid[i]], minlength=k * k)
                        for i in range(labels.shape[0])]).view(-1, k, k)


def quality_from_confusion(confusion: np.ndarray, ignore_index: int | None = None) -> dict[str, float]:
    """mIoU (mean over classes present in the labels or the predictions, ``ignore_index`` not a
    class: as torchmetrics' ``MulticlassJaccardIndex``) and pixel accuracy (a prediction of the
    ignored class on a labelled pixel is an error).

    Parameters
    ----------
    confusion : array (K, K), rows = label, columns = prediction (summed over images)
    ignore_index : int or None
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    total = confusion.sum()
    present = union > 0
    if ignore_index is not None and 0 <= ignore_index < len(present):
        present[ignore_index] = False
    return {"miou": float((tp[present] / union[present]).mean()) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan")}


def per_image_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(N, K, K) -> (N,) pixel accuracy per image (NaN for an image without labelled pixels)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(confusion, axis1=1, axis2=2) / total


def has_real_labels(dataset: Any, ignore_index: int | None) -> bool:
    """Whether a dataset's first image has a label file with at least one counted pixel (the real
    Cityscapes test split ships placeholder labels that are all "ignored")."""
    samples = getattr(dataset, "samples", None)
    if not samples or samples[0].label is None:
        return False
    label = np.asarray(dataset.label(0))
    return bool(np.any(label != ignore_index)) if ignore_index is not None else True


def accuracy_drop(confusions: dict[str, np.ndarray], clean: str = "ind") -> dict[str, np.ndarray]:
    """Per set other than ``clean``: (N,) pixel accuracy of the clean image minus that of the altered one."""
    base = per_image_accuracy(confusions[clean])
    return {name: base - per_image_accuracy(conf) for name, conf in confusions.items() if name != clean}


def harm_summary(confusions: dict[str, np.ndarray], clean: str = "ind",
                 ignore_index: int | None = None) -> dict[str, dict[str, float]]:
    """Quality per set and, for every other set, its drop against ``clean`` image by image.

    Parameters
    ----------
    confusions : dict set name -> (N, K, K)
        The same N images in every set, in the same order (an anomaly set alters the clean images).

    Returns
    -------
    dict set name -> ``miou``, ``pixel_accuracy``; other sets add ``miou_drop``,
    ``pixel_accuracy_drop`` (clean minus altered), ``hurt_fraction`` (images whose pixel accuracy
    fell by more than :data:`HURT_DROP`) and ``n_images``.
    """
    base = confusions[clean]
    base_q = quality_from_confusion(base.sum(0), ignore_index)
    out = {clean: {**base_q, "n_images": int(len(base))}}
    for name, conf in confusions.items():
        if name == clean:
            continue
        if conf.shape != base.shape:
            raise ValueError(f"Set {name!r} has confusion matrices {conf.shape}, {clean!r} {base.shape}: "
                             "the sets must hold the same images.")
        q = quality_from_confusion(conf.sum(0), ignore_index)
        drop = accuracy_drop({clean: base, name: conf}, clean)[name]
        drop = drop[np.isfinite(drop)]
        out[name] = {**q, "miou_drop": base_q["miou"] - q["miou"],
                     "pixel_accuracy_drop": base_q["pixel_accuracy"] - q["pixel_accuracy"],
                     "hurt_fraction": float((drop > HURT_DROP).mean()) if len(drop) else float("nan"),
                     "n_images": int(len(conf))}
    return out


class SegmentationQualityModule(pl.LightningModule):
    """``Trainer.predict`` wrapper: per image, the confusion matrix of the model's deterministic
    (eval-mode) segmentation against its label. Batches need ``image``, ``label`` and ``index``."""

    def __init__(self, model: torch.nn.Module, ignore_index: int | None) -> None:
        super().__init__()
        self.model = model
        self.ignore_index = ignore_index
        self.namespace = ""  # set by extract_set; the output does not depend on it (no randomness)

    @torch.inference_mode()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, np.ndarray]:
        if "label" not in batch:
            raise ValueError("Segmentation quality needs labelled images; this split's items carry no 'label'.")
        was_training = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()  # the network as deployed: no dropout, no DropBlock
            logits = self.model(batch["image"])
        finally:
            for m, flag in was_training.items():
                m.train(flag)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"The model returned {type(logits).__name__}, not a logit tensor (B, K, H, W); "
                             "disable report.segmentation for this model.")
        conf = confusion_matrices(logits, batch["label"], self.ignore_index)
        return {"index": batch["index"].cpu().numpy().astype(np.int64), "confusion": conf.cpu().numpy()}
