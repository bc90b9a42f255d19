"""Build a demo drive as a rosbag2 bag from the built-in default dataset, with ground truth.

The drive: InD driving, then for each anomaly type (mud, fog, sun flare, from
:func:`offline_calibration.anomalies.apply_anomaly`) an OoD stretch followed by InD driving again.
Frames are the images of the synthetic Cityscapes-layout dataset (:mod:`offline_calibration.synthetic`)
at 10 Hz of bag time; header stamps equal log times.

Topics: the camera (``/camera/image_raw``, ``sensor_msgs/Image`` rgb8, or
``/camera/image_raw/compressed``, ``sensor_msgs/CompressedImage`` JPEG/PNG) and the ground truth
``/ground_truth/ood`` (``std_msgs/Bool`` at every frame, True on OoD frames). The same intervals go to
the sidecars ``ground_truth.yaml`` and ``ground_truth.csv`` inside the bag folder (seconds relative to
the bag start; see :mod:`lsea_monitor.replay.ground_truth`).

Command line::

    python -m lsea_monitor.replay.demo_bag --data DIR --out BAG [--storage mcap|sqlite3]
        [--compressed none|jpeg|png] [--ind-frames 40] [--ood-frames 20] [--gap-frames 20]

``--data`` is a dataset written by ``python -m offline_calibration.synthetic`` (its test split is
used, else val, else train); an empty or missing folder gets a small one generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsea_monitor.replay.errors import ReplayError

ANOMALY_KINDS = ("mud", "fog", "sunflare")


@dataclass(frozen=True)
class DemoBagConfig:
    ind_frames: int = 40  #: InD frames before the first OoD stretch
    ood_frames: int = 20  #: frames of each OoD stretch
    gap_frames: int = 20  #: InD frames after each OoD stretch
    kinds: tuple[str, ...] = ANOMALY_KINDS
    rate_hz: float = 10.0
    start_ns: int = 1_700_000_000_000_000_000  #: bag time of the first frame
    compressed: str = "none"  #: none (sensor_msgs/Image rgb8), jpeg or png (CompressedImage)
    seed: int = 0
    frame_id: str = "camera"
    gt_topic: str = "/ground_truth/ood"
    generate_height: int = 256  #: image size when a dataset has to be generated
    generate_width: int = 512

    @property
    def image_topic(self) -> str:
        return "/camera/image_raw" if self.compressed == "none" else "/camera/image_raw/compressed"

    def segments(self) -> list[tuple[str, int]]:
        out = [("ind", self.ind_frames)]
        for kind in self.kinds:
            out += [(kind, self.ood_frames), ("ind", self.gap_frames)]
        return [(k, n) for k, n in out if n > 0]


def dataset_images(data: Path, needed: int, cfg: DemoBagConfig) -> list[Path]:
    """PNG paths of the dataset's test (else val, else train) split; generates a dataset into an empty folder."""
    root = data / "leftImg8bit"
    if not root.is_dir() and (not data.exists() or not any(data.iterdir())):
        from offline_calibration.synthetic import generate_dataset

        generate_dataset(data, 0, 0, min(max(needed, 1), 60), cfg.generate_height, cfg.generate_width, seed=cfg.seed,
                         color=False, progress=False)
    for split in ("test", "val", "train"):
        images = sorted((root / split).glob("*/*_leftImg8bit.png"))
        if images:
            return images
    raise ReplayError(f"No images in {data}: expected the Cityscapes layout leftImg8bit/<split>/<city>/*_leftImg8bit.png "
                      "(python -m offline_calibration.synthetic --out DIR writes one), or an empty folder to fill.")


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReplayError(f"Cannot read image {path}.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _image_cdr(rgb: np.ndarray, stamp_ns: int, cfg: DemoBagConfig) -> tuple[str, bytes]:
    import cv2

    from lsea_monitor.replay import decode

    t = decode.typestore().types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=cfg.frame_id)
    if cfg.compressed == "none":
        h, w = rgb.shape[:2]
        msg = t[decode.IMAGE](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                              data=np.ascontiguousarray(rgb).reshape(-1))
        return decode.IMAGE, decode.serialize(msg, decode.IMAGE)
    ext = ".jpg" if cfg.compressed == "jpeg" else ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ReplayError(f"cv2 could not encode a frame as {cfg.compressed}.")
    msg = t[decode.COMPRESSED](header=header, format=f"rgb8; {cfg.compressed} compressed bgr8",
                               data=np.frombuffer(buf.tobytes(), np.uint8))
    return decode.COMPRESSED, decode.serialize(msg, decode.COMPRESSED)


def build_demo_bag(data: str | Path, out: str | Path, *, storage: str = "mcap",
                   cfg: DemoBagConfig = DemoBagConfig()) -> dict[str, Any]:
    """Write the demo bag and its sidecars; return a summary (paths, frames, intervals)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from offline_calibration.anomalies import apply_anomaly, index_seed
    from lsea_monitor.replay import decode

    if storage not in ("mcap", "sqlite3"):
        raise ReplayError(f"storage must be mcap or sqlite3, got {storage!r}.")
    if cfg.compressed not in ("none", "jpeg", "png"):
        raise ReplayError(f"compressed must be none, jpeg or png, got {cfg.compressed!r}.")
    unknown = [k for k in cfg.kinds if k not in ANOMALY_KINDS]
    if unknown:
        raise ReplayError(f"Unknown anomaly kind(s) {unknown}; known: {', '.join(ANOMALY_KINDS)}.")
    out_p = Path(out)
    if out_p.exists():
        raise ReplayError(f"Output bag {out_p} already exists; remove it or choose another path.", bag=str(out_p))
    segments = cfg.segments()
    n_frames = sum(n for _, n in segments)
    images = dataset_images(Path(data), n_frames, cfg)
    period_ns = int(round(1e9 / cfg.rate_hz))
    intervals: list[dict[str, Any]] = []
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    ts = decode.typestore()
    cache: dict[int, np.ndarray] = {}
    i = 0
    with Writer(out_p, version=9, storage_plugin=plugin) as writer:
        msgtype = decode.IMAGE if cfg.compressed == "none" else decode.COMPRESSED
        cam = writer.add_connection(cfg.image_topic, msgtype, typestore=ts)
        gt = writer.add_connection(cfg.gt_topic, decode.BOOL, typestore=ts)
        for kind, count in segments:
            if kind != "ind":
                intervals.append({"start_s": i * period_ns / 1e9, "end_s": (i + count) * period_ns / 1e9,
                                  "label": kind})
            for _ in range(count):
                stamp = cfg.start_ns + i * period_ns
                k = i % len(images)
                if k not in cache:
                    cache[k] = _read_rgb(images[k])
                rgb = cache[k]
                if kind != "ind":
                    rgb = apply_anomaly(rgb, kind, index_seed(cfg.seed, i, "demo_bag"))
                _, raw = _image_cdr(rgb, stamp, cfg)
                writer.write(cam, stamp, raw)
                writer.write(gt, stamp, decode.bool_cdr(kind != "ind"))
                i += 1
    yaml_path, csv_path = out_p / "ground_truth.yaml", out_p / "ground_truth.csv"
    import yaml

    yaml_path.write_text("# OoD intervals of this demo bag, seconds relative to the bag start "
                         "(lsea_monitor.replay.ground_truth)\n" + yaml.safe_dump({"intervals": intervals}, sort_keys=False))
    csv_path.write_text("start_s,end_s,label\n" + "".join(f"{iv['start_s']},{iv['end_s']},{iv['label']}\n"
                                                         for iv in intervals))
    return {"bag": str(out_p), "storage": storage, "image_topic": cfg.image_topic, "gt_topic": cfg.gt_topic,
            "frames": n_frames, "duration_s": n_frames * period_ns / 1e9, "rate_hz": cfg.rate_hz,
            "intervals": intervals, "gt_yaml": str(yaml_path), "gt_csv": str(csv_path),
            "images_from": str(images[0].parent.parent), "config": {**asdict(cfg), "kinds": list(cfg.kinds)}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lsea_monitor.replay.demo_bag", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="synthetic Cityscapes-layout dataset folder (empty: generate one)")
    p.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--compressed", choices=("none", "jpeg", "png"), default="none",
                   help="none: sensor_msgs/Image rgb8; jpeg/png: sensor_msgs/CompressedImage")
    d = DemoBagConfig()
    p.add_argument("--ind-frames", type=int, default=d.ind_frames)
    p.add_argument("--ood-frames", type=int, default=d.ood_frames)
    p.add_argument("--gap-frames", type=int, default=d.gap_frames)
    p.add_argument("--rate-hz", type=float, default=d.rate_hz)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    if min(a.ind_frames, a.ood_frames, a.gap_frames) < 0 or a.rate_hz <= 0:
        p.error("frame counts must be >= 0 and --rate-hz > 0")
    cfg = DemoBagConfig(ind_frames=a.ind_frames, ood_frames=a.ood_frames, gap_frames=a.gap_frames, rate_hz=a.rate_hz,
                        compressed=a.compressed, seed=a.seed)
    try:
        summary = build_demo_bag(a.data, a.out, storage=a.storage, cfg=cfg)
    except ReplayError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
