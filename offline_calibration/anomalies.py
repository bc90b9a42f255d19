"""Synthetic anomalies of the original "Cityscapes-anomalies" / "WoodScape-anomalies" sets.

Each anomaly alters an RGB ``uint8`` image that has ALREADY been resized to the network size (as
in the original, where ``A.Resize`` comes first in the transform chain). Three kinds exist:

* ``"mud"``: one of the mud or dirt RGBA textures shipped in ``offline_calibration/data/
  anomaly_overlays`` (see the NOTICE there), resized to the full frame and alpha-composited over it.
* ``"fog"``: albumentations ``RandomFog``, fog coefficient 0.7 to 0.8, alpha 0.5 (WoodScape 0.6).
* ``"sunflare"``: albumentations ``RandomSunFlare``, flare region (0.3, 0.1, 0.7, 0.9), source radius
  ``width // 2``, 6 to 12 circles (WoodScape: region (0.2, 0.2, 0.8, 0.8), radius ``0.7 * width``),
  angle range (0.5, 1) as in the original.

``RandomAnomaly`` picks one of the three with equal chance. Unlike the original, every anomaly is a
pure function of ``(image, seed)``: the anomaly of image ``i`` is reproducible, so extracted latent
samples can be cached and runs compared. Use :func:`index_seed` to derive a per-image seed.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import threading
import zlib
from typing import Literal, Protocol

import albumentations as A
import cv2
import numpy as np

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError

#: The anomaly kinds, in the order ``RandomAnomaly`` draws them from.
ANOMALY_KINDS: tuple[str, ...] = ("mud", "fog", "sunflare")
#: Datasets whose anomaly parameters differ (fog alpha, sun-flare region and radius).
ANOMALY_DATASETS: tuple[str, ...] = ("cityscapes", "woodscape")
#: Overlay textures shipped with the package (the original's ``mud2.png`` is not redistributed).
OVERLAY_NAMES: tuple[str, ...] = ("dirt1.png", "mud1.png", "mud3.png")
_OVERLAY_PACKAGE = "offline_calibration"
_OVERLAY_DIR = ("data", "anomaly_overlays")

DatasetName = Literal["cityscapes", "woodscape"]


def index_seed(base_seed: int, index: int, tag: str = "") -> int:
    """Seed of the anomaly applied to image ``index``, independent of loader order and workers.

    Parameters
    ----------
    base_seed : int
        Seed of the whole anomaly set.
    index : int
        Position of the image in its split.
    tag : str
        Extra namespace (e.g. the split name) so that image 0 of ``val`` and of ``test`` differ.

    Returns
    -------
    int
        A 32-bit seed.
    """
    if base_seed < 0 or index < 0:
        raise InputValidationError(f"Seeds and indices must be non-negative, got seed={base_seed}, index={index}.")
    return int(np.random.SeedSequence([base_seed, zlib.crc32(tag.encode()), index]).generate_state(1)[0])


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise InputValidationError(
            f"Anomalies need an RGB uint8 image of shape (H, W, 3), got shape {shape} dtype {dtype}."
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InputValidationError(f"Image too small for an anomaly: {rgb.shape}.")


def _check_dataset(dataset: str) -> None:
    if dataset not in ANOMALY_DATASETS:
        raise InputValidationError(f"Unknown anomaly dataset {dataset!r}; expected one of {ANOMALY_DATASETS}.")


def _child_seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


class Anomaly(Protocol):
    """Common interface: a deterministic function of ``(rgb, seed)``."""

    kind: str

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        """Return an altered copy of ``rgb`` (H, W, 3) uint8; the input is not modified."""
        ...

    def __call__(self, rgb: np.ndarray, seed: int) -> np.ndarray: ...


# --- mud / dirt overlay ---------------------------------------------------------------------------


def _overlay_bytes(name: str) -> bytes:
    resource = importlib.resources.files(_OVERLAY_PACKAGE).joinpath(*_OVERLAY_DIR, name)
    try:
        return resource.read_bytes()
    except (FileNotFoundError, OSError) as err:
        raise DatasetLayoutError(
            f"Anomaly overlay texture {name!r} not found in the package data ({resource}): {err}. "
            "Reinstall lsea-monitor so that offline_calibration/data/anomaly_overlays/*.png are included."
        ) from err


@functools.lru_cache(maxsize=12)
def load_overlay(name: str, height: int, width: int) -> np.ndarray:
    """One overlay texture resized to ``(height, width)``, cached per process.

    Returns
    -------
    ndarray of shape (height, width, 4), dtype uint8, RGBA, read-only.
    """
    data = np.frombuffer(_overlay_bytes(name), dtype=np.uint8)
    bgra = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
        got = None if bgra is None else bgra.shape
        raise ImageDecodeError(f"Overlay texture {name!r} is not a readable RGBA PNG (decoded shape {got}).")
    rgba = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
    shrinking = rgba.shape[0] > height or rgba.shape[1] > width
    rgba = cv2.resize(rgba, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    rgba.setflags(write=False)
    return rgba


def alpha_composite(rgb: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Paste ``rgba`` over ``rgb`` through its alpha channel (as ``PIL.Image.paste`` with a mask).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    rgba : ndarray (H, W, 4) uint8

    Returns
    -------
    ndarray (H, W, 3) uint8: ``round((tex * a + img * (255 - a)) / 255)``.
    """
    if rgba.shape[:2] != rgb.shape[:2] or rgba.shape[2] != 4:
        raise InputValidationError(f"Overlay shape {rgba.shape} does not fit image shape {rgb.shape}.")
    a = rgba[..., 3:4].astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + rgb.astype(np.uint16) * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class MudOverlay:
    """Mud or dirt texture over the full frame.

    Parameters
    ----------
    textures : tuple of str
        Texture file names in the package data; the one used is drawn from the seed.
    """

    kind = "mud"

    def __init__(self, textures: tuple[str, ...] = OVERLAY_NAMES) -> None:
        if len(textures) == 0:
            raise InputValidationError("MudOverlay needs at least one texture name.")
        unknown = [t for t in textures if t not in OVERLAY_NAMES]
        if unknown:
            raise InputValidationError(f"Unknown overlay textures {unknown}; available: {OVERLAY_NAMES}.")
        self.textures = tuple(textures)

    def texture_for(self, seed: int) -> str:
        """Name of the texture used for ``seed``."""
        return self.textures[int(np.random.default_rng(seed).integers(len(self.textures)))]

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        return alpha_composite(rgb, load_overlay(self.texture_for(seed), h, w))

    __call__ = apply

    def __repr__(self) -> str:
        return f"MudOverlay(textures={self.textures})"


# --- albumentations-based anomalies --------------------------------------------------------------


class _SeededAlbumentation:
    """Runs an albumentations transform with generators made from a seed (thread-safe)."""

    kind = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _transform(self, height: int, width: int) -> A.BasicTransform:
        raise NotImplementedError

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        _check_rgb(rgb)
        np_seed, py_seed = _child_seeds(seed, 2)
        with self._lock:
            transform = self._transform(*rgb.shape[:2])
            transform.set_random_state(np.random.default_rng(np_seed), random.Random(py_seed))
            out = transform(image=rgb)["image"]
        return np.ascontiguousarray(out, dtype=np.uint8)

    __call__ = apply

    # The lock cannot be pickled (DataLoader workers with spawn); recreate it.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class Fog(_SeededAlbumentation):
    """albumentations ``RandomFog``: fog coefficient 0.7..0.8, alpha 0.5 (WoodScape 0.6)."""

    kind = "fog"

    def __init__(self, dataset: DatasetName = "cityscapes") -> None:
        super().__init__()
        _check_dataset(dataset)
        self.dataset = dataset
        self.fog_coef_range = (0.7, 0.8)
        self.alpha_coef = 0.6 if dataset == "woodscape" else 0.5
        self._fog = A.RandomFog(fog_coef_range=self.fog_coef_range, alpha_coef=self.alpha_coef, p=1.0)

    def _transform(self, height: int, width: int) -> A.BasicTransform:
        return self._fog

    def __repr__(self) -> str:
        return f"Fog(dataset={self.dataset!r}, fog_coef_range={self.fog_coef_range}, alpha_coef={self.alpha_coef})"


class SunFlare(_SeededAlbumentation):
    """albumentations ``RandomSunFlare`` with the original's region, radius and circle counts.

    The source radius depends on the image width (``width // 2``; WoodScape ``int(0.7 * width)``),
    so one transform is built per width seen.
    """

    kind = "sunflare"

    def __init__(self, dataset: DatasetName = "cityscapes") -> None:
        super().__init__()
        _check_dataset(dataset)
        self.dataset = dataset
        if dataset == "woodscape":
            self.flare_roi = (0.2, 0.2, 0.8, 0.8)
            self.radius_fraction = 0.7
        else:
            self.flare_roi = (0.3, 0.1, 0.7, 0.9)
            self.radius_fraction = 0.5
        self.num_flare_circles_range = (6, 12)
        self.angle_range = (0.5, 1.0)
        self._by_width: dict[int, A.BasicTransform] = {}

    def src_radius(self, width: int) -> int:
        """Flare source radius in pixels for an image ``width`` pixels wide."""
        return width // 2 if self.radius_fraction == 0.5 else int(width * self.radius_fraction)

    def _transform(self, height: int, width: int) -> A.BasicTransform:
        t = self._by_width.get(width)
        if t is None:
            t = A.RandomSunFlare(
                flare_roi=self.flare_roi,
                src_radius=max(1, self.src_radius(width)),
                num_flare_circles_range=self.num_flare_circles_range,
                angle_range=self.angle_range,
                p=1.0,
            )
            self._by_width[width] = t
        return t

    def __repr__(self) -> str:
        return f"SunFlare(dataset={self.dataset!r}, flare_roi={self.flare_roi})"


class RandomAnomaly:
    """One of mud, fog and sun flare, with equal chance, drawn from the seed.

    Parameters
    ----------
    dataset : {"cityscapes", "woodscape"}
        Selects the parameter set of fog and sun flare.
    """

    kind = "random"

    def __init__(self, dataset: DatasetName = "cityscapes") -> None:
        _check_dataset(dataset)
        self.dataset = dataset
        self.anomalies: dict[str, Anomaly] = {
            "mud": MudOverlay(),
            "fog": Fog(dataset),
            "sunflare": SunFlare(dataset),
        }

    def kind_for(self, seed: int) -> str:
        """The anomaly kind that ``apply(rgb, seed)`` uses."""
        pick_seed, _ = _child_seeds(seed, 2)
        return ANOMALY_KINDS[int(np.random.default_rng(pick_seed).integers(len(ANOMALY_KINDS)))]

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        _, sub_seed = _child_seeds(seed, 2)
        return self.anomalies[self.kind_for(seed)].apply(rgb, sub_seed)

    __call__ = apply

    def __repr__(self) -> str:
        return f"RandomAnomaly(dataset={self.dataset!r})"


def make_anomaly(kind: str, dataset: DatasetName = "cityscapes") -> Anomaly:
    """Build an anomaly by name.

    Parameters
    ----------
    kind : {"mud", "fog", "sunflare", "random"}
    dataset : {"cityscapes", "woodscape"}

    Returns
    -------
    Anomaly
        An object with ``apply(rgb, seed) -> rgb``.
    """
    _check_dataset(dataset)
    if kind == "mud":
        return MudOverlay()
    if kind == "fog":
        return Fog(dataset)
    if kind == "sunflare":
        return SunFlare(dataset)
    if kind == "random":
        return RandomAnomaly(dataset)
    raise InputValidationError(f"Unknown anomaly kind {kind!r}; expected one of {ANOMALY_KINDS + ('random',)}.")


@functools.lru_cache(maxsize=16)
def _cached_anomaly(kind: str, dataset: str) -> Anomaly:
    return make_anomaly(kind, dataset)  # type: ignore[arg-type]


def apply_anomaly(rgb: np.ndarray, kind: str, seed: int, dataset: DatasetName = "cityscapes") -> np.ndarray:
    """Apply one anomaly to a resized RGB image, deterministically.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), dtype uint8
        Image already resized to the network size.
    kind : {"mud", "fog", "sunflare", "random"}
    seed : int
        Same seed, same output.
    dataset : {"cityscapes", "woodscape"}

    Returns
    -------
    ndarray of shape (H, W, 3), dtype uint8
    """
    return _cached_anomaly(kind, dataset).apply(rgb, seed)
