"""The per-frame path, one implementation for calibration, the node and the replay evaluation.

image -> :class:`~lsea_monitor.preprocessing.Preprocessing` -> latent MC samples at the hooked layer
(:class:`~lsea_monitor.sampling.LatentMCSampler`) -> per-dimension entropy
(:func:`~lsea_monitor.entropy.entropy_per_dim`) -> PCA -> detector score
(:meth:`~lsea_monitor.artefact.DetectorArtefact.score_features`) -> threshold -> :class:`Hysteresis`.

Two scoring paths give the same scores (tests hold them together): ``host`` takes the latent samples
to the host and computes entropies with numpy and the detector with scikit-learn (the reference,
fastest on a CPU); ``device`` keeps entropies, PCA and the detector on the model's device
(:func:`~lsea_monitor.entropy.entropy_per_dim_device`,
:meth:`~lsea_monitor.artefact.DetectorArtefact.score_features_torch`) and reads back only the
scores: one host synchronisation per batch, the verdict. ``auto`` picks ``device`` on a GPU.
They agree to rounding wherever scikit-learn's kernel density is exact; far from every calibration
row its KD-tree sum is not (atol = rtol = 0 notwithstanding), and the device path gives the exact
density there (see :func:`~lsea_monitor.detectors.base.kde_log_density_torch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lsea_monitor.accel import COMPILE_MODES, PinnedStaging, compile_deterministic_parts, to_channels_last
from lsea_monitor.artefact import DetectorArtefact, sha256_file
from lsea_monitor.checkpoint import load_model
from lsea_monitor.entropy import entropy_per_dim, entropy_per_dim_device
from lsea_monitor.errors import ArtefactError, InputValidationError, ModelLoadError
from lsea_monitor.sampling import LatentMCSampler

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCORINGS = ("auto", "host", "device")


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
        Autocast dtype of the model pass; the latent averages (the MC samples) are taken in
        float32 whatever the precision, and entropies are computed in float64.
    channels_last : bool, default False
        Convert the model and its input to ``channels_last`` (faster convolutions on recent GPUs,
        especially with fp16/bf16).
    compile_mode : str or None, default None
        ``torch.compile`` the deterministic parts of the model
        (:func:`~lsea_monitor.accel.compile_deterministic_parts`) with this mode; None: eager.
    """

    def __init__(self, model: nn.Module, layer: str, mc_samples: int, *, strategy: str = "fast",
                 entropy_k: int | None = None, precision: str = "fp32", channels_last: bool = False,
                 compile_mode: str | None = None) -> None:
        if precision not in PRECISIONS:
            raise InputValidationError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise InputValidationError(f"compile_mode must be None or one of {COMPILE_MODES}, got {compile_mode!r}.")
        self.model = model
        self.layer = layer
        self.mc_samples = int(mc_samples)
        self.entropy_k = entropy_k
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.sampler = LatentMCSampler(model, layer, self.mc_samples, strategy=strategy)
        if self.channels_last:
            to_channels_last(model)
        self.compiled = compile_deterministic_parts(model, layer, mode=compile_mode) if compile_mode else []
        self.compile_mode = compile_mode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def samples(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Latent MC samples, float32, shape (B, M, C), on the model's device.

        ``seeds``: one per image (see :meth:`~lsea_monitor.sampling.LatentMCSampler.sample`).
        """
        # The input in the model's memory format: normalised frames come out of an NHWC permute
        # (channels_last strides), which would make convolutions mix layouts (and, on a GPU, convert
        # every weight on every call).
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        with self._autocast():
            return self.sampler.sample(x, seeds=seeds).float()

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

    def entropy_device(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`entropy` on the samples' device, without host synchronisation.

        Returns
        -------
        h_z : Tensor of shape (B, C), float64 on the samples' device; rows with non-finite
            samples hold meaningless values (mask them with ``finite``).
        finite : Tensor of shape (B,), bool, same device.
        """
        finite = torch.isfinite(samples).flatten(1).all(dim=1)
        h_z = entropy_per_dim_device(torch.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0), k=self.entropy_k)
        return h_z, finite

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
    Not thread-safe: one caller at a time (the node has one inference worker).

    Options (besides the model, the artefact and the device)
    --------------------------------------------------------
    precision, channels_last, compile_mode, strategy
        See :class:`LatentFeatureExtractor`.
    scoring : {"auto", "host", "device"}, default "auto"
        Where entropies, PCA and the detector run (see the module docstring); ``auto`` =
        ``device`` on a GPU, ``host`` on the CPU. A detector without a device implementation is
        applied on the host after one read-back of the PCA features.
    """

    def __init__(self, model: nn.Module, artefact: DetectorArtefact, *, device: torch.device,
                 precision: str = "fp32", strategy: str = "fast", model_id: str = "", artefact_id: str = "",
                 scoring: str = "auto", channels_last: bool = False, compile_mode: str | None = None) -> None:
        if scoring not in SCORINGS:
            raise InputValidationError(f"scoring must be one of {SCORINGS}, got {scoring!r}.")
        self.artefact = artefact
        self.preprocessing = artefact.preprocessing
        self.threshold = float(artefact.threshold)
        self.mc_samples = artefact.binding.mc_samples
        self.mc_seed = artefact.binding.mc_seed
        self.device = device
        self.model_id = model_id
        self.artefact_id = artefact_id
        self.scoring = ("device" if device.type == "cuda" else "host") if scoring == "auto" else scoring
        self._staging = PinnedStaging() if device.type == "cuda" else None
        model.to(device)
        self.extractor = LatentFeatureExtractor(model, artefact.binding.layer, self.mc_samples, strategy=strategy,
                                                entropy_k=artefact.binding.entropy_k, precision=precision,
                                                channels_last=channels_last, compile_mode=compile_mode)

    @classmethod
    def from_files(cls, *, checkpoint: str, model_class: str, layer: str, artefact: str, device: str = "auto",
                   precision: str = "fp32", mc_samples: int = 0, strategy: str = "fast",
                   trust_checkpoint: bool = False, scoring: str = "auto", channels_last: bool = False,
                   compile_mode: str | None = None) -> "FrameScorer":
        """Load and cross-check a checkpoint and an artefact. ``layer``/``model_class`` '' = the artefact's.

        The checkpoint's SHA-256 is checked against the artefact's before anything in it is read. With
        ``trust_checkpoint`` (full unpickling) the very bytes that were hashed are loaded, so only the
        file calibrated with can run code, even if the file is swapped between the check and the load.
        """
        dev = resolve_device(device)
        if not os.path.isfile(checkpoint):
            raise ModelLoadError(f"Checkpoint not found at {checkpoint!r}. Set 'checkpoint' to the file the "
                                 "artefact was calibrated with (lsea-train writes one).")
        verified: bytes | None = None
        if trust_checkpoint:
            verified = Path(checkpoint).read_bytes()
            checkpoint_sha = hashlib.sha256(verified).hexdigest()
        else:
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
                           trust_checkpoint=trust_checkpoint, verified_bytes=verified)
        return cls(model, art, device=dev, precision=precision, strategy=strategy,
                   model_id=checkpoint_sha[:12], artefact_id=sha256_file(artefact)[:12], scoring=scoring,
                   channels_last=channels_last, compile_mode=compile_mode)

    def frame_seed(self, stamp_ns: int) -> int:
        """Seed of a frame's Monte-Carlo draws: the artefact's common seed (the draws calibration used
        for every image) when it has one, else one from the frame's header stamp (:func:`frame_seed`).
        The node and the replay both call this, so they give a frame the same draws."""
        return int(self.mc_seed) if self.mc_seed is not None else frame_seed(stamp_ns)

    def warmup(self, iterations: int = 2, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run the whole per-frame path on blank frames, ``iterations`` times per batch size.

        Checks the latent width against the artefact first. Allocations, kernel selection and,
        with ``compile_mode``, compilation happen here rather than on the first camera frames
        (a multi-camera node warms up every batch size it may meet).
        """
        blank = np.zeros((self.preprocessing.height, self.preprocessing.width, 3), np.uint8)
        samples = self.extractor.samples(self.preprocessing.batch([blank]))
        if samples.shape[-1] != self.artefact.n_features:
            raise ArtefactError(f"The hooked layer {self.extractor.layer!r} yields {samples.shape[-1]} channels but "
                                f"the artefact expects {self.artefact.n_features}: it was calibrated on another "
                                "model. Re-run lsea-calibrate with this checkpoint.")
        for b in batch_sizes:
            for _ in range(iterations):
                self._scores(self._upload([blank] * int(b)))

    def score_images(self, images: Sequence[np.ndarray], *, seed: int | None = None,
                     seeds: Sequence[int] | None = None) -> list[FrameScore]:
        """Score RGB ``uint8`` images of shape (H, W, 3), any size; never raises for a bad image.

        ``seed`` makes the Monte-Carlo draws of the batch reproducible (the node and the replay seed
        each frame from its stamp, so both judge a frame identically); None draws from the global
        RNG. ``seeds`` (one per image, instead of ``seed``) gives each image its own draws: image i
        scores as ``score_images([images[i]], seed=seeds[i])`` would (to rounding), whatever else is
        in the batch; the multi-camera node batches its cameras' frames this way.
        """
        if seeds is not None and (seed is not None or len(seeds) != len(images)):
            raise InputValidationError("Give either seed or one seed per image (seeds), not both.")
        results: list[FrameScore | None] = [None] * len(images)
        resized, positions = [], []
        for i, image in enumerate(images):
            try:
                resized.append(self.preprocessing.resize(image))
                positions.append(i)
            except InputValidationError as err:
                results[i] = FrameScore.invalid(f"invalid image: {err}")
        if resized:
            kept_seeds = None if seeds is None else [seeds[i] for i in positions]
            scores = self.score_normalized(self._upload(resized), seed=seed, seeds=kept_seeds)
            for i, fs in zip(positions, scores):
                results[i] = fs
        return [r for r in results if r is not None]

    def _upload(self, resized: Sequence[np.ndarray]) -> torch.Tensor:
        """Resized ``uint8`` frames -> normalised (B, 3, H, W) on the device (pinned, async copy on a GPU)."""
        if self._staging is not None:
            batch = self._staging.upload(resized, self.device)
        else:
            batch = torch.from_numpy(np.stack(resized))
        return self.preprocessing.normalize(batch)

    def score_normalized(self, x: torch.Tensor, *, seed: int | None = None,
                         seeds: Sequence[int] | None = None) -> list[FrameScore]:
        """Score a normalised batch (B, 3, H, W); a model failure gives invalid scores, not an exception.

        ``seed`` / ``seeds``: as in :meth:`score_images`.
        """
        try:
            if seeds is not None:
                scores, finite = self._scores_with_oom_retry(x, seeds)
            elif seed is None:
                scores, finite = self._scores_with_oom_retry(x)
            else:
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                    torch.manual_seed(seed)
                    scores, finite = self._scores_with_oom_retry(x)
        except Exception as err:  # noqa: BLE001 - a monitor must fail closed, whatever the model raised
            return [FrameScore.invalid(f"model error: {type(err).__name__}: {err}")] * len(x)
        out = []
        for s, ok in zip(scores, finite):
            if not ok:
                out.append(FrameScore.invalid("non-finite latent samples"))
            elif not np.isfinite(s):
                out.append(FrameScore.invalid("non-finite detector score"))
            else:
                out.append(FrameScore(score=float(s), is_ood=bool(s > self.threshold), valid=True))
        return out

    def _scores(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalised batch -> (detector scores (B,) float64, NaN where not finite; finite samples (B,) bool)."""
        samples = self.extractor.samples(x, seeds)
        if self.scoring == "host":
            h_z, finite = self.extractor.entropy(samples)
            scores = np.full(len(finite), np.nan)
            if finite.any():
                scores[finite] = self.artefact.score_features(h_z[finite])
            return scores, finite
        h_z, finite = self.extractor.entropy_device(samples)
        if self.artefact.supports_device_scoring:
            # The one host synchronisation of the frame: scores and finiteness in one read-back.
            scores_t = self.artefact.score_features_torch(h_z)
            packed = torch.stack([scores_t, finite.to(scores_t.dtype)]).cpu().numpy()
            scores, finite_np = packed[0], packed[1].astype(bool)
            scores[~finite_np] = np.nan
            return scores, finite_np
        pca = self.artefact.pca
        z = pca.transform_torch(h_z, check_finite=False) if pca is not None else h_z
        packed = torch.cat([z, finite[:, None].to(z.dtype)], dim=1).cpu().numpy()
        z_np, finite_np = packed[:, :-1].astype(np.float64), packed[:, -1].astype(bool)
        scores = np.full(len(finite_np), np.nan)
        if finite_np.any():
            scores[finite_np] = self.artefact.detector.score_samples(z_np[finite_np])
        return scores, finite_np

    def _scores_with_oom_retry(self, x: torch.Tensor,
                               seeds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._scores(x, seeds)
        except torch.cuda.OutOfMemoryError:
            # One retry, one image at a time, after freeing the allocator's cache.
            torch.cuda.empty_cache()
            parts = [self._scores(x[i:i + 1], None if seeds is None else seeds[i:i + 1]) for i in range(len(x))]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def frame_seed(stamp_ns: int) -> int:
    """Seed of a frame's Monte-Carlo draws from its header stamp, for artefacts without a common
    seed (see :meth:`FrameScorer.frame_seed`); the node and the replay agree on it."""
    return int(stamp_ns) % (2**63 - 1)


class Hysteresis:
    """Debounces raw per-frame OoD decisions into the published flag.

    The flag rises when at least ``raise_after`` of the last ``window`` frames were OoD, and falls
    after ``clear_after`` consecutive InD frames once the window no longer holds ``raise_after`` OoD
    frames (the raise rule wins), i.e. after ``max(clear_after, window - raise_after + 1)`` InD
    frames following an OoD stretch. It starts raised: until the monitor has seen enough good frames
    it cannot vouch for the camera (fail closed).
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

