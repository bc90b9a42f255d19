"""The per-frame path, one implementation for calibration, the node and the replay evaluation.

image -> :class:`~lsea_monitor.preprocessing.Preprocessing` -> latent MC samples at the hooked layer
(:class:`~lsea_monitor.sampling.LatentMCSampler`) -> per-dimension entropy
(:func:`~lsea_monitor.entropy.entropy_per_dim`) -> PCA -> detector score
(:meth:`~lsea_monitor.artefact.DetectorArtefact.score_features`) -> threshold -> :class:`Hysteresis`.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lsea_monitor.artefact import DetectorArtefact, sha256_file
from lsea_monitor.checkpoint import load_model
from lsea_monitor.entropy import entropy_per_dim
from lsea_monitor.errors import ArtefactError, InputValidationError, ModelLoadError
from lsea_monitor.sampling import LatentMCSampler

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA GPU when present, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"Device {device!r} requested but CUDA is not available here; use auto or cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"Device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist.")
    elif dev.type != "cpu":
        raise ModelLoadError(f"Unsupported device {device!r}; use auto, cpu, cuda or cuda:N.")
    return dev


class LatentFeatureExtractor:
    """Normalised images -> per-dimension latent entropies, on the model's device.

    Parameters
    ----------
    model : nn.Module
        The segmentation network (any module containing ``layer``).
    layer : str
        Dotted path of the hooked module.
    mc_samples : int
        M, Monte-Carlo samples per image.
    strategy : {"fast", "naive"}
        Sampler strategy (see :class:`~lsea_monitor.sampling.LatentMCSampler`).
    entropy_k : int or None
        k of the k-NN entropy estimator; None = min(5, M - 1).
    precision : {"fp32", "fp16", "bf16"}
        Autocast dtype of the deterministic pass; entropies are always computed in float64/32.
    """

    def __init__(self, model: nn.Module, layer: str, mc_samples: int, *, strategy: str = "fast",
                 entropy_k: int | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise InputValidationError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
        self.model = model
        self.layer = layer
        self.mc_samples = int(mc_samples)
        self.entropy_k = entropy_k
        self.precision = precision
        self.sampler = LatentMCSampler(model, layer, self.mc_samples, strategy=strategy)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def samples(self, x: torch.Tensor) -> torch.Tensor:
        """Latent MC samples, float32, shape (B, M, C)."""
        with self._autocast():
            return self.sampler.sample(x.to(self.device, non_blocking=True)).float()

    def entropy(self, samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension entropies (nats) of the finite rows of ``samples``.

        Returns
        -------
        h_z : ndarray of shape (B, C), float64; rows with non-finite samples are NaN.
        finite : ndarray of shape (B,), bool
        """
        finite = torch.isfinite(samples).flatten(1).all(dim=1)
        h_z = torch.full((samples.shape[0], samples.shape[2]), float("nan"), dtype=torch.float64)
        if bool(finite.any()):
            h = entropy_per_dim(samples[finite], k=self.entropy_k)
            h_z[finite.cpu()] = h.to("cpu", torch.float64)
        return h_z.numpy(), finite.cpu().numpy()

    def features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (B, 3, H, W) normalised -> (h_z (B, C) float64, finite (B,) bool)."""
        return self.entropy(self.samples(x))


@dataclass(frozen=True)
class FrameScore:
    """The monitor's judgement of one frame (before hysteresis)."""

    score: float  #: detector score, higher = less safe; NaN when not valid
    is_ood: bool  #: score > threshold; True when not valid (fail closed)
    valid: bool
    reason: str = ""  #: empty when valid, else why no judgement was possible

    @classmethod
    def invalid(cls, reason: str) -> "FrameScore":
        return cls(score=float("nan"), is_ood=True, valid=False, reason=reason)


class FrameScorer:
    """Scores camera frames with a model and a calibrated detector artefact.

    Use :meth:`from_files` to build it from a checkpoint and an artefact; it checks that they
    belong together (checkpoint hash, layer, feature count, MC samples) and fails fast otherwise.
    """

    def __init__(self, model: nn.Module, artefact: DetectorArtefact, *, device: torch.device,
                 precision: str = "fp32", strategy: str = "fast", model_id: str = "", artefact_id: str = "") -> None:
        self.artefact = artefact
        self.preprocessing = artefact.preprocessing
        self.threshold = float(artefact.threshold)
        self.mc_samples = artefact.binding.mc_samples
        self.device = device
        self.model_id = model_id
        self.artefact_id = artefact_id
        model.to(device)
        self.extractor = LatentFeatureExtractor(model, artefact.binding.layer, self.mc_samples, strategy=strategy,
                                                entropy_k=artefact.binding.entropy_k, precision=precision)

    @classmethod
    def from_files(cls, *, checkpoint: str, model_class: str, layer: str, artefact: str, device: str = "auto",
                   precision: str = "fp32", mc_samples: int = 0, strategy: str = "fast",
                   trust_checkpoint: bool = False) -> "FrameScorer":
        """Load and cross-check a checkpoint and an artefact. ``layer``/``model_class`` '' = the artefact's."""
        dev = resolve_device(device)
        if not os.path.isfile(checkpoint):
            raise ModelLoadError(f"Checkpoint not found at {checkpoint!r}. Set 'checkpoint' to the file the "
                                 "artefact was calibrated with (lsea-train writes one).")
        checkpoint_sha = sha256_file(checkpoint)
        art = DetectorArtefact.load(artefact, expect_checkpoint_sha256=checkpoint_sha, expect_layer=layer or None)
        if model_class and model_class != art.binding.model_class:
            raise ArtefactError(f"Artefact {artefact} was calibrated for model class {art.binding.model_class!r}, "
                                f"but {model_class!r} is configured. Use the same class or re-calibrate.")
        if mc_samples and mc_samples != art.binding.mc_samples:
            raise ArtefactError(f"mc_samples={mc_samples} but the artefact was calibrated with M="
                                f"{art.binding.mc_samples}; entropy estimates depend on M, so the threshold would "
                                "be meaningless. Set mc_samples to 0 (use the artefact's) or re-calibrate.")
        model = load_model(checkpoint, model_class or art.binding.model_class, map_location=dev,
                           trust_checkpoint=trust_checkpoint)
        return cls(model, art, device=dev, precision=precision, strategy=strategy,
                   model_id=checkpoint_sha[:12], artefact_id=sha256_file(artefact)[:12])

    def warmup(self, iterations: int = 2) -> None:
        """Run the per-frame path on a blank frame; checks the latent width against the artefact."""
        blank = np.zeros((self.preprocessing.height, self.preprocessing.width, 3), np.uint8)
        x = self.preprocessing.batch([blank])
        for _ in range(iterations):
            samples = self.extractor.samples(x)
        if samples.shape[-1] != self.artefact.n_features:
            raise ArtefactError(f"The hooked layer {self.extractor.layer!r} yields {samples.shape[-1]} channels but "
                                f"the artefact expects {self.artefact.n_features}: it was calibrated on another "
                                "model. Re-run lsea-calibrate with this checkpoint.")

    def score_images(self, images: Sequence[np.ndarray], *, seed: int | None = None) -> list[FrameScore]:
        """Score RGB ``uint8`` images of shape (H, W, 3), any size; never raises for a bad image.

        ``seed`` makes the Monte-Carlo draws reproducible (the node and the replay seed each frame
        from its stamp, so both judge a frame identically); None draws from the global RNG.
        """
        results: list[FrameScore | None] = [None] * len(images)
        resized, positions = [], []
        for i, image in enumerate(images):
            try:
                resized.append(self.preprocessing.resize(image))
                positions.append(i)
            except InputValidationError as err:
                results[i] = FrameScore.invalid(f"invalid image: {err}")
        if resized:
            batch = torch.from_numpy(np.stack(resized))
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            scores = self.score_normalized(self.preprocessing.normalize(batch), seed=seed)
            for i, fs in zip(positions, scores):
                results[i] = fs
        return [r for r in results if r is not None]

    def score_normalized(self, x: torch.Tensor, *, seed: int | None = None) -> list[FrameScore]:
        """Score a normalised batch (B, 3, H, W); a model failure gives invalid scores, not an exception."""
        try:
            if seed is None:
                h_z, finite = self._features_with_oom_retry(x)
            else:
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                    torch.manual_seed(seed)
                    h_z, finite = self._features_with_oom_retry(x)
        except Exception as err:  # noqa: BLE001 - a monitor must fail closed, whatever the model raised
            return [FrameScore.invalid(f"model error: {type(err).__name__}: {err}")] * len(x)
        scores = np.full(len(x), np.nan)
        if finite.any():
            scores[finite] = self.artefact.score_features(h_z[finite])
        out = []
        for s, ok in zip(scores, finite):
            if not ok:
                out.append(FrameScore.invalid("non-finite latent samples"))
            elif not np.isfinite(s):
                out.append(FrameScore.invalid("non-finite detector score"))
            else:
                out.append(FrameScore(score=float(s), is_ood=bool(s > self.threshold), valid=True))
        return out

    def _features_with_oom_retry(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.extractor.features(x)
        except torch.cuda.OutOfMemoryError:
            # One retry, one image at a time, after freeing the allocator's cache.
            torch.cuda.empty_cache()
            parts = [self.extractor.features(x[i:i + 1]) for i in range(len(x))]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def frame_seed(stamp_ns: int) -> int:
    """Seed of a frame's Monte-Carlo draws, from its header stamp (node and replay agree on it)."""
    return int(stamp_ns) % (2**63 - 1)


class Hysteresis:
    """Debounces raw per-frame OoD decisions into the published flag.

    The flag rises when at least ``raise_after`` of the last ``window`` frames were OoD, and falls
    after ``clear_after`` consecutive InD frames. It starts raised: until the monitor has seen
    enough good frames it cannot vouch for the camera (fail closed).
    """

    def __init__(self, *, raise_after: int = 2, window: int = 3, clear_after: int = 3, initial_flag: bool = True) -> None:
        if not 1 <= raise_after <= window:
            raise InputValidationError(f"Hysteresis needs 1 <= raise_after <= window, got {raise_after} and {window}.")
        if clear_after < 1:
            raise InputValidationError(f"Hysteresis clear_after must be >= 1, got {clear_after}.")
        self.raise_after, self.window, self.clear_after = raise_after, window, clear_after
        self._recent: deque[bool] = deque(maxlen=window)
        self._consecutive_ind = 0
        self._flag = initial_flag

    @property
    def flag(self) -> bool:
        return self._flag

    def update(self, is_ood: bool) -> bool:
        self._recent.append(bool(is_ood))
        self._consecutive_ind = 0 if is_ood else self._consecutive_ind + 1
        if sum(self._recent) >= self.raise_after:
            self._flag = True
        elif self._consecutive_ind >= self.clear_after:
            self._flag = False
        return self._flag

    def force_raise(self) -> bool:
        """An invalid or stale frame: raise at once and count it as OoD."""
        self._recent.append(True)
        self._consecutive_ind = 0
        self._flag = True
        return self._flag

