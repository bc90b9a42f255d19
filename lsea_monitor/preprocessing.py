"""Image preprocessing: the one implementation shared by calibration, the node and the replay.

An artefact records the :class:`Preprocessing` it was calibrated with; the node and the replay
rebuild it from there, so a frame is resized and normalised exactly as during calibration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from lsea_monitor.errors import InputValidationError

#: Per-channel RGB mean and std (on 0..1 values) used by the original for Cityscapes.
CITYSCAPES_MEAN = (0.28689554, 0.32513303, 0.28389177)
CITYSCAPES_STD = (0.18696375, 0.19017339, 0.18720214)


@dataclass(frozen=True)
class Preprocessing:
    """Resize an RGB ``uint8`` image to ``(height, width)`` and normalise it per channel.

    Parameters
    ----------
    height, width : int
        Network input size in pixels.
    mean, std : tuple of 3 floats
        Per-channel statistics of RGB values scaled to [0, 1].
    """

    height: int = 256
    width: int = 512
    mean: tuple[float, float, float] = CITYSCAPES_MEAN
    std: tuple[float, float, float] = CITYSCAPES_STD

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputValidationError(f"Preprocessing size must be positive, got {self.height}x{self.width}.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputValidationError(f"Preprocessing needs 3 means and 3 positive stds, got {self.mean}, {self.std}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    # --- serialisation (artefact manifest) ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(height=int(d["height"]), width=int(d["width"]), mean=tuple(d["mean"]), std=tuple(d["std"]))

    # --- host side ------------------------------------------------------------------------------
    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """Check and resize one image.

        Parameters
        ----------
        rgb : ndarray of shape (H, W, 3), dtype uint8
            RGB image.

        Returns
        -------
        ndarray of shape (height, width, 3), dtype uint8, C-contiguous.
        """
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            shape = getattr(rgb, "shape", None)
            dtype = getattr(rgb, "dtype", type(rgb).__name__)
            raise InputValidationError(f"Expected an RGB uint8 image of shape (H, W, 3), got shape {shape} dtype {dtype}.")
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise InputValidationError(f"Image has zero size: {rgb.shape}.")
        h, w = rgb.shape[:2]
        if (h, w) == (self.height, self.width):
            return np.ascontiguousarray(rgb)
        # INTER_AREA when shrinking avoids aliasing (close to PIL's antialiased resize); linear otherwise.
        shrinking = h > self.height or w > self.width
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(rgb, (self.width, self.height), interpolation=interp)

    # --- device side ----------------------------------------------------------------------------
    def normalize(self, batch_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Normalise a batch of resized images on whatever device it lives.

        Parameters
        ----------
        batch_uint8 : Tensor of shape (B, height, width, 3), dtype uint8

        Returns
        -------
        Tensor of shape (B, 3, height, width), ``dtype``, on the same device.
        """
        if batch_uint8.ndim != 4 or batch_uint8.shape[-1] != 3:
            raise InputValidationError(f"Expected a (B, H, W, 3) uint8 batch, got {tuple(batch_uint8.shape)}.")
        mean, std = _stats_on(self.mean, self.std, batch_uint8.device)
        x = batch_uint8.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        return ((x - mean) / std).to(dtype)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """One RGB ``uint8`` image (H, W, 3) -> normalised float32 tensor (3, height, width)."""
        return self.normalize(torch.from_numpy(self.resize(rgb))[None])[0]

    def batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Several RGB ``uint8`` images -> normalised float32 tensor (B, 3, height, width)."""
        if len(images) == 0:
            raise InputValidationError("Cannot preprocess an empty list of images.")
        return self.normalize(torch.from_numpy(np.stack([self.resize(im) for im in images])))


@lru_cache(maxsize=32)
def _stats_on(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) float32 tensors on ``device``, made once: building them per frame
    would be a synchronous host-to-device copy on a GPU."""
    def make(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    return make(mean), make(std)
