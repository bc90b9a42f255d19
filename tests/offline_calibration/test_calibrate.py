"""lsea-calibrate end to end on the tiny session monitor: report, artefact, cache reuse, config errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lsea_monitor.artefact import DetectorArtefact, sha256_file
from lsea_monitor.errors import InputValidationError
from offline_calibration.calibrate import main, run_calibration
from offline_calibration.config import load_config
from offline_calibration.extraction import FeatureCache


@pytest.fixture(scope="module")
def report(monitor_files) -> dict:
    return json.loads(monitor_files.report.read_text())


def test_report_has_every_metric_per_detector_and_ood_set(report: dict) -> None:
    keys = {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr_ood_positive", "fpr_at_95_tpr_ind_positive",
            "accuracy", "mcc", "f1"}
    assert set(report["detectors"]) == {"kde_classifier", "one_class_kde", "mahalanobis", "ppca"}
    assert set(report["baselines"]) == {"msp", "energy", "mcd_entropy"}
    for group in ("detectors", "baselines"):
        for result in report[group].values():
            assert set(result["ood_sets"]) == {"all", "mud", "fog", "sunflare"}
            for m in result["ood_sets"].values():
                assert keys <= set(m)
                assert 0.0 <= m["auroc"] <= 1.0
    assert set(report["cross_type"]) == {"held_out_mud", "held_out_fog", "held_out_sunflare"}
    assert report["cross_type"]["held_out_fog"]["fitted_on"] == ["mud", "sunflare"]
    assert "OpenOOD" in report["metric_conventions"]["fpr_at_95_tpr_ood_positive"]


def test_detectors_and_baselines_are_compared_on_the_same_images(monitor_files, report: dict) -> None:
    same = report["same_images"]
    n = same["n_images_per_set"]
    assert n == report["baselines"]["msp"]["n_images_per_set"] < report["data"]["test/ind"]  # a capped subset
    assert same["n_images"] == {ood: n for ood in ["ind", *report["baselines"]["msp"]["ood_sets"]]}
    for b, result in report["baselines"].items():  # the baselines' own images are the common ones here
        assert same["auroc"][f"baseline {b}"] == pytest.approx({ood: m["auroc"] for ood, m in result["ood_sets"].items()})
    assert set(same["auroc"]) >= set(report["detectors"])
    assert all(0.0 <= a <= 1.0 for row in same["auroc"].values() for a in row.values())
    md = (monitor_files.report.parent / "report.md").read_text()
    assert f"## Detectors and baselines on the same test images ({n} per set)" in md


def test_common_first_images_are_the_images_both_extractions_read() -> None:
    """Rows are kept by image index, per set: the first min(detector, baseline) images of each (a
    soiling set has its own size; with dataset.max_images below baselines.max_images the detectors
    hold fewer); the mixed set composed from them is the full one's first rows (each image's anomaly
    kind depends on its index only)."""
    from offline_calibration.calibrate import common_first_images, compose_mixed

    kinds, n_all, n_base = ["mud", "fog", "sunflare"], 12, 5
    rng = np.random.default_rng(0)
    order = rng.permutation(n_all)  # rows need not be sorted by index
    features = {f"test/{k}": {"index": order, "h_z": rng.normal(size=(n_all, 4))} for k in ["ind", *kinds]}
    features["test/soiling"] = {"index": np.arange(20), "h_z": rng.normal(size=(20, 4))}
    features["val/ind"] = {"index": np.arange(3), "h_z": np.zeros((3, 4))}
    baselines = {f"test/{k}": {"index": np.arange(n_base), "msp": rng.normal(size=n_base)}
                 for k in ["ind", *kinds]}
    baselines["test/soiling"] = {"index": np.arange(16), "msp": rng.normal(size=16)}
    det, base, counts = common_first_images(features, baselines, ["ind", *kinds, "soiling"])
    assert counts == {"ind": 5, "mud": 5, "fog": 5, "sunflare": 5, "soiling": 16}
    assert set(det) == set(base) == {f"test/{k}" for k in ["ind", *kinds, "soiling"]}
    for name, rows in det.items():
        keep = features[name]["index"] < counts[name.split("/")[1]]
        assert sorted(rows["index"]) == list(range(counts[name.split("/")[1]]))
        np.testing.assert_array_equal(rows["h_z"], features[name]["h_z"][keep])
        np.testing.assert_array_equal(base[name]["index"], np.arange(counts[name.split("/")[1]]))
    sorted_full = {k: {c: v[c][np.argsort(v["index"])] for c in v} for k, v in features.items()}
    sorted_sub = {k: {c: v[c][np.argsort(v["index"])] for c in v} for k, v in det.items()}
    full_mix = compose_mixed(sorted_full, kinds, 7, "test")
    sub_mix = compose_mixed(sorted_sub, kinds, 7, "test")
    np.testing.assert_array_equal(sub_mix["h_z"], full_mix["h_z"][:n_base])
    # the detectors capped below the baselines: the baselines' rows are cut to the detectors' images
    few = {name: {c: col[rows["index"] < 3] for c, col in rows.items()} for name, rows in features.items()}
    det, base, counts = common_first_images(few, baselines, ["ind", "mud"])
    assert counts == {"ind": 3, "mud": 3}
    assert list(base["test/mud"]["index"]) == [0, 1, 2] and sorted(det["test/mud"]["index"]) == [0, 1, 2]


def test_report_files_and_artefact(monitor_files, report: dict) -> None:
    out = monitor_files.report.parent
    md = (out / "report.md").read_text()
    for rel in report["plots"].values():
        assert (out / rel).is_file() and (out / rel).read_bytes()[:4] == b"\x89PNG"
        assert rel in md
    art = DetectorArtefact.load(report["deployed"]["artefact"],
                                expect_checkpoint_sha256=sha256_file(monitor_files.checkpoint))
    assert art.binding.mc_samples == 8 and art.binding.layer == monitor_files.layer
    assert art.threshold == pytest.approx(report["deployed"]["threshold"])
    assert art.metrics["test_all"]["auroc"] == pytest.approx(report["detectors"]["kde_classifier"]["ood_sets"]["all"]["auroc"])
    assert (art.preprocessing.height, art.preprocessing.width) == (monitor_files.height, monitor_files.width)


def test_threshold_from_out_of_fold_scores_holds_on_fresh_ind(monitor_files) -> None:
    """In-sample KDE scores are optimistic; the out-of-fold threshold keeps ~95 % of fresh InD accepted."""
    from lsea_monitor.artefact import ModelBinding
    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.calibrate import fit_detectors

    cfg = load_config(monitor_files.report.parent.parent / "calibration.yaml")
    cfg.detection.pca_components = 4
    cfg.detection.threshold_folds = 5
    rng = np.random.default_rng(0)
    val_ind, val_ood = rng.normal(0, 1, (400, 12)), rng.normal(0.7, 1.4, (400, 12))
    fresh_ind = rng.normal(0, 1, (4000, 12))
    binding = ModelBinding("m:M", "l", "0" * 64, 8)
    for name, art in fit_detectors(cfg, val_ind, val_ood, binding, Preprocessing()).items():
        accepted = float(np.mean(art.score_features(fresh_ind) <= art.threshold))
        assert 0.92 <= accepted <= 0.98, (name, accepted)


def test_resumed_run_equals_uninterrupted_run(monitor_files, tmp_path: Path) -> None:
    """Entries lost (as after a kill) or corrupted are recomputed with the same per-image seeds."""
    cfg_path = monitor_files.report.parent.parent / "calibration.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    work = tmp_path / "rerun"
    shutil.copytree(monitor_files.report.parent / "cache", work / "cache")
    data.update(output_dir=str(work), cache_dir=str(work / "cache"))
    data["dataset"]["root"] = str(monitor_files.data_root)
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    latent = work / "cache" / "latent"
    corrupted = sorted((latent / "test-fog").glob("batch-*.npz"))[0]
    corrupted.write_bytes(corrupted.read_bytes()[:100])
    for lost in (latent / "val-ind").glob("batch-*.npz"):
        lost.unlink()
    report = run_calibration(load_config(tmp_path / "c.yaml"), progress=False, log=lambda *_: None)
    original = json.loads(monitor_files.report.read_text())
    assert report["detectors"] == original["detectors"]
    assert report["baselines"] == original["baselines"]
    entries, bad = FeatureCache(latent / "test-fog", json.loads((latent / "test-fog" / "key.json").read_text())).load()
    assert not bad and len(entries) == original["data"]["test/fog"]


def test_config_errors_are_named(monitor_files, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"output_dir": "o", "dataset": {"root": str(monitor_files.data_root), "rooot": 1}}))
    with pytest.raises(InputValidationError, match=r"Unknown config key\(s\) \['dataset.rooot'\]"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"output_dir": "o", "dataset": {"root": str(monitor_files.data_root)},
                                   "model": {"checkpoint": "missing.ckpt"}}))
    with pytest.raises(InputValidationError, match="model.checkpoint .*missing.ckpt.* is not a file"):
        load_config(bad)
    assert main(["--config", str(bad)]) == 2


@pytest.mark.parametrize("name", ["cityscapes.yaml", "woodscape.yaml"])
def test_shipped_configs_parse(monitor_files, name: str) -> None:
    """The example configs only need their paths changed: every key is known and typed right."""
    from importlib.resources import files

    path = Path(str(files("offline_calibration") / "configs" / name))
    overrides = {"dataset.root": str(monitor_files.data_root), "model.checkpoint": str(monitor_files.checkpoint)}
    cfg = load_config(path, overrides)
    assert cfg.dataset.kind == name.split(".")[0]
    assert cfg.model.layer == "deeplab_v3plus_model.drop_block1"


def test_common_mc_seed_calibration_features_equal_the_run_time_path(monitor_files) -> None:
    """The default calibration draws every image with one seed and records it in the artefact; the
    node's path (FrameScorer, seeded through frame_seed) then reproduces calibration's features of
    an image exactly, whatever the frame's stamp."""
    from lsea_monitor.pipeline import FrameScorer
    from offline_calibration.cityscapes import CityscapesDataset

    cfg = load_config(monitor_files.report.parent.parent / "calibration.yaml")
    assert cfg.sampling.mc_seeding == "common"
    scorer = FrameScorer.from_files(checkpoint=str(monitor_files.checkpoint), model_class=monitor_files.model_class,
                                    layer=monitor_files.layer, artefact=str(monitor_files.artefact), device="cpu")
    assert scorer.mc_seed == cfg.sampling.seed == scorer.artefact.binding.mc_seed
    assert scorer.frame_seed(1_700_000_000_000_000_000) == scorer.frame_seed(5) == cfg.sampling.seed
    cache = monitor_files.report.parent / "cache" / "latent" / "test-ind"
    entries, bad = FeatureCache(cache, json.loads((cache / "key.json").read_text())).load()
    assert not bad and entries
    dataset = CityscapesDataset(monitor_files.data_root, "test", scorer.preprocessing, return_labels=False)
    for index in sorted(entries)[:3]:
        rgb = dataset.rgb(index)
        expected = scorer.artefact.score_features(entries[index]["h_z"][None])[0]
        got = scorer.score_images([rgb], seed=scorer.frame_seed(123 + index))[0].score
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_per_image_mc_seeding_leaves_the_seed_out_of_the_artefact(monitor_files, tmp_path: Path) -> None:
    """``sampling.mc_seeding: per_image``: each image its own draws, no common seed in the artefact,
    so the node seeds each frame from its stamp; the features differ from the common-seed run's."""
    from lsea_monitor.pipeline import frame_seed

    data = yaml.safe_load((monitor_files.report.parent.parent / "calibration.yaml").read_text())
    data.update(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    data["dataset"].update(root=str(monitor_files.data_root), max_images=8)
    data["detection"]["pca_components"] = 3  # a few images only: keep the fold fits well posed
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    data["sampling"]["mc_seeding"] = "per_image"
    data["baselines"] = {"enabled": False}
    data["detection"]["cross_type"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    report = run_calibration(load_config(tmp_path / "c.yaml"), progress=False, log=lambda *_: None)
    art = DetectorArtefact.load(report["deployed"]["artefact"])
    assert art.binding.mc_seed is None
    per_image = FeatureCache(tmp_path / "cache" / "latent" / "val-ind",
                             json.loads((tmp_path / "cache" / "latent" / "val-ind" / "key.json").read_text())).load()[0]
    common_dir = monitor_files.report.parent / "cache" / "latent" / "val-ind"
    common = FeatureCache(common_dir, json.loads((common_dir / "key.json").read_text())).load()[0]
    assert not np.array_equal(per_image[0]["h_z"], common[0]["h_z"])  # other draws for the same image
    assert frame_seed(42) == 42

    data["sampling"]["mc_seeding"] = "sometimes"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputValidationError, match="sampling.mc_seeding must be common or per_image"):
        load_config(tmp_path / "bad.yaml")


def test_the_ppca_detector_deploys_to_the_node_path(monitor_files, tmp_path: Path, capsys) -> None:
    """``detection.deploy: ppca`` (through lsea-calibrate's main): its artefact (no LatentPCA: it
    models its own subspace of the raw entropies) scores frames in the per-frame scorer, on the host
    and on the device, as calibrated; the console names every detector's AUROC."""
    from lsea_monitor.pipeline import FrameScorer
    from offline_calibration.cityscapes import CityscapesDataset

    data = yaml.safe_load((monitor_files.report.parent.parent / "calibration.yaml").read_text())
    data.update(output_dir=str(tmp_path / "out"), cache_dir=str(monitor_files.report.parent / "cache"))
    data["dataset"]["root"] = str(monitor_files.data_root)
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    # The baselines as in the session's calibration, whose cache this run reads.
    data["detection"].update(deploy="ppca", cross_type=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    out = capsys.readouterr().out
    aurocs = {name: f"{r['ood_sets']['all']['auroc']:.4f}" for name, r in report["detectors"].items()}
    assert f"[lsea-calibrate] deployed ppca: AUROC {aurocs['ppca']}" in out
    assert ("[lsea-calibrate] test AUROC (InD vs all anomalies), detectors: "
            + ", ".join(f"{name} {v}" for name, v in aurocs.items())) in out
    assert ("[lsea-calibrate] test AUROC (InD vs all anomalies), baselines: " + ", ".join(
        f"{name} {r['ood_sets']['all']['auroc']:.4f}" for name, r in report["baselines"].items())) in out
    assert report["deployed"]["detector"] == "ppca"
    art = DetectorArtefact.load(report["deployed"]["artefact"])
    assert art.pca is None and art.detector.n_components == data["detection"]["pca_components"]
    assert art.threshold == report["detectors"]["ppca"]["threshold"]
    dataset = CityscapesDataset(monitor_files.data_root, "test", art.preprocessing, return_labels=False)
    cache = monitor_files.report.parent / "cache" / "latent" / "test-ind"
    entries = FeatureCache(cache, json.loads((cache / "key.json").read_text())).load()[0]
    frames = [dataset.rgb(i) for i in range(3)]
    expected = art.score_features(np.stack([entries[i]["h_z"] for i in range(3)]))
    for scoring in ("host", "device"):
        scorer = FrameScorer.from_files(checkpoint=str(monitor_files.checkpoint), model_class=monitor_files.model_class,
                                        layer=monitor_files.layer, artefact=report["deployed"]["artefact"],
                                        device="cpu", scoring=scoring)
        assert scorer.scoring == scoring
        got = [r.score for r in scorer.score_images(frames, seeds=[scorer.frame_seed(i) for i in range(3)])]
        np.testing.assert_allclose(got, expected, rtol=1e-9)
    data["detection"]["pca_components"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputValidationError, match="deploy is ppca.*pca_components is 0"):
        load_config(tmp_path / "c.yaml")


def test_calibration_leaves_torch_threads_as_they_were(monitor_files, tmp_path: Path) -> None:
    """PaCMAP (numba) left the shared OpenMP pool at one thread: the demo's replay, run in the same
    process after calibration, then disagreed with the node (other rounding, amplified by the
    entropy of near-identical MC samples). A fresh process, calibration from the session's cache."""
    import subprocess
    import sys

    data = yaml.safe_load((monitor_files.report.parent.parent / "calibration.yaml").read_text())
    data.update(output_dir=str(tmp_path / "out"), cache_dir=str(monitor_files.report.parent / "cache"))
    data["dataset"]["root"] = str(monitor_files.data_root)
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    data["report"] = {"pacmap": True, "pacmap_neighbors": 10}
    data["baselines"]["enabled"] = False
    data["detection"]["cross_type"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    code = ("import torch\n"
            "from offline_calibration.calibrate import run_calibration\n"
            "from offline_calibration.config import load_config\n"
            "torch.set_num_threads(2)\n"
            f"run_calibration(load_config({str(tmp_path / 'c.yaml')!r}), progress=False, log=lambda *a: None)\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "plots" / "pacmap_val.png").is_file()
    assert out.stdout.split()[-1] == "2"


def _cached_rows(cache_dir: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Every set's cache entries under ``cache_dir`` (``<group>/<set>`` -> image index -> arrays)."""
    out = {}
    for folder in sorted(p for p in cache_dir.glob("*/*") if p.is_dir()):
        entries, bad = FeatureCache(folder, json.loads((folder / "key.json").read_text())).load()
        assert not bad
        out[f"{folder.parent.name}/{folder.name}"] = entries
    return out


def _entry_stamps(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in folder.glob("batch-*.npz")}


def test_cache_key_names_the_anomaly_rendering(monitor_files) -> None:
    """Features cached from an older rendering of the anomalies (ANOMALY_VERSION) are not reused."""
    from offline_calibration.anomalies import ANOMALY_VERSION

    assert json.loads(monitor_files.report.read_text())["anomalies"]["version"] == ANOMALY_VERSION
    keys = sorted((monitor_files.report.parent / "cache").glob("*/*/key.json"))
    assert any("sunflare" in k.parent.name for k in keys)
    for key_file in keys:
        assert json.loads(key_file.read_text())["anomaly_version"] == ANOMALY_VERSION, key_file


def test_cache_is_keyed_on_the_image_files(monitor_files, tmp_path: Path) -> None:
    """Entries are addressed by position in the sorted image list: a city added that sorts first, or
    an image rewritten in place, must not reuse them (features recomputed, equal to a fresh run's);
    a set whose files did not change keeps its entries."""
    import cv2

    data_root = tmp_path / "data"
    shutil.copytree(monitor_files.data_root, data_root)
    data = yaml.safe_load((monitor_files.report.parent.parent / "calibration.yaml").read_text())
    data["dataset"].update(root=str(data_root), max_images=8, anomaly_kinds=["fog"])  # 6 sets: quick
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    data["detection"].update(pca_components=2, threshold_folds=2, kde_bandwidth_grid=[], cross_type=False)
    data["baselines"] = {"enabled": False}
    data["segmentation"] = {"max_images": 4}

    def calibrate(cache: Path) -> dict:
        data.update(output_dir=str(tmp_path / "out"), cache_dir=str(cache))
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        return run_calibration(load_config(tmp_path / "c.yaml"), progress=False, log=lambda *_: None)

    reused = tmp_path / "cache"
    calibrate(reused)
    test_stamps = _entry_stamps(reused / "latent" / "test-ind")
    assert test_stamps

    # 1. a new validation city that sorts first: every validation index now names another image
    first_val = sorted((data_root / "leftImg8bit" / "val").glob("*/*.png"))[0]
    new_city = data_root / "leftImg8bit" / "val" / "aaaburg"
    new_city.mkdir()
    cv2.imwrite(str(new_city / "aaaburg_000000_000019_leftImg8bit.png"), 255 - cv2.imread(str(first_val)))
    label = sorted((data_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[0]
    (data_root / "gtFine" / "val" / "aaaburg").mkdir()
    shutil.copy(label, data_root / "gtFine" / "val" / "aaaburg" / "aaaburg_000000_000019_gtFine_labelIds.png")
    calibrate(reused)
    assert _entry_stamps(reused / "latent" / "test-ind") == test_stamps  # unchanged test split: a cache hit
    val_stamps = _entry_stamps(reused / "latent" / "val-ind")

    # 2. one test image rewritten in place (same path)
    rewritten = sorted((data_root / "leftImg8bit" / "test").glob("*/*.png"))[1]
    cv2.imwrite(str(rewritten), cv2.flip(cv2.imread(str(rewritten)), 1))
    report = calibrate(reused)
    assert _entry_stamps(reused / "latent" / "val-ind") == val_stamps

    fresh_report = calibrate(tmp_path / "fresh-cache")
    got, fresh = _cached_rows(reused), _cached_rows(tmp_path / "fresh-cache")
    assert set(got) == set(fresh) and {"latent/val-ind", "latent/test-fog", "segmentation/test-fog"} <= set(got)
    for name, rows in fresh.items():
        assert sorted(got[name]) == sorted(rows), name
        for index, row in rows.items():
            for key, value in row.items():
                np.testing.assert_array_equal(got[name][index][key], value, err_msg=f"{name} image {index} {key}")
    assert report["detectors"] == fresh_report["detectors"]
    assert json.dumps(report["segmentation"], sort_keys=True) == json.dumps(fresh_report["segmentation"],
                                                                             sort_keys=True)  # NaN == NaN


def test_image_list_digest_follows_the_files_the_set_reads(monitor_files, tmp_path: Path) -> None:
    """Relative paths, sizes and mtimes: label files count for a labelled set only; moving the whole
    dataset elsewhere (same files) keeps the digest."""
    import os

    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.cityscapes import CityscapesDataset
    from offline_calibration.extraction import image_list_digest

    root = tmp_path / "data"
    shutil.copytree(monitor_files.data_root, root)
    pp = Preprocessing(monitor_files.height, monitor_files.width)

    def digests(r: Path) -> tuple[str, str]:
        return (image_list_digest(CityscapesDataset(r, "test", pp, return_labels=False)),
                image_list_digest(CityscapesDataset(r, "test", pp, return_labels=True)))

    images, labelled = digests(root)
    assert images != labelled and images.startswith(f"{len(list((root / 'leftImg8bit' / 'test').glob('*/*.png')))}:")
    label = sorted((root / "gtFine" / "test").glob("*/*_gtFine_labelIds.png"))[2]
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    images_after, labelled_after = digests(root)
    assert images_after == images and labelled_after != labelled
    moved = tmp_path / "moved"
    root.rename(moved)
    assert digests(moved) == (images_after, labelled_after)


@pytest.fixture()
def minimal_config(tmp_path: Path) -> Path:
    """A config whose paths exist (an empty dataset folder and checkpoint file: enough for load_config)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "model.ckpt").write_bytes(b"")
    path = tmp_path / "configs" / "c.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"output_dir": "../out", "dataset": {"root": "../data"},
                                    "model": {"checkpoint": "../model.ckpt"}}))
    return path


@pytest.mark.parametrize("key, value, expected", [
    ("model.trust_checkpoint", "false", "a boolean"),  # truthy: would turn on unpickling
    ("model.trust_checkpoint", 0, "a boolean"),
    ("dataset.soiling", "yes", "a boolean"),
    ("sampling.mc_samples", 10.5, "an integer"),
    ("sampling.mc_samples", "10", "an integer"),
    ("sampling.mc_samples", True, "an integer"),
    ("sampling.seed", "abc", "an integer"),
    ("detection.threshold_folds", 2.5, "an integer"),
    ("detection.kde_bandwidth", True, "a number"),
    ("detection.target_ind_tpr", "0.95", "a number"),
    ("sampling.strategy", 1, "a string"),
    ("output_dir", 5, "a string"),
    ("dataset.root", None, "a string"),
    ("dataset.img_size", [256, "512"], "a list of integers"),
    ("dataset.mean", [0.3, True, 0.3], "a list of numbers"),
    ("dataset.anomaly_kinds", "fog", "a list of strings"),
    ("detection.kde_bandwidth_grid", [0.5, None], "a list of numbers"),
])
def test_config_scalars_are_type_checked(minimal_config: Path, key: str, value, expected: str) -> None:
    """YAML types every value: a quoted "false" is a string, truthy in Python; nothing is coerced."""
    with pytest.raises(InputValidationError, match=rf"Config key {key.replace('.', '[.]')} must be {expected}.*"
                                                    rf"got {re.escape(repr(value))}"):
        load_config(minimal_config, {key: value})


@pytest.mark.parametrize("key, value, message", [
    ("sampling.batch_size", 0, "sampling.batch_size must be an integer >= 1"),
    ("sampling.num_workers", -1, "sampling.num_workers must be an integer >= 0"),
    ("sampling.seed", -3, "sampling.seed must be an integer >= 0"),
    ("sampling.precision", "fp64", r"sampling.precision must be one of \['bf16', 'fp16', 'fp32'\]"),
    ("sampling.entropy_k", 10, r"sampling.entropy_k must be 0 .* \[1, 9\]"),
    ("sampling.devices", True, "sampling.devices must be auto, a device count"),
    ("dataset.max_images", -1, "dataset.max_images must be an integer >= 0"),
    ("dataset.anomaly_seed", -1, "dataset.anomaly_seed must be an integer >= 0"),
    ("baselines.max_images", -1, "baselines.max_images must be an integer >= 0"),
    ("baselines.mc_samples", -2, "baselines.mc_samples must be an integer >= 0"),
    ("segmentation.max_images", -1, "segmentation.max_images must be an integer >= 0"),
    ("detection.threshold_folds", -1, r"detection.threshold_folds must be an integer >= 0 \(0 or 1 = in-sample"),
    ("detection.pca_components", -3, "detection.pca_components must be an integer >= 0"),
    ("detection.kde_bandwidth", 0, "detection.kde_bandwidth must be a finite number > 0"),
    ("detection.one_class_bandwidth", float("nan"), "detection.one_class_bandwidth must be a finite number > 0"),
    ("report.pacmap_neighbors", 0, "report.pacmap_neighbors must be an integer >= 1"),
])
def test_config_ranges_are_checked(minimal_config: Path, key: str, value, message: str) -> None:
    with pytest.raises(InputValidationError, match=message):
        load_config(minimal_config, {key: value})


def test_config_valid_values_still_load(minimal_config: Path) -> None:
    """Integers where numbers are due, Lightning's device forms, null ignore_index, folds 0/1 = off."""
    cfg = load_config(minimal_config, {"detection.kde_bandwidth": 1, "detection.kde_bandwidth_grid": [1, 1.5],
                                       "detection.target_ind_tpr": 0.9, "detection.threshold_folds": 1,
                                       "sampling.devices": [0, 1], "sampling.precision": "bf16",
                                       "sampling.entropy_k": 9, "segmentation.ignore_index": None,
                                       "model.trust_checkpoint": True, "dataset.max_images": 0})
    assert cfg.model.trust_checkpoint is True and cfg.sampling.devices == [0, 1]
    assert load_config(minimal_config, {"sampling.devices": 2}).sampling.devices == 2
    # a config built in Python is checked too
    cfg.sampling.mc_samples = "10"
    with pytest.raises(InputValidationError, match="sampling.mc_samples must be an integer"):
        cfg.validate()


@pytest.mark.parametrize("override, message", [
    ("sampling.mc_samples='10'", "Config key sampling.mc_samples must be an integer, got '10'"),
    ("model.trust_checkpoint='false'", "Config key model.trust_checkpoint must be a boolean"),
    ("sampling.batch_size=0", "sampling.batch_size must be an integer >= 1"),
    ("dataset.root.x=1", "Override 'dataset.root.x': dataset.root is not a config section"),
    ("sampling..seed=1", "Override key 'sampling..seed' is not a dotted config key"),
    ("sampling.rounds=2", r"Unknown config key\(s\) \['sampling.rounds'\]"),
])
def test_main_reports_config_errors_without_a_traceback(minimal_config: Path, capsys, override: str,
                                                          message: str) -> None:
    assert main(["--config", str(minimal_config), "--set", override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(f"^lsea-calibrate: error: {message}", err), err
    assert "Traceback" not in err


def test_main_rejects_a_set_value_that_is_not_yaml(minimal_config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(minimal_config), "--set", "sampling.mc_samples=["])
    assert exit_info.value.code == 2
    assert "--set sampling.mc_samples: '[' is not a YAML value" in capsys.readouterr().err


def test_set_paths_are_relative_to_the_working_directory(minimal_config: Path, tmp_path: Path, monkeypatch) -> None:
    """``--set model.checkpoint=runs/x.ckpt`` (the README's example) means ./runs/x.ckpt; paths written in
    the YAML file stay relative to the file's folder."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "best.ckpt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("configs") / "c.yaml", {"model.checkpoint": "runs/best.ckpt", "cache_dir": "cache"})
    assert cfg.model.checkpoint == str(tmp_path / "runs" / "best.ckpt")
    assert cfg.cache_dir == str(tmp_path / "cache")
    assert cfg.dataset.root == str(tmp_path / "data")  # "../data" in configs/c.yaml
    assert cfg.output_dir == str(tmp_path / "out")
    cfg = load_config(Path("configs") / "c.yaml", {"dataset": {"root": "data"}, "output_dir": "o"})
    assert (cfg.dataset.root, cfg.output_dir) == (str(tmp_path / "data"), str(tmp_path / "o"))
    with pytest.raises(InputValidationError,
                       match=f"model.checkpoint '{tmp_path.parent / 'model.ckpt'}' is not a file"):
        load_config(tmp_path / "configs" / "c.yaml", {"model.checkpoint": "../model.ckpt"})  # not configs/..
    monkeypatch.chdir(tmp_path / "configs")
    with pytest.raises(InputValidationError, match="model.checkpoint .*configs/runs/best.ckpt' is not a file"):
        load_config("c.yaml", {"model.checkpoint": "runs/best.ckpt"})
    assert main(["--config", "c.yaml", "--set", "model.checkpoint=../runs/best.ckpt",
                 "--set", "sampling.batch_size=0"]) == 2  # the paths passed: the batch size is what fails


def test_too_few_validation_images_fail_before_any_extraction(monitor_files, tmp_path: Path, capsys) -> None:
    """The image counts are known from the data modules: a fold or PCA size they cannot support is
    reported before the (hours of) extraction, through main() as a clean error."""
    data = yaml.safe_load((monitor_files.report.parent.parent / "calibration.yaml").read_text())
    data.update(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    data["dataset"].update(root=str(monitor_files.data_root), max_images=4)
    data["model"]["checkpoint"] = str(monitor_files.checkpoint)
    data["detection"].update(threshold_folds=5, pca_components=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^lsea-calibrate: error: The validation split has 4 InD images, but 5 cross-validation folds",
                     err), err
    assert "dataset.max_images is 4" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "latent").exists()  # nothing was extracted
    data["dataset"]["max_images"] = 18
    data["detection"].update(threshold_folds=5, pca_components=16)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputValidationError, match=r"pca_components is 16, .* 18 InD images .* as few as 14"):
        run_calibration(load_config(tmp_path / "c.yaml"), progress=False, log=lambda *_: None)
    assert not (tmp_path / "cache" / "latent").exists()
