"""The detector artefact: everything the node needs to score a frame, in one self-describing file.

Format: a `safetensors <https://github.com/huggingface/safetensors>`_ file. The fitted arrays
(detector, PCA) are its tensors; a JSON manifest (detector and PCA parameters, threshold, MC
samples, hooked layer, preprocessing, the SHA-256 of the checkpoint it was fitted with, package
versions, metrics) sits in its string metadata. Loading parses a length-prefixed JSON header and raw
arrays: no code from the file is ever executed (unlike pickle). A SHA-256 digest over the manifest
and every array detects tampering and corruption; the file size is bounded before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from lsea_monitor.errors import ArtefactError, InputValidationError
from lsea_monitor.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "lsea-monitor-detector"
FORMAT_VERSION = 1
#: Refuse to read artefacts beyond this size: a KDE detector over a few thousand 16-d points is
#: a few MB; a multi-GB file is a mistake or an attack.
MAX_ARTEFACT_BYTES = 512 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the artefact's numbers depend on."""
    from importlib import metadata

    versions = {}
    for name in ("lsea-monitor", "torch", "numpy", "scikit-learn", "scipy", "segmentation-models-pytorch", "dropblock"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _content_digest(manifest_json: str, arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256(manifest_json.encode("utf-8"))
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelBinding:
    """Which model and layer the detector was fitted on; the node checks it matches its own."""

    model_class: str  #: import path ``package.module:Class`` of the LightningModule
    layer: str  #: dotted path of the hooked module inside it
    checkpoint_sha256: str  #: SHA-256 of the checkpoint file the latent samples came from
    mc_samples: int  #: M, Monte-Carlo samples per image used at calibration
    entropy_k: int | None = None  #: k of the k-NN entropy; None = min(5, M - 1)
    #: Common Monte-Carlo seed: calibration drew every image's M samples with this seed, and the
    #: node and the replay draw every frame's with it too (common random numbers: two images differ
    #: in their entropies because they differ, not because their dropout masks did). None = each
    #: image / frame has its own seed (calibration: per image; run time: the frame's stamp).
    mc_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("model_class", "layer", "checkpoint_sha256"):
            if not isinstance(getattr(self, name), str):
                raise InputValidationError(f"ModelBinding.{name} must be a string, got {getattr(self, name)!r}.")
        for name, low, optional in (("mc_samples", 2, False), ("entropy_k", 1, True), ("mc_seed", 0, True)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InputValidationError(f"ModelBinding.{name} must be an integer >= {low}"
                                           f"{' or None' if optional else ''}, got {value!r}.")


def check_threshold(threshold: Any) -> float:
    """The operating threshold as a float; a non-finite one is refused.

    ``score > nan`` is always False: a NaN threshold would never flag a frame (fail-open), +inf
    neither, and -inf would flag every frame.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise InputValidationError(f"The detector threshold must be a finite number, got {threshold!r}: a NaN or "
                                   "infinite threshold never (or always) flags a frame. Re-run lsea-calibrate.")
    return float(threshold)


@dataclass(frozen=True)
class DetectorArtefact:
    """A fitted latent-entropy OoD detector, ready to score per-dimension entropy vectors.

    Attributes
    ----------
    detector : OODDetector
        Fitted detector; ``score_samples`` is higher for less safe inputs.
    pca : LatentPCA or None
        Projection applied to the entropy features before the detector.
    threshold : float
        Operating threshold on the detector score: a frame is OoD iff score > threshold.
    binding : ModelBinding
    preprocessing : Preprocessing
    metrics : dict
        Calibration metrics (free-form, JSON-able), for the record.
    info : dict
        Provenance: creation time, package versions, dataset description.
    """

    detector: Any
    pca: Any
    threshold: float
    binding: ModelBinding
    preprocessing: Preprocessing
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not isinstance(self.binding, ModelBinding):
            raise InputValidationError(f"binding must be a ModelBinding, got {type(self.binding).__name__}.")
        for name in ("metrics", "info"):
            if not isinstance(getattr(self, name), dict):
                raise InputValidationError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}.")

    # --- scoring: the single implementation used by calibration, the node and the replay --------
    @property
    def n_features(self) -> int:
        """Number of entropy features (latent channels C) the artefact expects."""
        return int(self.pca.n_features_in_ if self.pca is not None else self.detector.n_features_in_)

    def score_features(self, h_z: np.ndarray) -> np.ndarray:
        """Detector scores of per-dimension latent entropies.

        Parameters
        ----------
        h_z : ndarray of shape (N, C)
            Per-dimension k-NN entropies (nats) of N images' latent MC samples.

        Returns
        -------
        ndarray of shape (N,), float64; higher = less safe.
        """
        h_z = np.asarray(h_z, dtype=np.float64)
        if h_z.ndim != 2 or h_z.shape[1] != self.n_features:
            raise InputValidationError(
                f"Entropy features have shape {h_z.shape}; the artefact expects (N, {self.n_features}). "
                "Was the artefact calibrated on another model or layer?"
            )
        features = self.pca.transform(h_z) if self.pca is not None else h_z
        return np.asarray(self.detector.score_samples(features), dtype=np.float64)

    @property
    def supports_device_scoring(self) -> bool:
        """Whether :meth:`score_features_torch` can score on a device (the detector has a torch path)."""
        return bool(getattr(self.detector, "supports_torch", False))

    def score_features_torch(self, h_z: "torch.Tensor") -> "torch.Tensor":
        """:meth:`score_features` on the tensor's device, without host synchronisation.

        Parameters
        ----------
        h_z : Tensor of shape (N, C)
            Per-dimension entropies, on any device. Values are not checked: a non-finite row gives
            a non-finite or meaningless score, which the caller masks (the per-frame path does).

        Returns
        -------
        Tensor of shape (N,), float64 (float32 on MPS), on ``h_z``'s device; higher = less safe.
        Equal to :meth:`score_features` to rounding where the detector's scikit-learn reference is
        exact (see :func:`~lsea_monitor.detectors.base.kde_log_density_torch`).
        """
        if h_z.ndim != 2 or h_z.shape[1] != self.n_features:
            raise InputValidationError(
                f"Entropy features have shape {tuple(h_z.shape)}; the artefact expects (N, {self.n_features}). "
                "Was the artefact calibrated on another model or layer?"
            )
        features = self.pca.transform_torch(h_z, check_finite=False) if self.pca is not None else h_z
        return self.detector.score_torch(features)

    def with_threshold(self, threshold: float) -> "DetectorArtefact":
        """A copy with another operating threshold (a finite number, else InputValidationError)."""
        return replace(self, threshold=check_threshold(threshold))

    # --- persistence ----------------------------------------------------------------------------
    def to_manifest_and_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        det_params, det_arrays = self.detector.get_state()
        arrays = {f"detector.{k}": np.ascontiguousarray(v) for k, v in det_arrays.items()}
        pca_params = None
        if self.pca is not None:
            pca_params, pca_arrays = self.pca.get_state()
            arrays.update({f"pca.{k}": np.ascontiguousarray(v) for k, v in pca_arrays.items()})
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "detector": {"name": type(self.detector).name, "params": det_params},
            "pca": pca_params,
            "threshold": float(self.threshold),
            "binding": vars(self.binding).copy(),
            "preprocessing": self.preprocessing.to_dict(),
            "n_features": self.n_features,
            "metrics": self.metrics,
            "info": {"created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "package_versions": package_versions(), **self.info},
        }
        return manifest, arrays

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artefact atomically (temp file + rename) and return its path."""
        from safetensors.numpy import save_file

        manifest, arrays = self.to_manifest_and_arrays()
        manifest_json = json.dumps(manifest, sort_keys=True, allow_nan=True)
        metadata = {"format": FORMAT_NAME, "manifest": manifest_json,
                    "content_sha256": _content_digest(manifest_json, arrays)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(arrays, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expect_checkpoint_sha256: str | None = None,
        expect_layer: str | None = None,
        max_bytes: int = MAX_ARTEFACT_BYTES,
    ) -> "DetectorArtefact":
        """Read, verify and rebuild an artefact; any problem raises :class:`ArtefactError`.

        Checks, in order: the file exists and is not oversized; it parses as safetensors (a pickle,
        a truncated file or random bytes fail here, without executing anything); the format name
        and version; the content digest (tampering); the detector type; and, when given, that it
        was fitted on this checkpoint and hooked layer.
        """
        path = Path(path)
        if not path.is_file():
            raise ArtefactError(f"Detector artefact not found at {path}. Run lsea-calibrate to create it, "
                                "or set the 'artefact' parameter to its path.")
        size = path.stat().st_size
        if size > max_bytes:
            raise ArtefactError(f"Artefact {path} is {size} bytes, over the {max_bytes}-byte limit; refusing to read it.")
        manifest_json, arrays, metadata = _read_safetensors(path)
        if metadata.get("format") != FORMAT_NAME:
            raise ArtefactError(f"{path} is a safetensors file but not an LSEA detector artefact "
                                f"(format {metadata.get('format')!r}). Point 'artefact' at the file lsea-calibrate wrote.")
        if _content_digest(manifest_json, arrays) != metadata.get("content_sha256"):
            raise ArtefactError(f"Artefact {path} failed its integrity check (content SHA-256 mismatch): it was "
                                "modified or corrupted after calibration. Re-run lsea-calibrate or restore the file.")
        try:
            manifest = json.loads(manifest_json)
        except json.JSONDecodeError as err:
            raise ArtefactError(f"Artefact {path} has an unreadable manifest: {err}.") from err
        if not isinstance(manifest, dict):
            raise ArtefactError(f"Artefact {path} has a malformed manifest: a JSON {type(manifest).__name__}, not an "
                                "object. Re-run lsea-calibrate.")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtefactError(f"Artefact {path} has format version {manifest.get('format_version')}; this "
                                f"lsea-monitor reads version {FORMAT_VERSION}. Re-run lsea-calibrate.")
        artefact = cls._from_manifest(manifest, arrays, path)
        b = artefact.binding
        if expect_checkpoint_sha256 is not None and b.checkpoint_sha256 != expect_checkpoint_sha256:
            raise ArtefactError(
                f"Artefact {path} was calibrated with checkpoint sha256 {b.checkpoint_sha256[:12]}..., but the "
                f"configured checkpoint has sha256 {expect_checkpoint_sha256[:12]}.... Re-run lsea-calibrate with "
                "this checkpoint, or configure the checkpoint the artefact was fitted with.")
        if expect_layer is not None and b.layer != expect_layer:
            raise ArtefactError(f"Artefact {path} was calibrated on layer {b.layer!r}, but the node hooks "
                                f"{expect_layer!r}. Set 'layer' to {b.layer!r} or re-calibrate on {expect_layer!r}.")
        return artefact

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray], path: Path) -> "DetectorArtefact":
        from lsea_monitor.dataset import LatentPCA
        from lsea_monitor.detectors import DETECTORS

        missing = sorted({"detector", "pca", "threshold", "binding", "preprocessing", "n_features"} - set(manifest))
        if missing:
            raise ArtefactError(f"Artefact {path} has a malformed manifest: it lacks {missing}. Re-run lsea-calibrate.")
        threshold = manifest["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ArtefactError(f"Artefact {path} has the threshold {threshold!r}, not a finite number: the monitor "
                                "would never (or always) flag a frame. Re-run lsea-calibrate.")
        for name in ("detector", "binding", "preprocessing"):
            if not isinstance(manifest[name], dict):
                raise ArtefactError(f"Artefact {path} has a malformed manifest: {name!r} is a "
                                    f"{type(manifest[name]).__name__}, not an object. Re-run lsea-calibrate.")
        try:
            det = manifest["detector"]
            if not isinstance(det.get("name"), str) or det["name"] not in DETECTORS:
                raise ArtefactError(f"Artefact {path} names an unknown detector {det['name']!r}; "
                                    f"known: {sorted(DETECTORS)}.")
            det_arrays = {k[len("detector."):]: v for k, v in arrays.items() if k.startswith("detector.")}
            detector = DETECTORS[det["name"]].from_state(det["params"], det_arrays)
            pca = None
            if manifest["pca"] is not None:
                pca_arrays = {k[len("pca."):]: v for k, v in arrays.items() if k.startswith("pca.")}
                pca = LatentPCA.from_state(manifest["pca"], pca_arrays)
            artefact = cls(detector=detector, pca=pca, threshold=float(manifest["threshold"]),
                           binding=ModelBinding(**manifest["binding"]),
                           preprocessing=Preprocessing.from_dict(manifest["preprocessing"]),
                           metrics=manifest.get("metrics", {}), info=manifest.get("info", {}))
        except ArtefactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtefactError(f"Artefact {path} is inconsistent ({type(err).__name__}: {err}). "
                                "Re-run lsea-calibrate.") from err
        if artefact.n_features != manifest.get("n_features"):
            raise ArtefactError(f"Artefact {path}: arrays describe {artefact.n_features} features, manifest says "
                                f"{manifest.get('n_features')}. Re-run lsea-calibrate.")
        return artefact


def _read_safetensors(path: Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ArtefactError(f"Could not read artefact {path}: it is truncated, corrupted or not a safetensors "
                            f"file ({err}). Artefacts are written by lsea-calibrate; pickles are never loaded.") from err
    if "manifest" not in metadata:
        raise ArtefactError(f"{path} is a safetensors file without an LSEA manifest. Point 'artefact' at the "
                            "file lsea-calibrate wrote.")
    return metadata["manifest"], arrays, metadata
