"""``lsea-calibrate --config <yaml>``: fit the latent-entropy OoD detectors and write the artefact.

Steps: load the user's checkpoint; extract latent MC entropies (cached, resumable, through
Lightning) for InD and each anomaly kind on the validation and test splits; fit the guide's
KDEClassifier and the one-class KDE, Mahalanobis and PPCA detectors on validation features; pick each
operating threshold at the target InD TPR from out-of-fold scores; evaluate on the test split per
OoD set, against pytorch-ood baselines, and across anomaly types; write the deployed detector's
artefact, ``report.json``, plots and ``report.md``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from lsea_monitor.artefact import DetectorArtefact, ModelBinding, sha256_file
from lsea_monitor.checkpoint import load_model
from lsea_monitor.dataset import LatentPCA
from lsea_monitor.detectors import KDEClassifier, MahalanobisDetector, OneClassKDE, PPCADetector
from lsea_monitor.errors import DatasetLayoutError, InputValidationError, LseaError
from lsea_monitor.metrics import ood_metrics
from lsea_monitor.preprocessing import Preprocessing
from lsea_monitor.threshold import select_threshold
from offline_calibration.anomalies import ANOMALY_VERSION
from offline_calibration.config import CalibrationConfig, load_config
from offline_calibration.extraction import (
    FeatureCache,
    LatentExtractionModule,
    ScoreExtractionModule,
    extract_set,
    image_list_digest,
)


def build_image_sets(cfg: CalibrationConfig, preprocessing: Preprocessing, max_images: int = 0,
                     splits: tuple[str, ...] = ("val", "test"), return_labels: bool = False) -> dict[str, Any]:
    """Datasets keyed ``<split>/<set>``: ``ind`` plus one per anomaly kind (and WoodScape soiling on test)."""
    d = cfg.dataset
    limit = (max_images or d.max_images) or None
    sets: dict[str, Any] = {}
    if d.kind == "cityscapes":
        from offline_calibration.cityscapes import CityscapesDataset as DatasetCls
    else:
        from offline_calibration.woodscape import WoodScapeDataset as DatasetCls
    for split in splits:
        sets[f"{split}/ind"] = DatasetCls(d.root, split, preprocessing, return_labels=return_labels, max_images=limit)
        for kind in d.anomaly_kinds:
            sets[f"{split}/{kind}"] = DatasetCls(d.root, split, preprocessing, anomaly=kind,
                                                 anomaly_seed=d.anomaly_seed, return_labels=return_labels,
                                                 max_images=limit)
    if d.kind == "woodscape" and d.soiling and "test" in splits:
        from offline_calibration.woodscape import WoodScapeSoilingDataset

        sets["test/soiling"] = WoodScapeSoilingDataset(d.root, "test", preprocessing, max_images=limit)
    return sets


def set_cache(cfg: CalibrationConfig, group: str, set_name: str, dataset: Any, key: dict[str, Any]) -> FeatureCache:
    """The cache of one image set: ``<cache_dir>/<group>/<split>-<set>``, keyed by ``key``, the set's
    name and the digest of its file list (:func:`~offline_calibration.extraction.image_list_digest`:
    entries are addressed by position, so an image added, removed or rewritten must not reuse them)."""
    return FeatureCache(Path(cfg.cache_dir) / group / set_name.replace("/", "-"),
                        {**key, "set": set_name, "images": image_list_digest(dataset)})


def random_kind_per_image(kinds: list[str], n: int, seed: int, split: str) -> np.ndarray:
    """For the mixed OoD set ``all``: each image's anomaly kind (position in ``kinds``), equal chance.

    With the three original kinds, the pick is the one the data modules' anomaly loaders make
    (``RandomAnomaly.kind_for``), so ``all`` alters each image with the same kind as they do.
    """
    from offline_calibration.anomalies import ANOMALY_KINDS, RandomAnomaly, index_seed

    if sorted(kinds) == sorted(ANOMALY_KINDS):
        picker = RandomAnomaly()
        return np.array([kinds.index(picker.kind_for(index_seed(seed, i, split))) for i in range(n)])
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    return rng.integers(len(kinds), size=n)


def compose_mixed(features: dict[str, dict[str, np.ndarray]], kinds: list[str], seed: int, split: str) -> dict[str, np.ndarray]:
    """The original's 'anomalies' set: every image altered by one of the kinds, picked per image."""
    n = len(features[f"{split}/{kinds[0]}"]["index"])
    pick = random_kind_per_image(kinds, n, seed, split)
    keys = features[f"{split}/{kinds[0]}"].keys()
    return {k: np.stack([features[f"{split}/{kinds[j]}"][k][i] for i, j in enumerate(pick)]) for k in keys}


def common_first_images(features: dict[str, dict[str, np.ndarray]], baseline_scores: dict[str, dict[str, np.ndarray]],
                        sets: list[str], split: str = "test") -> tuple[dict, dict, dict[str, int]]:
    """Per set of ``split``, the rows of the images both the detectors' features and the baselines'
    scores hold: each extraction reads a set's first images (its own cap), so that is the first
    ``min(n_detectors, n_baselines)`` of them, counted per set (a WoodScape soiling set has its own
    size). Returns the detectors' rows, the baselines' rows and the count per set."""
    det, base, counts = {}, {}, {}
    for name in sets:
        f, b = features[f"{split}/{name}"], baseline_scores[f"{split}/{name}"]
        n = min(len(f["index"]), len(b["index"]))
        det[f"{split}/{name}"] = {key: col[f["index"] < n] for key, col in f.items()}
        base[f"{split}/{name}"] = {key: col[b["index"] < n] for key, col in b.items()}
        counts[name] = n
    return det, base, counts


def fit_ood_rows(features: dict[str, dict[str, np.ndarray]], kinds: list[str], seed: int, split: str,
                 mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The OoD rows a supervised detector is fitted on, and each row's source-image index.

    ``every_kind``: every image of the split under every kind (len(kinds) x N rows, all the
    altered images there are); ``mixed``: the original's set, each image under one kind.
    """
    if mode == "mixed":
        mixed = compose_mixed(features, kinds, seed, split)
        return mixed["h_z"], mixed["index"]
    return (np.vstack([features[f"{split}/{k}"]["h_z"] for k in kinds]),
            np.concatenate([features[f"{split}/{k}"]["index"] for k in kinds]))


def _min_fold_train(n: int, folds: int) -> int:
    """Rows left to fit on when the largest of ``folds`` (stratified) folds of ``n`` rows is held out."""
    return n - -(-n // folds)


def check_validation_size(cfg: CalibrationConfig, n_ind: int, n_features: int | None = None) -> None:
    """Fail early, with what to change, when the validation InD images cannot support the folds and
    the PCA of ``detection`` (scikit-learn's own errors name neither the config key nor the cure).

    Every fold needs at least one validation image (the folds group each image with its altered
    copies); the one-class detectors' PCA is fitted on the InD images of each threshold fold's
    training part, and the PPCA detector estimates the variance left off its ``pca_components``
    directions from them, so ``pca_components`` must stay 2 below the smallest such part (and below
    the feature count).

    Raises
    ------
    InputValidationError
    """
    det = cfg.detection
    more = (f"or more validation images (dataset.max_images is {cfg.dataset.max_images}; 0 = all)"
            if cfg.dataset.max_images else "or more validation images")
    folds = {"detection.threshold_folds": det.threshold_folds} if det.threshold_folds >= 2 else {}
    if det.kde_bandwidth_grid:  # the bandwidth search cross-validates with 5 folds when thresholds do not
        folds.setdefault("detection.threshold_folds", det.threshold_folds if det.threshold_folds >= 2 else 5)
    if n_ind < 2:
        raise InputValidationError(f"The validation split has {n_ind} InD image(s); the detectors need at least 2 "
                                   f"(and the folds one per fold). Give {more}.")
    for key, k in folds.items():
        if k > n_ind:
            use = (f"{key}: {n_ind} at most" if det.threshold_folds >= 2 else
                   "detection.kde_bandwidth_grid: [] (the bandwidth search uses 5 folds when "
                   "detection.threshold_folds is 0 or 1)")
            raise InputValidationError(f"The validation split has {n_ind} InD images, but {k} cross-validation folds "
                                       f"need at least {k} (one image, with its altered copies, per fold). Use fewer "
                                       f"folds ({use}), {more}.")
    p = det.pca_components
    if not p:
        return
    if n_features is not None and p >= n_features:
        raise InputValidationError(f"detection.pca_components is {p}, but the hooked layer gives {n_features} "
                                   f"entropy features; use detection.pca_components <= {n_features - 1} "
                                   "(0 = no PCA).")
    k = det.threshold_folds
    train = _min_fold_train(n_ind, k) if k >= 2 else n_ind
    if p > train - 2:
        need = next(n for n in range(p, 100 * p + 100) if (_min_fold_train(n, k) if k >= 2 else n) >= p + 2)
        where = (f"with detection.threshold_folds {k}, each fold's one-class detectors are fitted on as few as "
                 f"{train} of them" if k >= 2 else "the one-class detectors are fitted on them")
        raise InputValidationError(f"detection.pca_components is {p}, but the validation split has {n_ind} InD "
                                   f"images and {where} (the PPCA detector needs 2 more images than components). "
                                   f"Use detection.pca_components <= {max(train - 2, 0)}, fewer folds, "
                                   f"{more} (at least {need}).")


def out_of_fold_scores(detector: Any, pca: LatentPCA | None, x: np.ndarray, y: np.ndarray | None, folds: int,
                       seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Scores of each training row by a detector (and PCA) fitted without it.

    An in-sample KDE score is optimistic (each point sits on its own kernel), which would set the
    InD threshold too tight; held-out scores give the threshold the deployed detector will see.
    ``groups`` (one per row, e.g. the source image) keeps rows of one group in one fold: an InD
    image held out while its own altered copies are fitted would score as it never does in use.
    """
    labels = np.zeros(len(x), int) if y is None else y
    scores = np.empty(len(x))
    if groups is not None:
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels, groups)
    else:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels)
    for train_idx, held_idx in splits:
        fold_pca = copy.deepcopy(pca).fit(x[train_idx]) if pca is not None else None
        xt = fold_pca.transform(x[train_idx]) if fold_pca is not None else x[train_idx]
        xh = fold_pca.transform(x[held_idx]) if fold_pca is not None else x[held_idx]
        det = copy.deepcopy(detector)  # refitting replaces every learned attribute
        det.fit(xt, y[train_idx]) if y is not None else det.fit(xt)
        scores[held_idx] = det.score_samples(xh)
    return scores


def select_kde_bandwidth(cfg: CalibrationConfig, x: np.ndarray, y: np.ndarray,
                         groups: np.ndarray | None) -> tuple[float, dict[str, float]]:
    """The KDEClassifier bandwidth of ``detection.kde_bandwidth_grid`` with the best out-of-fold AUROC.

    Validation features only (the test split never takes part); folds keep each source image's rows
    together. An empty grid returns ``detection.kde_bandwidth`` as given. Ties go to the smaller one.
    """
    det_cfg = cfg.detection
    if not det_cfg.kde_bandwidth_grid:
        return float(det_cfg.kde_bandwidth), {}
    n_comp = det_cfg.pca_components or None
    folds = det_cfg.threshold_folds if det_cfg.threshold_folds >= 2 else 5
    table = {}
    for bw in sorted(float(b) for b in det_cfg.kde_bandwidth_grid):
        scores = out_of_fold_scores(KDEClassifier(bandwidth=bw), LatentPCA(n_components=n_comp) if n_comp else None,
                                    x, y, folds, cfg.dataset.anomaly_seed, groups)
        table[f"{bw:g}"] = round(float(roc_auc_score(y, scores)), 6)
    best = max(table, key=lambda k: (table[k], -float(k)))
    return float(best), table


def fit_detectors(cfg: CalibrationConfig, val_ind: np.ndarray, val_ood: np.ndarray, binding: ModelBinding,
                  preprocessing: Preprocessing, *, groups: np.ndarray | None = None,
                  selection: dict[str, Any] | None = None) -> dict[str, DetectorArtefact]:
    """Fit the three detectors on validation features; thresholds at the target InD TPR.

    ``groups``: the source image of each row of ``vstack(val_ind, val_ood)``, for the folds (see
    :func:`out_of_fold_scores`). ``selection``, when given, receives the KDEClassifier bandwidth
    chosen on validation and its cross-validated AUROC per candidate.
    """
    det_cfg = cfg.detection
    n_comp = det_cfg.pca_components or None
    seed = cfg.dataset.anomaly_seed
    x_val = np.vstack([val_ind, val_ood])
    y_val = np.r_[np.zeros(len(val_ind), int), np.ones(len(val_ood), int)]
    if groups is not None and len(groups) != len(x_val):
        raise ValueError(f"groups holds {len(groups)} entries for {len(x_val)} validation rows.")
    check_validation_size(cfg, len(val_ind), x_val.shape[1] if x_val.ndim == 2 else None)
    bandwidth, table = select_kde_bandwidth(cfg, x_val, y_val, groups)
    if selection is not None:
        selection.update({"kde_bandwidth": bandwidth, "kde_bandwidth_cv_auroc": table,
                          "n_val_ind": len(val_ind), "n_val_ood_rows": len(val_ood)})
    specs = {
        # The guide's supervised detector: PCA fitted on InD + OoD validation features
        # (as build_detection_dataset does with its train part).
        "kde_classifier": (KDEClassifier(bandwidth=bandwidth),
                           LatentPCA(n_components=n_comp) if n_comp else None, x_val, y_val),
        # One-class detectors never see OoD: their PCA is fitted on InD only.
        "one_class_kde": (OneClassKDE(bandwidth=det_cfg.one_class_bandwidth, target_ind_tpr=det_cfg.target_ind_tpr),
                          LatentPCA(n_components=n_comp) if n_comp else None, val_ind, None),
        "mahalanobis": (MahalanobisDetector(target_ind_tpr=det_cfg.target_ind_tpr),
                        LatentPCA(n_components=n_comp) if n_comp else None, val_ind, None),
    }
    if n_comp:
        # Its own principal subspace of the raw InD entropies, plus the residual off it: no LatentPCA,
        # which would discard exactly that residual.
        specs["ppca"] = (PPCADetector(n_components=n_comp, target_ind_tpr=det_cfg.target_ind_tpr), None, val_ind, None)
    artefacts = {}
    for name, (detector, pca, x, y) in specs.items():
        fold_groups = groups if y is not None else None
        if pca is not None:
            pca = pca.fit(x)
        features = pca.transform(x) if pca is not None else x
        detector.fit(features, y) if y is not None else detector.fit(features)
        if det_cfg.threshold_folds >= 2:
            scores = out_of_fold_scores(detector, pca, x, y, det_cfg.threshold_folds, seed, fold_groups)
        else:
            scores = detector.score_samples(features)
        ind_scores = scores[: len(val_ind)]
        threshold = select_threshold(ind_scores, det_cfg.target_ind_tpr)
        detector.set_threshold(threshold)
        artefacts[name] = DetectorArtefact(detector=detector, pca=pca, threshold=threshold, binding=binding,
                                           preprocessing=preprocessing)
    return artefacts


def evaluate(scores_ind: np.ndarray, scores_ood: np.ndarray, threshold: float) -> dict[str, float]:
    scores = np.r_[scores_ind, scores_ood]
    is_ood = np.r_[np.zeros(len(scores_ind), bool), np.ones(len(scores_ood), bool)]
    return ood_metrics(scores, is_ood, threshold)


def run_calibration(cfg: CalibrationConfig, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the whole calibration; returns the report (also written to ``output_dir``)."""
    from offline_calibration.baselines import BASELINE_NAMES, OutputBaselines
    from offline_calibration.report import write_report

    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    s, d = cfg.sampling, cfg.dataset
    preprocessing = Preprocessing(height=d.img_size[0], width=d.img_size[1], mean=tuple(d.mean), std=tuple(d.std))
    checkpoint_sha = sha256_file(cfg.model.checkpoint)
    model = load_model(cfg.model.checkpoint, cfg.model.model_class, trust_checkpoint=cfg.model.trust_checkpoint)
    mc_seed = int(s.seed) if s.mc_seeding == "common" else None
    binding = ModelBinding(model_class=cfg.model.model_class, layer=cfg.model.layer, checkpoint_sha256=checkpoint_sha,
                           mc_samples=s.mc_samples, entropy_k=s.entropy_k or None, mc_seed=mc_seed)
    module = LatentExtractionModule(model, layer=cfg.model.layer, mc_samples=s.mc_samples, strategy=s.strategy,
                                    entropy_k=s.entropy_k or None, precision=s.precision, seed=s.seed,
                                    common_seed=mc_seed)
    cache_key = {"seed": s.seed, "mc_seeding": s.mc_seeding, "checkpoint_sha256": checkpoint_sha,
                 "model_class": cfg.model.model_class, "layer": cfg.model.layer, "mc_samples": s.mc_samples,
                 "strategy": s.strategy, "entropy_k": s.entropy_k, "precision": s.precision,
                 "preprocessing": preprocessing.to_dict(), "dataset_root": d.root, "anomaly_seed": d.anomaly_seed,
                 "max_images": d.max_images, "anomaly_version": ANOMALY_VERSION}
    run_kw = dict(batch_size=s.batch_size, num_workers=s.num_workers, accelerator=s.accelerator, devices=s.devices,
                  strategy=s.ddp_strategy, progress=progress)
    features: dict[str, dict[str, np.ndarray]] = {}
    timing: dict[str, float] = {}
    image_sets = build_image_sets(cfg, preprocessing)
    check_validation_size(cfg, len(image_sets["val/ind"]))  # before hours of extraction
    for set_name, dataset in image_sets.items():
        cache = set_cache(cfg, "latent", set_name, dataset, cache_key)
        log(f"[lsea-calibrate] latent entropy, {set_name}: {len(dataset)} images")
        t0 = time.perf_counter()
        features[set_name] = extract_set(dataset, cache, module, **run_kw)
        timing[set_name] = round(time.perf_counter() - t0, 2)
    baseline_scores: dict[str, dict[str, np.ndarray]] = {}
    if cfg.baselines.enabled:
        b_cfg = cfg.baselines
        b_module = ScoreExtractionModule(model, OutputBaselines(b_cfg.mc_samples or s.mc_samples), seed=s.seed)
        b_sets = build_image_sets(cfg, preprocessing, max_images=b_cfg.max_images or d.max_images)
        for set_name, dataset in b_sets.items():
            if set_name.startswith("val/") and set_name != "val/ind":
                continue  # baselines need no OoD for fitting: validation InD sets their threshold
            cache = set_cache(cfg, "baselines", set_name, dataset,
                              {**cache_key, "baseline_mc": b_cfg.mc_samples, "max_images": b_cfg.max_images})
            log(f"[lsea-calibrate] pytorch-ood baselines, {set_name}: {len(dataset)} images")
            t0 = time.perf_counter()
            baseline_scores[set_name] = extract_set(dataset, cache, b_module, **run_kw)
            timing[f"baselines {set_name}"] = round(time.perf_counter() - t0, 2)
    segmentation, harm = (segmentation_under_anomalies(cfg, model, preprocessing, cache_key, run_kw, timing, log)
                          if cfg.segmentation.enabled else (None, {}))
    kinds = list(d.anomaly_kinds)
    for split in ("val", "test"):
        features[f"{split}/all"] = compose_mixed(features, kinds, d.anomaly_seed, split)
    if baseline_scores:
        baseline_scores["test/all"] = compose_mixed(baseline_scores, kinds, d.anomaly_seed, "test")

    # The supervised detector learns from every altered validation image there is (fit_ood), not
    # only the one-kind-per-image mix that "all" evaluates on.
    fit_ood, fit_groups = fit_ood_rows(features, kinds, d.anomaly_seed, "val", cfg.detection.fit_ood)
    selection: dict[str, Any] = {"fit_ood": cfg.detection.fit_ood}
    artefacts = fit_detectors(cfg, features["val/ind"]["h_z"], fit_ood, binding, preprocessing,
                              groups=np.r_[features["val/ind"]["index"], fit_groups], selection=selection)
    ood_sets = ["all", *kinds] + (["soiling"] if "test/soiling" in features else [])
    test_ind = features["test/ind"]
    results: dict[str, Any] = {"detectors": {}, "baselines": {}}
    scores_for_plots: dict[str, dict[str, np.ndarray]] = {}
    for name, art in artefacts.items():
        s_ind = art.score_features(test_ind["h_z"])
        per_set, scores_for_plots[name] = {}, {"test InD": s_ind}
        for ood in ood_sets:
            s_ood = art.score_features(features[f"test/{ood}"]["h_z"])
            per_set[ood] = evaluate(s_ind, s_ood, art.threshold)
            scores_for_plots[name][f"test {ood}"] = s_ood
        results["detectors"][name] = {"threshold": art.threshold, "ood_sets": per_set}
    for b in BASELINE_NAMES if baseline_scores else ():
        bs = baseline_scores
        thr = select_threshold(bs["val/ind"][b], cfg.detection.target_ind_tpr)
        results["baselines"][b] = {"threshold": thr, "n_images_per_set": len(bs["test/ind"][b]), "ood_sets": {
            ood: evaluate(bs["test/ind"][b], bs[f"test/{ood}"][b], thr) for ood in ood_sets}}
        scores_for_plots[f"baseline {b}"] = {"test InD": bs["test/ind"][b],
                                             **{f"test {o}": bs[f"test/{o}"][b] for o in ood_sets}}
    if baseline_scores:
        # The baselines cost 1 + M full passes per image and often run on fewer images than the
        # detectors (or, with dataset.max_images below baselines.max_images, on more): compare them
        # on the images both scored, or a difference may be the images'.
        det_same, base_same, n_same = common_first_images(features, baseline_scores, ["ind", *ood_sets[1:]])
        det_same["test/all"] = compose_mixed(det_same, kinds, d.anomaly_seed, "test")
        base_same["test/all"] = compose_mixed(base_same, kinds, d.anomaly_seed, "test")
        n_same["all"] = len(det_same["test/all"]["index"])
        results["same_images"] = {"n_images_per_set": n_same["ind"], "n_images": n_same, "auroc": {
            **{name: {ood: evaluate(art.score_features(det_same["test/ind"]["h_z"]),
                                    art.score_features(det_same[f"test/{ood}"]["h_z"]), art.threshold)["auroc"]
                      for ood in ood_sets} for name, art in artefacts.items()},
            **{f"baseline {b}": {ood: evaluate(base_same["test/ind"][b], base_same[f"test/{ood}"][b],
                                               r["threshold"])["auroc"] for ood in ood_sets}
               for b, r in results["baselines"].items()}}}
    if segmentation is not None:
        if segmentation["split"] == "test":  # does the monitor catch the anomalies that matter?
            segmentation["detection_by_harm"] = {
                name: {kind: detection_by_harm(art.score_features(test_ind["h_z"]),
                                               art.score_features(features[f"test/{kind}"]["h_z"]), harm[kind],
                                               art.threshold, segmentation["hurt_drop"]) for kind in harm}
                for name, art in artefacts.items()}
        results["segmentation"] = segmentation
    if cfg.detection.cross_type and len(kinds) >= 2:
        results["cross_type"] = cross_type_generalisation(cfg, features, kinds, binding, preprocessing)

    deployed = artefacts[cfg.detection.deploy]
    deployed_metrics = results["detectors"][cfg.detection.deploy]["ood_sets"]["all"]
    deployed = DetectorArtefact(detector=deployed.detector, pca=deployed.pca, threshold=deployed.threshold,
                                binding=binding, preprocessing=preprocessing,
                                metrics={"test_all": deployed_metrics},
                                info={"dataset": d.kind, "dataset_root": d.root, "detector": cfg.detection.deploy,
                                      "n_val_ind": len(features["val/ind"]["h_z"])})
    artefact_path = deployed.save(out / cfg.artefact_name)
    n_images = sum(len(features[k]["index"]) for k in timing if k in features)
    report = {
        "config": asdict(cfg),
        "model": {"class": cfg.model.model_class, "layer": cfg.model.layer, "checkpoint": cfg.model.checkpoint,
                  "checkpoint_sha256": checkpoint_sha,
                  "sampler": module.extractor.sampler.strategy_used_ if module.extractor else s.strategy},
        "data": {k: int(len(v["h_z"])) for k, v in features.items()},
        "anomalies": {"kinds": list(d.anomaly_kinds), "version": ANOMALY_VERSION,
                      "rendering": "fog and sun flare as albumentations 1.x (the original's) drew them"},
        "fit": selection,
        "metric_conventions": {
            "score": "higher = more OoD; OoD is the positive class for auroc, aupr_out, f1, mcc",
            "fpr_at_95_tpr_ood_positive": "pytorch-ood / OpenOOD v1.5: InD flagged when 95 % of OoD is caught",
            "fpr_at_95_tpr_ind_positive": "original (later versions): OoD accepted when 95 % of InD is accepted",
            "threshold": f"chosen on validation InD out-of-fold scores at InD TPR {cfg.detection.target_ind_tpr}",
        },
        **results,
        "deployed": {"detector": cfg.detection.deploy, "artefact": str(artefact_path),
                     "artefact_sha256": sha256_file(artefact_path), "threshold": deployed.threshold},
        "timing_s": {"extraction": timing, "total": round(time.perf_counter() - t_start, 1),
                     "images_extracted_or_cached": n_images},
    }
    write_report(report, out, features=features, scores=scores_for_plots, cfg=cfg)
    return report


def segmentation_under_anomalies(cfg: CalibrationConfig, model: torch.nn.Module, preprocessing: Preprocessing,
                                 cache_key: dict[str, Any], run_kw: dict[str, Any], timing: dict[str, float],
                                 log: Callable[..., None]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model's segmentation of labelled images, clean and under each anomaly kind: which
    anomalies actually hurt it (see offline_calibration.segmentation_quality).

    Returns the report section and, per anomaly kind, the (N,) per-image pixel accuracy drop of
    images ``0..N-1`` of the split used (test when its labels are real, else validation).
    """
    from offline_calibration.segmentation_quality import (
        HURT_DROP,
        SegmentationQualityModule,
        accuracy_drop,
        harm_summary,
        has_real_labels,
        resolve_ignore_index,
    )

    seg = cfg.segmentation
    ignore_index = resolve_ignore_index(model, seg.ignore_index)
    limit = seg.max_images or cfg.dataset.max_images
    split = seg.split
    if split == "auto":
        try:
            test_ind = build_image_sets(cfg, preprocessing, max_images=limit, splits=("test",),
                                        return_labels=True)["test/ind"]
            split = "test" if has_real_labels(test_ind, ignore_index) else "val"
        except DatasetLayoutError:  # no label folder for test at all
            split = "val"
    module = SegmentationQualityModule(model, ignore_index)
    confusions: dict[str, np.ndarray] = {}
    for set_name, dataset in build_image_sets(cfg, preprocessing, max_images=limit, splits=(split,),
                                              return_labels=True).items():
        if set_name == "test/soiling":
            continue  # not an altered copy of the clean images
        cache = set_cache(cfg, "segmentation", set_name, dataset,
                          {**cache_key, "max_images": limit, "ignore_index": ignore_index})
        log(f"[lsea-calibrate] segmentation quality, {set_name}: {len(dataset)} images")
        t0 = time.perf_counter()
        confusions[set_name.split("/", 1)[1]] = extract_set(dataset, cache, module, **run_kw)["confusion"]
        timing[f"segmentation {set_name}"] = round(time.perf_counter() - t0, 2)
    section = {"split": split, "ignore_index": ignore_index, "hurt_drop": HURT_DROP,
               "sets": harm_summary(confusions, ignore_index=ignore_index)}
    return section, accuracy_drop(confusions)


def detection_by_harm(scores_ind: np.ndarray, scores_ood: np.ndarray, drop: np.ndarray, threshold: float,
                      hurt_drop: float) -> dict[str, float]:
    """Detection of the altered test images that hurt the segmentation and of those that did not.

    ``scores_ood[:len(drop)]`` are the altered images whose per-image accuracy drop is ``drop``;
    AUROC is against every test InD image; TPR at the deployed ``threshold``.
    """
    n = min(len(drop), len(scores_ood))  # both hold images 0..n-1 of the split
    s, drop = scores_ood[:n], drop[:n]
    out: dict[str, float] = {}
    for name, mask in (("hurt", drop > hurt_drop), ("unhurt", drop <= hurt_drop)):
        sub = s[mask]
        out[f"n_{name}"] = int(mask.sum())
        out[f"auroc_{name}"] = (float(roc_auc_score(np.r_[np.zeros(len(scores_ind)), np.ones(len(sub))],
                                                    np.r_[scores_ind, sub])) if len(sub) else float("nan"))
        out[f"tpr_{name}"] = float((sub > threshold).mean()) if len(sub) else float("nan")
    return out


def cross_type_generalisation(cfg: CalibrationConfig, features: dict[str, dict[str, np.ndarray]], kinds: list[str],
                              binding: ModelBinding, preprocessing: Preprocessing) -> dict[str, Any]:
    """Fit on all anomaly kinds but one, test on the held-out kind (the supervised detector's weak spot)."""
    out = {}
    test_ind = features["test/ind"]["h_z"]
    for held in kinds:
        seen = [k for k in kinds if k != held]
        val_ood, groups = fit_ood_rows(features, seen, cfg.dataset.anomaly_seed, "val", cfg.detection.fit_ood)
        arts = fit_detectors(cfg, features["val/ind"]["h_z"], val_ood, binding, preprocessing,
                             groups=np.r_[features["val/ind"]["index"], groups])
        out[f"held_out_{held}"] = {"fitted_on": seen, **{
            name: evaluate(a.score_features(test_ind), a.score_features(features[f"test/{held}"]["h_z"]), a.threshold)
            for name, a in arts.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsea-calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="calibration YAML (see offline_calibration/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set sampling.mc_samples=16 (YAML value syntax: 16 is an "
                        "integer, '16' a string); relative paths are taken from the current directory (those in "
                        "the YAML file from the file's folder)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            p.error(f"--set {key}: {value!r} is not a YAML value ({str(err).splitlines()[0]}); quote strings "
                    "holding YAML syntax, e.g. --set \"model.checkpoint='runs/[x].ckpt'\"")
    try:
        cfg = load_config(args.config, overrides)
        report = run_calibration(cfg, progress=not args.no_progress)
    except LseaError as err:
        print(f"lsea-calibrate: error: {err}", file=sys.stderr)
        return 2
    det = report["deployed"]["detector"]
    m = report["detectors"][det]["ood_sets"]["all"]
    print(f"[lsea-calibrate] deployed {det}: AUROC {m['auroc']:.4f}, FPR@95TPR (OoD+) "
          f"{m['fpr_at_95_tpr_ood_positive']:.4f}, (InD+) {m['fpr_at_95_tpr_ind_positive']:.4f}")
    # Every detector's figure, so the choice of detection.deploy can be made from the console.
    for group in ("detectors", "baselines"):
        if report.get(group):
            aurocs = ", ".join(f"{name} {r['ood_sets']['all']['auroc']:.4f}" for name, r in report[group].items())
            print(f"[lsea-calibrate] test AUROC (InD vs all anomalies), {group}: {aurocs}")
    print(f"[lsea-calibrate] artefact: {report['deployed']['artefact']}")
    print(f"[lsea-calibrate] report:   {Path(cfg.output_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
