"""Tests of lsea_monitor.plots: files are written, valid, and errors are clear."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import lsea_monitor.plots
from lsea_monitor.errors import InputValidationError
from lsea_monitor.metrics import roc_curve_points
from lsea_monitor.plots import plot_pacmap, plot_roc_curves, plot_score_histograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _scores(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, 200), rng.normal(2, 1, 150)


def test_roc_curves_png(tmp_path: Path) -> None:
    ind, ood = _scores()
    scores, is_ood = np.r_[ind, ood], np.r_[np.zeros(200), np.ones(150)]
    fpr, tpr, _ = roc_curve_points(scores, is_ood)
    out = plot_roc_curves(
        {"KDE": (fpr, tpr, 0.91), "Mahalanobis": ([0, 0.5, 1], [0, 0.7, 1], 0.6)},
        tmp_path / "sub" / "roc.png",
        "ROC",
    )
    assert out == tmp_path / "sub" / "roc.png"
    _assert_png(out)


def test_score_histograms_png_and_svg(tmp_path: Path) -> None:
    ind, ood = _scores(1)
    out = plot_score_histograms({"InD": ind, "OoD": ood}, 1.2, tmp_path / "hist.png", "scores")
    _assert_png(out)
    svg = plot_score_histograms({"constant": np.zeros(5)}, None, tmp_path / "hist.svg", "t")
    assert svg.read_text().lstrip().startswith("<?xml")


def test_missing_suffix_defaults_to_png(tmp_path: Path) -> None:
    out = plot_score_histograms({"a": [1.0, 2.0]}, 1.5, tmp_path / "noext", "t")
    assert out.suffix == ".png"
    _assert_png(out)


def test_pacmap_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    out = plot_pacmap(rng.normal(0, 1, (30, 6)), rng.normal(4, 1, (20, 6)), tmp_path / "pacmap.png",
                      n_neighbors=5, title="InD vs OoD")
    _assert_png(out)


def test_pacmap_is_imported_lazily() -> None:
    # pacmap compiles numba code on import: only plot_pacmap may import it, not the module.
    tree = ast.parse(Path(lsea_monitor.plots.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names]
    names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not any(name.startswith("pacmap") for name in names)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputValidationError, match="at least one curve"):
        plot_roc_curves({}, tmp_path / "a.png", "t")
    with pytest.raises(InputValidationError, match="differ in length: 3 and 2"):
        plot_roc_curves({"x": ([0, 0.5, 1], [0, 1], 0.5)}, tmp_path / "a.png", "t")
    with pytest.raises(InputValidationError, match=r"unknown format 'xyz'"):
        plot_score_histograms({"a": [1.0]}, None, tmp_path / "a.xyz", "t")
    with pytest.raises(InputValidationError, match="1 non-finite"):
        plot_score_histograms({"a": [1.0, np.nan]}, None, tmp_path / "a.png", "t")
    with pytest.raises(InputValidationError, match="threshold must be finite"):
        plot_score_histograms({"a": [1.0]}, float("inf"), tmp_path / "a.png", "t")
    with pytest.raises(InputValidationError, match="ood_features has 3 features but 2 were in ind_features"):
        plot_pacmap(np.zeros((5, 2)), np.zeros((5, 3)), tmp_path / "p.png")
    with pytest.raises(InputValidationError, match="at least 5 samples"):
        plot_pacmap(np.zeros((2, 2)), np.ones((2, 2)), tmp_path / "p.png")
    assert not list(tmp_path.iterdir())
