"""The guide's workflow, with only its import lines changed, on a small DeepLabV3+ and small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lsea_monitor.compat import (
    Hook,
    KDEClassifier,
    build_ood_detection_ds,
    deeplabv3p_apply_dropout,
    deeplabv3p_get_ls_mcd_samples,
    get_dl_h_z,
    get_ood_detector_results,
    plot_roc_ood_detector,
    plot_samples_pacmap,
)
from lsea_monitor.entropy import entropy_per_dim


def _loader(n: int, ood: bool, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * torch.linspace(0, 1, 128).view(1, 1, 1, 128)
    images = base.expand(n, 3, 64, 128) + 0.2 * torch.rand(n, 3, 64, 128, generator=g)
    if ood:  # "fog": low contrast, bright
        images = 0.15 * images + 2.0
    return DataLoader(TensorDataset(images, torch.zeros(n, 64, 128, dtype=torch.long)), batch_size=3)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from offline_calibration.model import DeepLabV3PlusModule

    torch.manual_seed(0)
    return DeepLabV3PlusModule(encoder_name="resnet18", block_size=2, drop_prob=0.3)


def test_guide_workflow(model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mc_samples = 10
    hook = Hook(model.deeplab_v3plus_model.drop_block1)
    model.deeplab_v3plus_model.eval()
    model.deeplab_v3plus_model.apply(deeplabv3p_apply_dropout)
    assert model.deeplab_v3plus_model.drop_block1.training
    assert not model.deeplab_v3plus_model.encoder.bn1.training  # BatchNorm stays in eval

    sets = {name: deeplabv3p_get_ls_mcd_samples(model, _loader(12, "ood" in name, i), mc_samples, hook)
            for i, name in enumerate(["ind_valid", "ind_test", "ood_valid", "ood_test"])}
    assert sets["ind_valid"].shape == (12 * mc_samples, 512)
    h = {name: get_dl_h_z(s, mcd_samples_nro=mc_samples) for name, s in sets.items()}
    h_mvn, h_z = h["ind_valid"]
    assert h_mvn.shape == (12, 1) and h_z.shape == (12, 512)
    # Rows are grouped per image: image 0's entropy comes from the first M rows only.
    np.testing.assert_allclose(h_z[0], entropy_per_dim(sets["ind_valid"][:mc_samples].numpy()[None])[0])

    assert plot_samples_pacmap(h["ind_valid"][1], h["ood_valid"][1], neighbors=5, title="t").is_file()
    x_train, y_train, x_test, y_test = build_ood_detection_ds(h["ind_valid"][1], h["ood_valid"][1],
                                                              h["ind_test"][1], h["ood_test"][1])
    assert x_train.shape == (24, 16) and y_train.shape == (24, 1)
    assert y_train[:12].sum() == 0 and y_train[12:].min() == 1  # InD = 0 first, then OoD = 1

    monitor = KDEClassifier(bandwidth=0.8)
    monitor.fit(x_train, y_train.ravel())
    results = get_ood_detector_results("cs OoD monitor", monitor, x_test, y_test)
    row = results["cs OoD monitor"]
    assert set(row) == {"fpr", "tpr", "auc", "acc", "mcc", "f1", "fpr@95"}
    assert row["auc"] > 0.9  # bright low-contrast images are far from InD in latent entropy
    assert plot_roc_ood_detector(results, "Anomalies", "ROC").is_file()
    hook.close()
