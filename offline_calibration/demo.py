"""``make demo``: the whole chain on the built-in default, from nothing, with cached steps skipped.

1. generate the procedural road-scene dataset in the Cityscapes layout;
2. train the reference DeepLabV3+ with ``drop_block1`` (``lsea-train``);
3. calibrate the detectors and write the artefact and the report (``lsea-calibrate``);
4. start the ROS 2 node on that artefact, stream InD then OoD frames through it, print verdicts;
5. build a demo rosbag and evaluate it offline and live (``lsea-replay-eval``).

Each step writes a stamp with the configuration that produced it; a rerun with the same
configuration skips the step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from offline_calibration.model import HOOKED_LAYER, MODEL_CLASS


@dataclass(frozen=True)
class DemoConfig:
    n_train: int = 240
    # The detectors are fitted on validation: the KDEClassifier's two densities are estimated from
    # these images (and each of them under each anomaly). With 16 components, 80 / 240 / 480 images gave
    # it AUROC 0.977 / 0.982 / 0.985 and FPR@95 0.09 / 0.07 / 0.07 on 240 test images of another seed;
    # 240 costs about a minute of extraction more than 80, 480 three.
    n_val: int = 240
    # 80 test images per set leave an AUROC a standard error of about 0.02: too coarse to check a 0.98
    # target or to rank detectors 0.01 apart. 240 (the first 80 are the earlier test set) cost under a
    # minute of calibration more (3.7 min against 3.1-3.6 on this 2-core machine).
    n_test: int = 240
    height: int = 256
    width: int = 512
    epochs: int = 10
    # Training runs on half-size frames (4x cheaper on a CPU; the network is fully convolutional).
    train_height: int = 128
    train_width: int = 256
    batch_size: int = 8
    # MobileNetV2: on a CPU 2-3x cheaper than ResNet-18 to train and to run, so the demo trains in
    # minutes and the node keeps up with a camera; any smp encoder name works (the original: resnet101).
    encoder: str = "mobilenet_v2"
    # DropBlock: trained with a block of 6 cells (at the 8 x 16 deepest map of the training crops a
    # block of 12, the original's for 16 x 32 maps, would blank most of the map in every draw); the
    # monitor samples the 16 x 32 map of the full frames with 9. Chosen among 6, 9 and 12 on the
    # validation set (the calibration's cross-validated AUROC 0.961 / 0.968 / 0.963) and confirmed on
    # 240 test images of another seed (KDEClassifier AUROC 0.955 / 0.970 for 6 / 9, one-class KDE
    # 0.924 / 0.942), not on the demo's own test set.
    block_size: int = 9
    train_block_size: int | None = 6
    mc_samples: int = 10
    # The guide's 16 suit its fewer validation rows; with 240 images the calibration's own
    # cross-validated AUROC on validation (no test data) prefers 32: KDEClassifier 0.963 / 0.977 /
    # 0.988 for 8 / 16 / 32 components. On 240 test images of another seed that gave AUROC 0.964 /
    # 0.982 / 0.987 and FPR@95 0.16 / 0.07 / 0.02. Fewer for toy sizes (PCA needs more rows than components).
    pca_components: int = 32
    # pytorch-ood baselines cost 1 + M full forward passes per image: a subset keeps the demo short.
    baseline_images: int = 20
    baseline_mc_samples: int = 5
    segmentation_images: int = 20  #: per set, for the segmentation-under-anomalies table (one forward each)
    seed: int = 0


QUICK = DemoConfig(n_train=24, n_val=12, n_test=12, height=128, width=256, epochs=1, train_height=64,
                   train_width=128, batch_size=4, block_size=3, train_block_size=None, mc_samples=6, pca_components=4,
                   baseline_images=4, baseline_mc_samples=2, segmentation_images=4)


def _stamp_ok(stamp: Path, config: dict[str, Any]) -> bool:
    # Compare as JSON: tuples in the config come back from the stamp as lists.
    return stamp.is_file() and json.loads(stamp.read_text()).get("config") == json.loads(json.dumps(config, default=str))


def _write_stamp(stamp: Path, config: dict[str, Any], result: dict[str, Any]) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"config": config, "result": result}, indent=2, default=str))


def _step(name: str, stamp: Path, config: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if _stamp_ok(stamp, config):
        print(f"[demo] {name}: cached ({stamp.parent})")
        return json.loads(stamp.read_text())["result"]
    print(f"[demo] {name} ...", flush=True)
    t0 = time.perf_counter()
    result = run()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _write_stamp(stamp, config, result)
    print(f"[demo] {name}: done in {result['seconds']} s")
    return result


def data_config(cfg: DemoConfig) -> dict[str, Any]:
    """What the demo's dataset depends on (its generator's arguments)."""
    return {"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test, "height": cfg.height,
            "width": cfg.width, "seed": cfg.seed}


def training_data_config(cfg: DemoConfig) -> dict[str, Any]:
    """What the trained model depends on of the data: the training and validation images (the best
    checkpoint is chosen on validation), not the test split, whose size the model never sees. Image
    ``i`` of a split depends only on the seed, the split, ``i`` and the size, so a dataset regenerated
    for another test size holds the same training and validation images."""
    return {k: v for k, v in data_config(cfg).items() if k != "n_test"}


def generate(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    from offline_calibration.synthetic import MARKER_NAME, PARTIAL_MARKER_NAME, generate_dataset

    config = data_config(cfg)
    data, stamp = work / "data", work / "data" / "demo_stamp.json"
    # The folder is the demo's own output: written by an earlier demo with other sizes (e.g. before
    # the validation set grew), it is replaced, not refused. Anything else there is left alone and
    # generate_dataset says so.
    if (not _stamp_ok(stamp, config) and stamp.is_file()
            and ((data / MARKER_NAME).is_file() or (data / PARTIAL_MARKER_NAME).is_file())):
        print(f"[demo] generate data: {data} was written with another configuration, regenerating")
        shutil.rmtree(data)
    return _step("generate data", stamp, config, lambda: {"summary": generate_dataset(data, **config)})


def train_model(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    from offline_calibration.train import TrainConfig, train

    tcfg = TrainConfig(data_dir=str(work / "data"), out_dir=str(work / "model"), epochs=cfg.epochs,
                       batch_size=cfg.batch_size, img_size=(cfg.height, cfg.width),
                       train_size=(cfg.train_height, cfg.train_width), encoder_name=cfg.encoder,
                       block_size=cfg.block_size, train_block_size=cfg.train_block_size, seed=cfg.seed)
    # The data too: a model trained (and validated) on other images is not this configuration's.
    stamp_config = {**asdict(tcfg), "data": training_data_config(cfg)}
    return _step("train model", work / "model" / "demo_stamp.json", stamp_config, lambda: train(tcfg))


def calibration_stamp_config(calibration: dict[str, Any], checkpoint_sha256: str, cfg: DemoConfig) -> dict[str, Any]:
    """What the calibration step's result depends on: its configuration, the checkpoint, the
    anomalies' rendering and the images (a dataset regenerated with other sizes must not reuse the
    old report)."""
    from offline_calibration.anomalies import ANOMALY_VERSION

    return {**calibration, "checkpoint_sha256": checkpoint_sha256, "anomaly_version": ANOMALY_VERSION,
            "data": data_config(cfg)}


def calibrate(work: Path, cfg: DemoConfig, checkpoint: str) -> dict[str, Any]:
    import yaml

    from offline_calibration.calibrate import run_calibration
    from offline_calibration.config import load_config

    config = {
        "output_dir": "calibration",
        "dataset": {"kind": "cityscapes", "root": "data", "img_size": [cfg.height, cfg.width]},
        "model": {"checkpoint": str(Path(checkpoint).relative_to(work.resolve())) if Path(checkpoint).is_absolute()
                  else checkpoint, "model_class": MODEL_CLASS, "layer": HOOKED_LAYER},
        "sampling": {"mc_samples": cfg.mc_samples, "batch_size": 4},
        "detection": {"pca_components": cfg.pca_components},
        "baselines": {"max_images": cfg.baseline_images, "mc_samples": cfg.baseline_mc_samples},
        "segmentation": {"max_images": cfg.segmentation_images},
    }
    cfg_path = work / "calibration.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sha = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()

    def run() -> dict[str, Any]:
        report = run_calibration(load_config(cfg_path))
        det = report["deployed"]["detector"]
        return {"artefact": report["deployed"]["artefact"], "report": str(work.resolve() / "calibration" / "report.md"),
                "deployed": det, "metrics": report["detectors"][det]["ood_sets"]["all"],
                # Every detector but the guide's supervised KDEClassifier is fitted on InD only.
                "best_one_class_auroc": max(r["ood_sets"]["all"]["auroc"] for n, r in report["detectors"].items()
                                            if n != "kde_classifier"),
                "per_kind_auroc": {k: v["auroc"] for k, v in report["detectors"][det]["ood_sets"].items()},
                "segmentation": report.get("segmentation", {}).get("sets", {})}

    stamp_config = calibration_stamp_config(config, sha, cfg)
    return _step("calibrate", work / "calibration" / "demo_stamp.json", stamp_config, run)


def demo_bag_stamp_config(cfg: DemoConfig) -> dict[str, Any]:
    """What the demo bag depends on: it cycles through the test images, so a dataset regenerated with
    another test size makes another drive, and so does another anomaly rendering."""
    from offline_calibration.anomalies import ANOMALY_VERSION

    return {"anomaly_version": ANOMALY_VERSION, "data": data_config(cfg)}


def replay(work: Path, cfg: DemoConfig, *, checkpoint: str, artefact: str) -> int:
    """Step 5: a demo rosbag (InD driving, then a stretch of each anomaly), evaluated offline and live."""
    from lsea_monitor.replay import cli
    from lsea_monitor.replay.demo_bag import build_demo_bag

    bag = work / "replay" / "demo_drive.mcap"
    bag_stamp = work / "replay" / "demo_bag_stamp.json"
    bag_config = demo_bag_stamp_config(cfg)
    if bag.exists() and not _stamp_ok(bag_stamp, bag_config):
        shutil.rmtree(bag) if bag.is_dir() else bag.unlink()
    if not bag.exists():
        print("[demo] building the demo rosbag ...")
        info = build_demo_bag(work / "data", bag, storage="mcap")
        _write_stamp(bag_stamp, bag_config, {})
    else:
        info = {"image_topic": "/camera/image_raw", "gt_topic": "/ground_truth/ood"}
    repo = Path(__file__).resolve().parents[1]
    out_bag = work / "replay" / "report" / "demo_drive_with_verdicts.mcap"
    if out_bag.exists():  # this step's own output from a previous run (lsea-replay-eval never overwrites)
        shutil.rmtree(out_bag) if out_bag.is_dir() else out_bag.unlink()
    print("[demo] lsea-replay-eval --mode both (offline in-process, then live through the node at 1x)")
    code = cli.main([str(bag), "--image-topic", info["image_topic"], "--gt-topic", info["gt_topic"],
                     "--mode", "both", "--out", str(work / "replay" / "report"), "--checkpoint", checkpoint,
                     "--artefact", artefact, "--params-file", str(repo / "config" / "lsea_monitor.params.yaml"),
                     "--output-bag", str(out_bag)])
    print(f"[demo] replay report: {work / 'replay' / 'report' / 'report.md'} (exit code {code})")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsea-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="work_dirs/demo")
    p.add_argument("--quick", action="store_true", help="a tiny configuration (for tests)")
    p.add_argument("--skip-ros", action="store_true", help="stop after calibration")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else DemoConfig()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    generate(work, cfg)
    trained = train_model(work, cfg)
    print(f"[demo] model: val mIoU {trained['val_miou']:.3f} ({trained['best_checkpoint']})")
    calib = calibrate(work, cfg, trained["best_checkpoint"])
    m = calib["metrics"]
    print(f"[demo] calibration ({calib['deployed']}, test InD vs anomalies): AUROC {m['auroc']:.4f}, "
          f"FPR@95TPR OoD-positive {m['fpr_at_95_tpr_ood_positive']:.4f}, "
          f"InD-positive {m['fpr_at_95_tpr_ind_positive']:.4f}; best one-class AUROC {calib['best_one_class_auroc']:.4f}")
    for kind, q in calib.get("segmentation", {}).items():
        if kind != "ind":
            print(f"[demo]   {kind}: detection AUROC {calib['per_kind_auroc'].get(kind, float('nan')):.3f}; "
                  f"segmentation pixel accuracy {q['pixel_accuracy']:.3f} "
                  f"(InD {calib['segmentation']['ind']['pixel_accuracy']:.3f}), "
                  f"{100 * q['hurt_fraction']:.0f} % of images hurt")
    print(f"[demo] calibration report: {calib['report']}")
    if not args.skip_ros:
        from offline_calibration import demo_ros

        ros = demo_ros.run(work, cfg, checkpoint=trained["best_checkpoint"], artefact=calib["artefact"])
        replay_code = replay(work, cfg, checkpoint=trained["best_checkpoint"], artefact=calib["artefact"])
        if ros.get("node_exit_code") != 0 or replay_code != 0:
            print(f"[demo] FAILED after {time.perf_counter() - t0:.0f} s: node exit code {ros.get('node_exit_code')}, "
                  f"lsea-replay-eval exit code {replay_code} (see the logs above)", file=sys.stderr)
            return 1
    print(f"[demo] finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
