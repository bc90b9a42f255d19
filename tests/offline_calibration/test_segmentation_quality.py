"""Segmentation under anomalies: confusion matrices and mIoU against torchmetrics, accuracy against
scikit-learn, the per-image harm summary, the Lightning module, and the calibration report section."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_jaccard_index

from offline_calibration.calibrate import detection_by_harm
from offline_calibration.segmentation_quality import (
    HURT_DROP,
    SegmentationQualityModule,
    confusion_matrices,
    harm_summary,
    per_image_accuracy,
    quality_from_confusion,
    resolve_ignore_index,
)

K, IGNORE = 5, 4


def _batch(seed: int = 0, b: int = 3, h: int = 12, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, K, h, w, generator=g)
    labels = torch.randint(0, K, (b, h, w), generator=g)
    labels[:, 0, :3] = 250  # outside 0..K-1: never counted
    return logits, labels


def test_confusion_matrices_equal_torchmetrics_per_image() -> None:
    logits, labels = _batch()
    conf = confusion_matrices(logits, labels, IGNORE)
    assert conf.shape == (3, K, K) and conf.dtype == torch.int64
    for i in range(3):
        keep = labels[i] < K
        expected = multiclass_confusion_matrix(logits[i].argmax(0)[keep], labels[i][keep], K, ignore_index=IGNORE)
        assert torch.equal(conf[i], expected)
    assert conf[:, IGNORE].sum() == 0  # no row for the ignored label
    every = confusion_matrices(logits, labels, None)
    assert every[:, IGNORE].sum() == (labels == IGNORE).sum()


def test_low_resolution_logits_are_resized_to_the_label() -> None:
    logits, labels = _batch(h=16, w=32)
    small = logits[..., ::4, ::4].contiguous()
    up = F.interpolate(small, size=(16, 32), mode="bilinear", align_corners=False)
    assert torch.equal(confusion_matrices(small, labels, IGNORE), confusion_matrices(up, labels, IGNORE))
    with pytest.raises(ValueError, match="one segmentation logit map per image"):
        confusion_matrices(logits[0], labels, IGNORE)


def test_miou_and_accuracy_equal_torchmetrics_and_sklearn() -> None:
    logits, labels = _batch(seed=3, b=4, h=30, w=40)
    conf = confusion_matrices(logits, labels, IGNORE).sum(0).numpy()
    q = quality_from_confusion(conf, IGNORE)
    keep = (labels < K) & (labels != IGNORE)
    pred = logits.argmax(1)
    assert q["pixel_accuracy"] == pytest.approx(accuracy_score(labels[keep].numpy(), pred[keep].numpy()), abs=1e-12)
    # Every class but the ignored one occurs in labels and predictions here, so both mean over the same classes.
    assert (pred[keep] == IGNORE).any()  # predicting the ignored class on a labelled pixel: an error, not a class
    expected = multiclass_jaccard_index(pred[keep], labels[keep], K, average="macro", ignore_index=IGNORE)
    assert q["miou"] == pytest.approx(float(expected), abs=1e-6)
    # A class in neither labels nor predictions does not count; one only predicted counts as IoU 0.
    two = np.zeros((3, 3))
    two[0, 0], two[1, 1], two[1, 0] = 6, 2, 2
    assert quality_from_confusion(two)["miou"] == pytest.approx((6 / 8 + 2 / 4) / 2)
    two[0, 2] = 1
    assert quality_from_confusion(two)["miou"] == pytest.approx((6 / 9 + 2 / 4 + 0) / 3)
    assert np.isnan(quality_from_confusion(np.zeros((3, 3)))["pixel_accuracy"])


def _conf(correct: int, wrong: int) -> np.ndarray:
    c = np.zeros((2, 2), np.int64)
    c[0, 0], c[0, 1] = correct, wrong
    return c


def test_harm_summary_compares_each_image_with_its_clean_twin() -> None:
    clean = np.stack([_conf(90, 10), _conf(80, 20), _conf(70, 30), _conf(0, 0)])
    fog = np.stack([_conf(50, 50), _conf(78, 22), _conf(70, 30), _conf(0, 0)])
    assert per_image_accuracy(clean)[:3] == pytest.approx([0.9, 0.8, 0.7]) and np.isnan(per_image_accuracy(clean)[3])
    out = harm_summary({"ind": clean, "fog": fog})
    assert out["ind"]["pixel_accuracy"] == pytest.approx(240 / 300) and out["ind"]["n_images"] == 4
    assert out["fog"]["pixel_accuracy_drop"] == pytest.approx(240 / 300 - 198 / 300)
    # drops 0.40, 0.02, 0.00 (the unlabelled image does not count): one of three above HURT_DROP
    assert HURT_DROP == 0.05 and out["fog"]["hurt_fraction"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="the sets must hold the same images"):
        harm_summary({"ind": clean, "fog": fog[:2]})


def test_detection_by_harm_splits_the_altered_images() -> None:
    ind = np.array([0.1, 0.2, 0.3, 0.4])
    ood = np.array([0.9, 0.35, 0.05, 0.8, 7.0])  # the last image has no harm measured: left out
    drop = np.array([0.3, 0.2, 0.0, 0.01])
    r = detection_by_harm(ind, ood, drop, threshold=0.5, hurt_drop=0.05)
    assert (r["n_hurt"], r["n_unhurt"]) == (2, 2)
    assert r["auroc_hurt"] == pytest.approx((4 + 3) / 8) and r["tpr_hurt"] == pytest.approx(0.5)
    assert r["auroc_unhurt"] == pytest.approx((0 + 4) / 8) and r["tpr_unhurt"] == pytest.approx(0.5)
    none_hurt = detection_by_harm(ind, ood, np.zeros(4), threshold=0.5, hurt_drop=0.05)
    assert none_hurt["n_hurt"] == 0 and np.isnan(none_hurt["auroc_hurt"]) and np.isnan(none_hurt["tpr_hurt"])


class _TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, K, 1)
        self.drop = torch.nn.Dropout2d(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x))


def test_module_segments_in_eval_mode_and_restores_the_model() -> None:
    model = _TwoLayer().train()
    module = SegmentationQualityModule(model, IGNORE)
    g = torch.Generator().manual_seed(1)
    image, labels = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, K, (2, 8, 8), generator=g)
    out = [module.predict_step({"image": image, "label": labels, "index": torch.tensor([3, 4])}, 0) for _ in range(2)]
    assert np.array_equal(out[0]["confusion"], out[1]["confusion"])  # no dropout: deterministic
    assert out[0]["index"].tolist() == [3, 4] and out[0]["confusion"].shape == (2, K, K)
    with torch.no_grad():
        expected = confusion_matrices(model.eval().conv(image), labels, IGNORE)
    model.train()
    assert np.array_equal(out[0]["confusion"], expected.numpy())
    assert model.training and model.drop.training  # left as it was
    with pytest.raises(ValueError, match="no 'label'"):
        module.predict_step({"image": image, "index": torch.tensor([0, 1])}, 0)


def test_ignore_index_from_the_model_or_the_config() -> None:
    from offline_calibration.model import DeepLabV3PlusModule

    lightning = DeepLabV3PlusModule(encoder_name="resnet18", num_classes=20, ignore_index=19)
    assert resolve_ignore_index(lightning, "auto") == 19
    assert resolve_ignore_index(_TwoLayer(), "auto") is None  # a plain module: every label counts
    assert resolve_ignore_index(lightning, 7) == 7 and resolve_ignore_index(lightning, None) is None


def test_calibration_report_has_the_segmentation_section(monitor_files: Any) -> None:
    """On the session's tiny calibration: test labels are real, so harm is measured on test and the
    detectors are scored on hurt and unhurt images; InD mIoU equals torchmetrics on the same images."""
    from lsea_monitor.checkpoint import load_model
    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.cityscapes import IGNORE_TRAIN_ID, CityscapesDataset

    report = json.loads(monitor_files.report.read_text())
    seg = report["segmentation"]
    assert seg["split"] == "test" and seg["ignore_index"] == IGNORE_TRAIN_ID
    assert set(seg["sets"]) == {"ind", "mud", "fog", "sunflare"}
    for name in ("mud", "fog", "sunflare"):
        q = seg["sets"][name]
        assert q["miou_drop"] == pytest.approx(seg["sets"]["ind"]["miou"] - q["miou"])
        assert 0.0 <= q["hurt_fraction"] <= 1.0
    by_harm = seg["detection_by_harm"]
    assert set(by_harm) == set(report["detectors"])
    for per_kind in by_harm.values():
        for name, r in per_kind.items():
            assert r["n_hurt"] + r["n_unhurt"] == seg["sets"][name]["n_images"]
    assert "## Segmentation under each anomaly (test" in (monitor_files.report.parent / "report.md").read_text()

    model = load_model(str(monitor_files.checkpoint), monitor_files.model_class).eval()
    ds = CityscapesDataset(monitor_files.data_root, "test", Preprocessing(monitor_files.height, monitor_files.width),
                           return_labels=True)
    n = seg["sets"]["ind"]["n_images"]
    with torch.no_grad():
        items = [ds[i] for i in range(n)]
        pred = model(torch.stack([it["image"] for it in items])).argmax(1)
    labels = torch.stack([it["label"] for it in items])
    per_class = multiclass_jaccard_index(pred, labels, 20, average="none", ignore_index=IGNORE_TRAIN_ID)
    present = torch.zeros(20, dtype=torch.bool)
    keep = labels != IGNORE_TRAIN_ID
    present[labels[keep].unique()] = True
    present[pred[keep].unique()] = True
    present[IGNORE_TRAIN_ID] = False
    assert seg["sets"]["ind"]["miou"] == pytest.approx(float(per_class[present].mean()), abs=1e-6)


@pytest.mark.parametrize("section, message", [
    ({"split": "train"}, "segmentation.split must be auto, val or test"),
    ({"max_images": -1}, "segmentation.max_images must be an integer >= 0"),
    ({"ignore_index": "void"}, 'segmentation.ignore_index must be "auto", an integer or null'),
    ({"ignore_index": True}, 'segmentation.ignore_index must be "auto", an integer or null'),
])
def test_segmentation_config_errors_are_named(monitor_files: Any, tmp_path: Any, section: dict, message: str) -> None:
    import yaml

    from lsea_monitor.errors import InputValidationError
    from offline_calibration.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "o", "dataset": {"root": str(monitor_files.data_root)},
                                    "model": {"checkpoint": str(monitor_files.checkpoint)}, "segmentation": section}))
    with pytest.raises(InputValidationError, match=message):
        load_config(path)


@pytest.mark.parametrize("test_labels", ["placeholders", "missing", "real"])
def test_split_auto_falls_back_to_val_without_real_test_labels(monitor_files: Any, tmp_path: Any,
                                                                test_labels: str) -> None:
    """The public Cityscapes test split ships all-ignored label files (or none are downloaded)."""
    import shutil

    import cv2
    import yaml

    from lsea_monitor.checkpoint import load_model
    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.calibrate import segmentation_under_anomalies
    from offline_calibration.config import load_config

    root = tmp_path / "data"
    shutil.copytree(monitor_files.data_root, root)
    gt_test = root / "gtFine" / "test"
    if test_labels == "missing":
        shutil.rmtree(gt_test)
    elif test_labels == "placeholders":
        for path in gt_test.rglob("*_labelIds.png"):
            cv2.imwrite(str(path), np.zeros_like(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))  # id 0: unlabeled
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "o", "dataset": {"root": str(root)},
                                    "model": {"checkpoint": str(monitor_files.checkpoint)},
                                    "segmentation": {"max_images": 2}}))
    cfg = load_config(path)
    model = load_model(str(monitor_files.checkpoint), monitor_files.model_class)
    section, drop = segmentation_under_anomalies(
        cfg, model, Preprocessing(monitor_files.height, monitor_files.width), {"case": test_labels},
        {"batch_size": 2, "progress": False}, {}, lambda *_: None)
    assert section["split"] == ("test" if test_labels == "real" else "val")
    assert section["sets"]["ind"]["n_images"] == 2 and set(drop) == {"mud", "fog", "sunflare"}
