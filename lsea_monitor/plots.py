"""Report plots written to image files: ROC curves, PaCMAP projection, score histograms.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: no display is needed, no global backend is switched, and nothing leaks
between calls. The file format follows the path's suffix (PNG when it has none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from lsea_monitor.dataset import as_feature_matrix
from lsea_monitor.errors import InputValidationError

__all__ = ["plot_pacmap", "plot_roc_curves", "plot_score_histograms"]

_IND_COLOUR, _OOD_COLOUR = "tab:blue", "tab:red"


def _new_figure(width_in: float = 6.4, height_in: float = 4.8) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    if not out.suffix:
        out = out.with_suffix(".png")
    fmt = out.suffix[1:].lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InputValidationError(
            f"Cannot write a plot as {out.name!r}: unknown format {fmt!r}; use one of {sorted(supported)}."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=fmt, dpi=120)
    return out


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InputValidationError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputValidationError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} non-finite value(s).")
    return arr


def plot_roc_curves(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]],
    path: str | os.PathLike[str],
    title: str = "ROC curves (OoD positive)",
) -> Path:
    """One ROC curve per detector, AUROC in the legend, chance diagonal for reference.

    Parameters
    ----------
    curves : mapping of str to (fpr, tpr, auroc)
        ``fpr`` and ``tpr`` of equal length, e.g. from
        :func:`~lsea_monitor.metrics.roc_curve_points`; ``auroc`` a float.
    path : str or PathLike
        Output file; the suffix selects the format.
    title : str

    Returns
    -------
    Path
        The file written.
    """
    if not curves:
        raise InputValidationError("plot_roc_curves needs at least one curve, got none.")
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUROC = 0.500)")
    for name, (fpr, tpr, auroc) in curves.items():
        fpr_arr, tpr_arr = _as_1d(fpr, f"fpr of {name!r}"), _as_1d(tpr, f"tpr of {name!r}")
        if fpr_arr.shape != tpr_arr.shape:
            raise InputValidationError(
                f"fpr and tpr of {name!r} differ in length: {fpr_arr.size} and {tpr_arr.size}."
            )
        ax.plot(fpr_arr, tpr_arr, linewidth=2, label=f"{name} (AUROC = {float(auroc):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (InD flagged)",
           ylabel="True positive rate (OoD flagged)", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pacmap(
    ind_features: ArrayLike,
    ood_features: ArrayLike,
    path: str | os.PathLike[str],
    *,
    n_neighbors: int | None = None,
    title: str = "",
    random_state: int | None = 0,
) -> Path:
    """2-D PaCMAP projection of InD vs OoD features (as the original ``plot_samples_pacmap``).

    PaCMAP with ``MN_ratio=0.5``, ``FP_ratio=2.0``, ``init='pca'``. The first call in a process
    compiles numba code (about 10 s).

    Parameters
    ----------
    ind_features, ood_features : array_like, shape (n_ind, n_features), (n_ood, n_features)
        E.g. entropy features in nats, or their PCA components.
    path : str or PathLike
    n_neighbors : int or None, default None
        PaCMAP's neighbourhood size; None lets PaCMAP choose (10 below 10 000 samples).
    title : str, default ""
    random_state : int or None, default 0

    Returns
    -------
    Path
    """
    ind = as_feature_matrix(ind_features, "ind_features")
    ood = as_feature_matrix(ood_features, "ood_features", ind.shape[1], "in ind_features")
    if len(ind) + len(ood) < 5:
        raise InputValidationError(
            f"PaCMAP needs at least 5 samples in all, got {len(ind)} InD + {len(ood)} OoD."
        )
    import pacmap  # lazy: heavy import, compiles numba on first use

    reducer = pacmap.PaCMAP(
        n_components=2, n_neighbors=n_neighbors, MN_ratio=0.5, FP_ratio=2.0, random_state=random_state
    )
    import torch

    # PaCMAP's numba code leaves the process's OpenMP pool at one thread, which torch shares: the
    # scores computed afterwards in this process (the demo's replay) would then round differently
    # from a fresh process's, and the entropy of near-identical MC samples amplifies that.
    threads = torch.get_num_threads()
    try:
        embedding = reducer.fit_transform(np.vstack([ind, ood]), init="pca")
    finally:
        torch.set_num_threads(threads)
    fig = _new_figure(6.4, 6.0)
    ax = fig.add_subplot()
    ax.scatter(*embedding[: len(ind)].T, s=8, alpha=0.7, color=_IND_COLOUR, label=f"InD ({len(ind)})")
    ax.scatter(*embedding[len(ind) :].T, s=8, alpha=0.7, color=_OOD_COLOUR, label=f"OoD ({len(ood)})")
    ax.set(title=title or "PaCMAP of latent entropy features", xticks=[], yticks=[])
    ax.legend(loc="best")
    return _save(fig, path)


def plot_score_histograms(
    scores_by_set: Mapping[str, ArrayLike],
    threshold: float | None,
    path: str | os.PathLike[str],
    title: str = "Detector scores (higher = more OoD)",
) -> Path:
    """Overlaid score histograms of several sets on shared bins, with the threshold line.

    Parameters
    ----------
    scores_by_set : mapping of str to array_like, shape (n_i,)
        E.g. ``{"InD test": ..., "OoD test": ...}``.
    threshold : float or None
        Drawn as a vertical line (flag iff ``score > threshold``); None draws none.
    path : str or PathLike
    title : str

    Returns
    -------
    Path
    """
    if not scores_by_set:
        raise InputValidationError("plot_score_histograms needs at least one set of scores, got none.")
    sets = {name: _as_1d(values, f"scores of {name!r}") for name, values in scores_by_set.items()}
    if threshold is not None and not math.isfinite(float(threshold)):
        raise InputValidationError(f"threshold must be finite or None, got {threshold!r}.")
    every = np.concatenate(list(sets.values()))
    low, high = float(every.min()), float(every.max())
    if threshold is not None:
        low, high = min(low, float(threshold)), max(high, float(threshold))
    if high == low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 41)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, values in sets.items():
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{name} ({values.size})")
    if threshold is not None:
        label = f"threshold = {float(threshold):.4g}"
        ax.axvline(float(threshold), color="black", linestyle="--", label=label)
    ax.set(xlabel="score", ylabel="density", title=title)
    ax.legend(loc="best")
    return _save(fig, path)
