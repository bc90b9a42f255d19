"""Calibration report: ``report.json`` (machine-readable), plots, and ``report.md`` linking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lsea_monitor.metrics import roc_curve_points
from lsea_monitor.plots import plot_pacmap, plot_roc_curves, plot_score_histograms

METRIC_COLUMNS = ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr_ood_positive", "fpr_at_95_tpr_ind_positive",
                  "accuracy", "mcc", "f1")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def metrics_table(rows: Mapping[str, Mapping[str, float]], columns: tuple[str, ...] = METRIC_COLUMNS) -> str:
    """Markdown table, one row per name."""
    head = "| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    body = "".join(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |\n" for name, row in rows.items())
    return head + body


def _num(value: float, digits: int) -> str:
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def segmentation_section(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the model's segmentation per set next to the deployed detector's test results."""
    seg, deployed = report["segmentation"], report["deployed"]["detector"]
    detection = report["detectors"][deployed]["ood_sets"]
    by_harm = seg.get("detection_by_harm", {}).get(deployed)
    n = seg["sets"]["ind"]["n_images"]
    lines = [f"## Segmentation under each anomaly ({seg['split']}, {n} images per set)", "",
             "How much each anomaly hurts the model (eval mode, no dropout): a missed anomaly that the "
             "network segments through matters less than a missed one that wrecks the segmentation. "
             f"Hurt = pixel accuracy down by more than {100 * seg['hurt_drop']:g} points on that image.", ""]
    head = f"| set | mIoU | pixel accuracy | mIoU drop | accuracy drop | images hurt | {deployed} AUROC (test) |"
    if by_harm:
        head += " AUROC hurt / unhurt | TPR at threshold hurt / unhurt |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for name, q in seg["sets"].items():
        if name == "ind":
            lines.append(f"| InD | {q['miou']:.3f} | {q['pixel_accuracy']:.3f} |" + " |" * (head.count("|") - 4))
            continue
        row = (f"| {name} | {q['miou']:.3f} | {q['pixel_accuracy']:.3f} | {q['miou_drop']:.3f} | "
               f"{q['pixel_accuracy_drop']:.3f} | {100 * q['hurt_fraction']:.0f} % | "
               f"{detection.get(name, {}).get('auroc', float('nan')):.3f} |")
        if by_harm:
            h = by_harm[name]
            row += (f" {_num(h['auroc_hurt'], 3)} / {_num(h['auroc_unhurt'], 3)} ({h['n_hurt']} / {h['n_unhurt']}"
                    f" images) | {_num(h['tpr_hurt'], 2)} / {_num(h['tpr_unhurt'], 2)} |")
        lines.append(row)
    return lines + [""]


def write_report(report: dict[str, Any], out: Path, *, features: dict[str, dict[str, np.ndarray]],
                 scores: dict[str, dict[str, np.ndarray]], cfg: Any) -> None:
    """Plots (ROC per OoD set, PaCMAP of validation features, score histograms) and the readable report."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    ood_sets = list(next(iter(report["detectors"].values()))["ood_sets"])
    files: dict[str, str] = {}
    for ood in ood_sets:
        curves = {}
        for name, by_set in scores.items():
            s = np.r_[by_set["test InD"], by_set[f"test {ood}"]]
            y = np.r_[np.zeros(len(by_set["test InD"]), bool), np.ones(len(by_set[f"test {ood}"]), bool)]
            fpr, tpr, _ = roc_curve_points(s, y)
            src = report["detectors"].get(name) or report["baselines"][name.removeprefix("baseline ")]
            curves[name] = (fpr, tpr, src["ood_sets"][ood]["auroc"])
        files[f"roc_{ood}"] = str(plot_roc_curves(curves, plots / f"roc_{ood}.png",
                                                  f"OoD detection ROC, test InD vs {ood}").relative_to(out))
    for name, by_set in scores.items():
        if name in report["detectors"]:
            thr = report["detectors"][name]["threshold"]
            files[f"hist_{name}"] = str(plot_score_histograms(by_set, thr, plots / f"scores_{name}.png",
                                                              f"{name} scores").relative_to(out))
    if cfg.report.pacmap:
        files["pacmap"] = str(plot_pacmap(features["val/ind"]["h_z"], features["val/all"]["h_z"],
                                          plots / "pacmap_val.png", n_neighbors=cfg.report.pacmap_neighbors,
                                          title="Latent entropy H(z|x): validation InD vs anomalies").relative_to(out))
    report["plots"] = files
    write_json(report, out / "report.json")

    lines = ["# LSEA Monitor calibration report", "",
             f"- model: `{report['model']['class']}`, layer `{report['model']['layer']}`, "
             f"checkpoint sha256 `{report['model']['checkpoint_sha256'][:16]}`",
             f"- MC samples M = {cfg.sampling.mc_samples}, sampler `{report['model']['sampler']}`, "
             f"PCA {cfg.detection.pca_components} components",
             *([f"- KDEClassifier fitted on {report['fit']['n_val_ind']} val InD + {report['fit']['n_val_ood_rows']} "
                f"val OoD rows ({report['fit']['fit_ood']}), bandwidth {report['fit']['kde_bandwidth']:g}"
                + (f" (chosen by image-grouped CV AUROC on val: {report['fit']['kde_bandwidth_cv_auroc']})"
                   if report['fit'].get('kde_bandwidth_cv_auroc') else "")] if report.get("fit") else []),
             "- images: " + ", ".join(f"{k} {v}" for k, v in report["data"].items()),
             f"- deployed: **{report['deployed']['detector']}**, threshold {report['deployed']['threshold']:.6g}, "
             f"artefact `{Path(report['deployed']['artefact']).name}`",
             f"- conventions: {report['metric_conventions']['score']}; thresholds "
             f"{report['metric_conventions']['threshold']}.", ""]
    for ood in ood_sets:
        rows = {name: r["ood_sets"][ood] for name, r in report["detectors"].items()}
        rows.update({f"baseline {name}": r["ood_sets"][ood] for name, r in report["baselines"].items()})
        lines += [f"## Test InD vs {ood}", "", metrics_table(rows), f"![ROC {ood}]({files[f'roc_{ood}']})", ""]
    if "same_images" in report:
        same = report["same_images"]
        counts = same.get("n_images", {})
        sizes = "" if all(v == same["n_images_per_set"] for v in counts.values()) else (
            ": " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"## Detectors and baselines on the same test images ({same['n_images_per_set']} per set{sizes})",
                  "", "The baselines run on the first images of each set only (each costs 1 + M full passes); "
                  "AUROC of every detector and baseline on the images both scored:", "",
                  "| | " + " | ".join(ood_sets) + " |", "|---|" + "---|" * len(ood_sets)]
        lines += [f"| {name} | " + " | ".join(_num(row[ood], 4) for ood in ood_sets) + " |"
                  for name, row in same["auroc"].items()]
        lines += [""]
    if "cross_type" in report:
        lines += ["## Cross-type generalisation (fit on the other kinds, test on the held-out one)", ""]
        for held, r in report["cross_type"].items():
            rows = {k: v for k, v in r.items() if k != "fitted_on"}
            lines += [f"### {held} (fitted on {', '.join(r['fitted_on'])})", "", metrics_table(rows), ""]
    if "segmentation" in report:
        lines += segmentation_section(report)
    lines += ["## Score distributions", ""]
    lines += [f"![{k}]({v})" for k, v in files.items() if k.startswith("hist_")]
    if "pacmap" in files:
        lines += ["", "## PaCMAP projection of validation entropy features", "", f"![PaCMAP]({files['pacmap']})"]
    timing = report["timing_s"]
    lines += ["", "## Timing", "", f"total {timing['total']} s; extraction per set (s): "
              + ", ".join(f"{k} {v}" for k, v in timing["extraction"].items()), ""]
    (out / "report.md").write_text("\n".join(lines))
