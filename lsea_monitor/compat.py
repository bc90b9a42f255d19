"""Drop-in names of the original package (``ls_ood_detect_cea``), backed by this project's core.

The guide's workflow runs with only its import lines changed::

    from lsea_monitor.compat import Hook, deeplabv3p_apply_dropout, deeplabv3p_get_ls_mcd_samples
    from lsea_monitor.compat import get_dl_h_z, build_ood_detection_ds, plot_samples_pacmap
    from lsea_monitor.compat import KDEClassifier, get_ood_detector_results, plot_roc_ood_detector

Signatures and return conventions are the guide's (labels InD = 0, OoD = 1; samples stacked
image-major, M consecutive rows per image), with the original's known defects fixed: any batch
size groups samples per image, M <= 5 works (k = min(5, M - 1)), and the MC samples come from the
core's fast sampler. Differences: ``get_ood_detector_results`` returns a plain dict keyed by the
classifier name instead of a pandas DataFrame, and the plots are written to files (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lsea_monitor.dataset import build_detection_dataset
from lsea_monitor.detectors import KDEClassifier
from lsea_monitor.entropy import latent_entropy
from lsea_monitor.errors import InputValidationError
from lsea_monitor.hooks import Hook, enable_mc_dropout, is_dropout_module
from lsea_monitor.metrics import ood_metrics, roc_curve_points
from lsea_monitor.plots import plot_pacmap, plot_roc_curves
from lsea_monitor.sampling import LatentMCSampler

__all__ = ["Hook", "deeplabv3p_apply_dropout", "deeplabv3p_get_ls_mcd_samples", "get_dl_h_z",
           "build_ood_detection_ds", "plot_samples_pacmap", "KDEClassifier", "get_ood_detector_results",
           "plot_roc_ood_detector"]


def deeplabv3p_apply_dropout(m: nn.Module) -> None:
    """``model.apply(deeplabv3p_apply_dropout)``: dropout-family modules to train mode, others untouched."""
    if is_dropout_module(m):
        m.training = True


def _network_and_path(model_module: nn.Module, hook: Hook) -> tuple[nn.Module, str]:
    # The guide calls model_module.deeplab_v3plus_model(image); any other module is run as is.
    net = getattr(model_module, "deeplab_v3plus_model", model_module)
    for name, module in net.named_modules():
        if module is hook.module and name:
            return net, name
    raise InputValidationError("The hooked module is not part of the model given to deeplabv3p_get_ls_mcd_samples.")


def deeplabv3p_get_ls_mcd_samples(model_module: nn.Module, data_loader: Iterable[Any], mcd_nro_samples: int,
                                  hook_dropout_layer: Hook) -> torch.Tensor:
    """Latent MC-dropout samples of every image of a loader.

    Parameters
    ----------
    model_module : nn.Module
        The LightningModule (its ``deeplab_v3plus_model`` is run) or the network itself.
    data_loader : iterable of (image, label) tuples or of dicts with an ``image`` key
    mcd_nro_samples : int
        M.
    hook_dropout_layer : Hook
        Hook on the layer to sample (the guide: ``drop_block1``).

    Returns
    -------
    Tensor of shape (N * M, C): M consecutive rows per image, in loader order.
    """
    net, path = _network_and_path(model_module, hook_dropout_layer)
    sampler = LatentMCSampler(net, path, int(mcd_nro_samples), strategy="fast")
    device = next(net.parameters()).device
    chunks = []
    for batch in tqdm(data_loader, desc="Extracting MCD samples"):
        image = batch["image"] if isinstance(batch, dict) else batch[0]
        samples = sampler.sample(image.to(device))  # (B, M, C)
        chunks.append(samples.reshape(-1, samples.shape[-1]))
    enable_mc_dropout(net)  # the guide leaves the model with dropout enabled
    return torch.cat(chunks)


def get_dl_h_z(dl_z_samples: torch.Tensor | np.ndarray, mcd_samples_nro: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Entropies of stacked MC samples (N * M, C): ``(h_mvn (N, 1), h_z (N, C))`` in nats."""
    z = dl_z_samples.detach().cpu().numpy() if isinstance(dl_z_samples, torch.Tensor) else np.asarray(dl_z_samples)
    if z.ndim != 2 or z.shape[0] % mcd_samples_nro:
        raise InputValidationError(f"Expected (N * {mcd_samples_nro}, C) samples, got shape {z.shape}.")
    h_joint, h_z = latent_entropy(z.reshape(-1, mcd_samples_nro, z.shape[1]).astype(np.float64))
    return np.asarray(h_joint)[:, None], np.asarray(h_z)


def build_ood_detection_ds(ind_valid: np.ndarray, ood_valid: np.ndarray, ind_test: np.ndarray, ood_test: np.ndarray,
                           apply_pca: bool = True, pca_nro_comp: int = 16, pca_svd_solver: str = "randomized",
                           pca_whiten: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_ds, labels_train (n, 1), test_ds, labels_test (m, 1))``, InD = 0, OoD = 1, PCA fitted on train."""
    ds = build_detection_dataset(ind_valid, ood_valid, ind_test, ood_test,
                                 pca_components=pca_nro_comp if apply_pca else None, whiten=pca_whiten)
    return ds.x_train, ds.y_train.reshape(-1, 1), ds.x_test, ds.y_test.reshape(-1, 1)


def plot_samples_pacmap(samples_ind: np.ndarray, samples_ood: np.ndarray, neighbors: int = 25,
                        title: str = "Latent entropy PaCMAP", save_path: str | Path = "pacmap.png") -> Path:
    """PaCMAP projection of InD vs OoD features, written to ``save_path``."""
    return plot_pacmap(samples_ind, samples_ood, save_path, n_neighbors=neighbors, title=title)


def get_ood_detector_results(classifier_name: str, classifier_model: Any, samples_test_ds: np.ndarray,
                             labels_test_ds: np.ndarray) -> dict[str, dict[str, Any]]:
    """The guide's results row: ROC points, AUROC, accuracy / MCC / F1 at posterior 0.5, fpr@95.

    ``fpr@95`` follows the guide: OoD (label 1) is the positive class, score = posterior of OoD,
    FPR at the first ROC threshold where TPR >= 0.95.
    """
    labels = np.asarray(labels_test_ds).reshape(-1).astype(bool)
    scores = np.asarray(classifier_model.predict_proba(samples_test_ds))[:, 1]
    fpr, tpr, _ = roc_curve_points(scores, labels)
    m = ood_metrics(scores, labels, 0.5)
    row = {"fpr": fpr, "tpr": tpr, "auc": m["auroc"], "acc": m["accuracy"], "mcc": m["mcc"], "f1": m["f1"],
           "fpr@95": m["fpr_at_95_tpr_ood_positive"]}
    return {classifier_name: row}


def plot_roc_ood_detector(results_table: dict[str, dict[str, Any]], legend_title: str = "Legend Title",
                          plot_title: str = "Plot Title", save_path: str | Path = "roc.png") -> Path:
    """ROC curve per classifier of ``get_ood_detector_results`` output(s), written to ``save_path``."""
    curves = {f"{legend_title}: {name}": (r["fpr"], r["tpr"], r["auc"]) for name, r in results_table.items()}
    return plot_roc_curves(curves, save_path, plot_title)
