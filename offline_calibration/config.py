"""``lsea-calibrate`` configuration: a YAML file mapped onto typed, validated dataclasses.

Unknown keys, wrong types and missing paths are reported with the key's full name, so a typo in a
config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from lsea_monitor.detectors import DETECTORS
from lsea_monitor.errors import InputValidationError
from lsea_monitor.pipeline import PRECISIONS
from lsea_monitor.preprocessing import CITYSCAPES_MEAN, CITYSCAPES_STD


@dataclass
class DatasetConfig:
    kind: str = "cityscapes"  #: cityscapes | woodscape
    root: str = ""
    img_size: list[int] = field(default_factory=lambda: [256, 512])
    mean: list[float] = field(default_factory=lambda: list(CITYSCAPES_MEAN))
    std: list[float] = field(default_factory=lambda: list(CITYSCAPES_STD))
    anomaly_kinds: list[str] = field(default_factory=lambda: ["mud", "fog", "sunflare"])
    anomaly_seed: int = 0
    max_images: int = 0  #: per split, 0 = all (for quick trials)
    soiling: bool = False  #: WoodScape: also evaluate on the soiling set


@dataclass
class ModelConfig:
    checkpoint: str = ""
    model_class: str = "offline_calibration.model:DeepLabV3PlusModule"
    layer: str = "deeplab_v3plus_model.drop_block1"
    trust_checkpoint: bool = False


@dataclass
class SamplingConfig:
    mc_samples: int = 10
    strategy: str = "fast"  #: fast | naive
    entropy_k: int = 0  #: 0 = min(5, M - 1)
    precision: str = "fp32"
    batch_size: int = 4
    num_workers: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    ddp_strategy: str = "auto"  #: Lightning strategy, e.g. ddp for multi-GPU / multi-node
    seed: int = 0  #: seed of the Monte-Carlo draws (results do not depend on batching)
    #: ``common``: every image drawn with ``seed`` itself, recorded in the artefact, which the node
    #: and the replay then use for every frame (common random numbers: less MC noise between
    #: images); ``per_image``: each image its own seed derived from ``seed`` (the node then seeds
    #: each frame from its stamp).
    mc_seeding: str = "common"


@dataclass
class DetectionConfig:
    pca_components: int = 16
    kde_bandwidth: float = 0.8  #: the guide's; used as given when kde_bandwidth_grid is empty
    #: KDEClassifier bandwidths to choose from by image-grouped cross-validated AUROC on validation
    #: features only (never test); [] = use kde_bandwidth as given.
    kde_bandwidth_grid: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.2, 1.6, 2.0])
    #: Validation OoD rows the KDEClassifier is fitted on: ``every_kind`` = each validation image
    #: under every anomaly kind (len(kinds) x N rows); ``mixed`` = the original's set, one kind per image.
    fit_ood: str = "every_kind"
    one_class_bandwidth: float = 1.0
    target_ind_tpr: float = 0.95
    threshold_folds: int = 5  #: out-of-fold scores for the operating threshold (0 = in-sample)
    deploy: str = "kde_classifier"  #: kde_classifier | one_class_kde | mahalanobis | ppca
    cross_type: bool = True


@dataclass
class BaselineConfig:
    enabled: bool = True
    mc_samples: int = 0  #: 0 = the sampling M
    max_images: int = 0  #: per set, 0 = as many as the latent detectors (each costs 1 + M full forwards)


@dataclass
class SegmentationConfig:
    """How much each anomaly hurts the segmentation (labelled images, eval-mode forward; see
    offline_calibration.segmentation_quality)."""

    enabled: bool = True
    max_images: int = 0  #: per set, 0 = as many as the latent detectors (each costs one full forward)
    #: auto = test when its labels are real (then detection is also reported for hurt and unhurt
    #: images), else val (the real Cityscapes test labels are placeholders)
    split: str = "auto"
    #: "auto" = the model's hparams.ignore_index when it has one; an int; or null (every label counts)
    ignore_index: Any = "auto"


@dataclass
class ReportConfig:
    pacmap: bool = True
    pacmap_neighbors: int = 28


@dataclass
class CalibrationConfig:
    output_dir: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    cache_dir: str = ""  #: default: <output_dir>/cache
    artefact_name: str = "detector.safetensors"

    def validate(self) -> None:
        check_types(self)
        d, s, det = self.dataset, self.sampling, self.detection
        _at_least("dataset.anomaly_seed", d.anomaly_seed, 0)
        _at_least("dataset.max_images", d.max_images, 0, "(0 = every image)")
        _at_least("sampling.batch_size", s.batch_size, 1)
        _at_least("sampling.num_workers", s.num_workers, 0)
        _at_least("sampling.seed", s.seed, 0)
        if s.seed >= 2**63:
            raise InputValidationError(f"sampling.seed must be below 2**63, got {s.seed}.")
        if s.precision not in PRECISIONS:
            raise InputValidationError(f"sampling.precision must be one of {sorted(PRECISIONS)}, got {s.precision!r}.")
        if not (isinstance(s.devices, (str, int)) and not isinstance(s.devices, bool)) and not (
                isinstance(s.devices, list) and s.devices
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in s.devices)):
            raise InputValidationError(f"sampling.devices must be auto, a device count, or a list of device "
                                       f"indices (as Lightning's Trainer takes), got {s.devices!r}.")
        _at_least("detection.pca_components", det.pca_components, 0, "(0 = no PCA)")
        _at_least("detection.threshold_folds", det.threshold_folds, 0,
                  "(0 or 1 = in-sample scores, else the number of folds, >= 2)")
        for key, value in (("detection.kde_bandwidth", det.kde_bandwidth),
                           ("detection.one_class_bandwidth", det.one_class_bandwidth)):
            if not (math.isfinite(value) and value > 0):
                raise InputValidationError(f"{key} must be a finite number > 0, got {value!r}.")
        _at_least("baselines.mc_samples", self.baselines.mc_samples, 0, "(0 = sampling.mc_samples)")
        _at_least("baselines.max_images", self.baselines.max_images, 0, "(0 = as many as the latent detectors)")
        _at_least("report.pacmap_neighbors", self.report.pacmap_neighbors, 1)
        if d.kind not in ("cityscapes", "woodscape"):
            raise InputValidationError(f"dataset.kind must be cityscapes or woodscape, got {d.kind!r}.")
        if not d.root or not Path(d.root).is_dir():
            raise InputValidationError(f"dataset.root {d.root!r} is not a directory.")
        if not self.model.checkpoint or not Path(self.model.checkpoint).is_file():
            raise InputValidationError(f"model.checkpoint {self.model.checkpoint!r} is not a file.")
        for key, value in (("output_dir", self.output_dir), ("cache_dir", self.cache_dir)):
            existing = Path(value)
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent  # the folder will be created under its first existing ancestor
            if value and not existing.is_dir():
                raise InputValidationError(f"{key} {value!r} is not a directory ({str(existing)!r} is a file or "
                                           "a device).")
        name = self.artefact_name
        if not name or Path(name).name != name or name in (".", ".."):
            raise InputValidationError(f"artefact_name must be a plain file name (written inside output_dir), "
                                       f"got {name!r}.")
        if len(d.img_size) != 2 or min(d.img_size) < 16:
            raise InputValidationError(f"dataset.img_size must be [H, W] >= 16, got {d.img_size}.")
        if s.mc_samples < 3:
            raise InputValidationError(f"sampling.mc_samples must be >= 3 for the k-NN entropy, got {s.mc_samples}.")
        if s.entropy_k != 0 and not 1 <= s.entropy_k < s.mc_samples:
            raise InputValidationError(f"sampling.entropy_k must be 0 (= min(5, M - 1)) or in [1, M - 1] = "
                                       f"[1, {s.mc_samples - 1}] for M = sampling.mc_samples, got {s.entropy_k}.")
        if s.strategy not in ("fast", "naive"):
            raise InputValidationError(f"sampling.strategy must be fast or naive, got {s.strategy!r}.")
        if s.mc_seeding not in ("common", "per_image"):
            raise InputValidationError(f"sampling.mc_seeding must be common or per_image, got {s.mc_seeding!r}.")
        if not 0 < det.target_ind_tpr < 1:
            raise InputValidationError(f"detection.target_ind_tpr must be in (0, 1), got {det.target_ind_tpr}.")
        if det.fit_ood not in ("every_kind", "mixed"):
            raise InputValidationError(f"detection.fit_ood must be every_kind or mixed, got {det.fit_ood!r}.")
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0 for b in det.kde_bandwidth_grid):
            raise InputValidationError(f"detection.kde_bandwidth_grid must hold positive numbers, "
                                       f"got {det.kde_bandwidth_grid!r}.")
        if det.deploy not in DETECTORS:  # lsea-calibrate fits every registered detector
            *names, last = DETECTORS
            raise InputValidationError(f"detection.deploy {det.deploy!r} unknown; use {', '.join(names)} or {last}.")
        if det.deploy == "ppca" and not det.pca_components:
            raise InputValidationError("detection.deploy is ppca, which models detection.pca_components principal "
                                       "directions, but detection.pca_components is 0; set it (e.g. 16).")
        seg = self.segmentation
        _at_least("segmentation.max_images", seg.max_images, 0, "(0 = as many as the latent detectors)")
        if seg.split not in ("auto", "val", "test"):
            raise InputValidationError(f"segmentation.split must be auto, val or test, got {seg.split!r}.")
        if not (seg.ignore_index is None or seg.ignore_index == "auto"
                or (isinstance(seg.ignore_index, int) and not isinstance(seg.ignore_index, bool))):
            raise InputValidationError(f"segmentation.ignore_index must be \"auto\", an integer or null, "
                                       f"got {seg.ignore_index!r}.")
        if not d.anomaly_kinds:
            raise InputValidationError("dataset.anomaly_kinds is empty; give at least one of mud, fog, sunflare.")


def _at_least(key: str, value: int | float, low: int, meaning: str = "") -> None:
    if value < low:
        meaning = f" {meaning}" if meaning else ""
        raise InputValidationError(f"{key} must be an integer >= {low}{meaning}, got {value!r}.")


def _describe(hint: Any) -> str:
    """A config type in words, for error messages."""
    if get_origin(hint) is list:
        return f"a list of {_describe(get_args(hint)[0]).split(' ', 1)[1]}s"
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in get_args(hint))
    return {bool: "a boolean (true or false, unquoted)", int: "an integer", float: "a number",
            str: "a string"}[hint]


def _type_ok(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, get_args(hint)[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"Config type {hint!r} has no check; add one to offline_calibration.config._type_ok.")


def check_types(obj: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass (recursively) against its type hint.

    Strict, as YAML types values itself: a boolean field takes only ``true``/``false`` (the string
    ``"false"`` would be truthy), an integer field only integers (not ``10.5``, ``"10"`` or ``true``),
    a number field integers or floats (not booleans), a string field only strings; ``Any`` fields
    are checked by :meth:`CalibrationConfig.validate`.

    Raises
    ------
    InputValidationError
        Naming the dotted key, the value and the expected type.
    """
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value, hint = f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise InputValidationError(f"Config section {key!r} must be a {hint.__name__}, got {value!r}.")
            check_types(value, f"{key}.")
        elif not _type_ok(value, hint):
            detail = type(value).__name__
            if get_origin(hint) is list and isinstance(value, list):
                bad = next(v for v in value if not _type_ok(v, get_args(hint)[0]))
                detail = f"element {bad!r} is a {type(bad).__name__}"
            raise InputValidationError(f"Config key {key} must be {_describe(hint)}, got {value!r} ({detail}). "
                                       "Fix its value in the YAML file or the --set override.")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise InputValidationError(f"Config section {prefix.rstrip('.') or 'top level'!r} must be a mapping, "
                                   f"got {type(data).__name__}.")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputValidationError(f"Unknown config key(s) {[prefix + k for k in unknown]}; known in "
                                   f"{prefix or 'top level'!r}: {sorted(names)}.")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


#: Config keys holding paths (resolved to absolute paths by :func:`load_config`).
PATH_KEYS = ("output_dir", "cache_dir", "dataset.root", "model.checkpoint")


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> CalibrationConfig:
    """Read a YAML config, apply ``overrides`` (dotted key -> value, as ``--set`` gives them), validate.

    Relative paths written in the YAML file are taken relative to the YAML file's folder; relative
    paths given in ``overrides`` (the command line) relative to the current working directory, as a
    shell user expects.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputValidationError(f"Could not read calibration config {path}: {err}.") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputValidationError(f"Calibration config {path} must be a mapping of keys (output_dir, dataset, "
                                   f"model, ...), got a {type(data).__name__}.")
    for dotted, value in (overrides or {}).items():
        *parents, leaf = parts = dotted.split(".")
        if not all(parts):
            raise InputValidationError(f"Override key {dotted!r} is not a dotted config key such as "
                                       "sampling.mc_samples.")
        node = data
        for depth, p in enumerate(parents):
            if node.get(p) is None:  # absent, or an empty section in the YAML file
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise InputValidationError(f"Override {dotted!r}: {'.'.join(parents[:depth + 1])} is not a config "
                                           f"section (it holds {node!r}); check the key's spelling.")
        node[leaf] = value
    if "output_dir" not in data:
        raise InputValidationError(f"Calibration config {path} lacks 'output_dir'.")
    cfg = _build(CalibrationConfig, data, "")
    check_types(cfg)  # before the paths are joined: a number given as a path is named, not a TypeError
    from_command_line = {key for key in PATH_KEYS
                         if any(key == o or key.startswith(o + ".") for o in (overrides or {}))}

    def resolve(key: str, value: str) -> str:
        base = Path.cwd() if key in from_command_line else path.parent
        return str((base / value).resolve()) if value else ""

    cfg.output_dir = resolve("output_dir", cfg.output_dir)
    cfg.dataset.root = resolve("dataset.root", cfg.dataset.root)
    cfg.model.checkpoint = resolve("model.checkpoint", cfg.model.checkpoint)
    cfg.cache_dir = resolve("cache_dir", cfg.cache_dir) or str(Path(cfg.output_dir) / "cache")
    cfg.validate()
    return cfg

