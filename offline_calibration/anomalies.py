"""Synthetic anomalies of the original "Cityscapes-anomalies" / "WoodScape-anomalies" sets.

Each anomaly alters an RGB ``uint8`` image that has ALREADY been resized to the network size (as
in the original, where ``A.Resize`` comes first in the transform chain). Three kinds exist:

* ``"mud"``: one of the mud or dirt RGBA textures shipped in ``offline_calibration/data/
  anomaly_overlays`` (see the NOTICE there), resized to the full frame and alpha-composited over it.
* ``"fog"``: ``RandomFog`` of albumentations 1.x (the original's version), fog coefficient 0.7 to
  0.8, alpha 0.5 (WoodScape 0.6); drawn by this module (:func:`render_fog`).
* ``"sunflare"``: ``RandomSunFlare`` of albumentations 1.x (the original's version), flare region
  (0.3, 0.1, 0.7, 0.9), source radius ``width // 2``, 6 to 12 circles (WoodScape: region
  (0.2, 0.2, 0.8, 0.8), radius ``0.7 * width``), angle range (0.5, 1) as in the original; drawn by
  this module (:func:`render_sun_flare`).

albumentations 2 renders fog and sun flare differently from 1.x (see the section comment below), so
this module draws both itself and does not depend on albumentations.

``RandomAnomaly`` picks one of the three with equal chance. Unlike the original, every anomaly is a
pure function of ``(image, seed)``: the anomaly of image ``i`` is reproducible, so extracted latent
samples can be cached and runs compared. Use :func:`index_seed` to derive a per-image seed.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import random
import zlib
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError

#: Version of the anomalies' rendering: bumped whenever the image an anomaly makes from a given
#: ``(image, seed)`` changes, so that latent features cached and demo bags written with the old
#: rendering are not reused. 2: fog and sun flare drawn as albumentations 1.x did (the original's).
ANOMALY_VERSION = 2
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


# --- fog and sun flare, as albumentations 1.x drew them ---------------------------------------------
#
# The original used albumentations 1.x ``RandomFog`` and ``RandomSunFlare`` (Automold's algorithms).
# albumentations 2 changed both renderings (fog: many small discs and a light Gaussian blur instead of
# a few large discs and a box blur of a tenth of their size; sun flare: a source about five times
# fainter), so the same parameters no longer make the original's anomalies. Both are drawn here, as
# pure functions of the parameters, which are drawn from the seed as albumentations 1.x drew them.
# Checked pixel for pixel against albumentations 1.3.1's ``add_fog`` and ``add_sun_flare``.


@dataclass(frozen=True)
class FogParams:
    """Everything :func:`render_fog` needs: the fog coefficient, the blend coefficient and the top-left
    corners ``(x, y)`` in pixels of the haze discs' bounding squares (a disc's side is ``hw``)."""

    fog_coef: float
    alpha_coef: float
    haze: tuple[tuple[int, int], ...]


def render_fog(rgb: np.ndarray, params: FogParams) -> np.ndarray:
    """Draw fog on a copy of ``rgb`` (H, W, 3) uint8.

    Each haze disc (radius ``hw // 2``, ``hw = max(int(width // 3 * fog_coef), 10)`` pixels) is
    filled white on a copy of the image so far and blended over it with alpha
    ``alpha_coef * fog_coef``; then the whole image is box-blurred with a ``hw // 10`` kernel.
    """
    _check_rgb(rgb)
    hw = max(int(rgb.shape[1] // 3 * params.fog_coef), 10)
    alpha = params.alpha_coef * params.fog_coef
    out = rgb.copy()
    for x, y in params.haze:
        overlay = out.copy()
        cv2.circle(overlay, (x + hw // 2, y + hw // 2), hw // 2, (255, 255, 255), -1)
        out = cv2.addWeighted(overlay, alpha, out, 1.0 - alpha, 0.0)
    return cv2.blur(out, (hw // 10, hw // 10))


class Fog:
    """The original's fog: ``RandomFog`` of albumentations 1.x, fog coefficient 0.7..0.8, alpha 0.5
    (WoodScape 0.6): a few dozen large white discs (about a sixth of the width across), then a blur."""

    kind = "fog"

    def __init__(self, dataset: DatasetName = "cityscapes") -> None:
        _check_dataset(dataset)
        self.dataset = dataset
        self.fog_coef_range = (0.7, 0.8)
        self.alpha_coef = 0.6 if dataset == "woodscape" else 0.5

    def params_for(self, height: int, width: int, seed: int) -> FogParams:
        """The fog drawn for ``seed`` on an image of ``height`` x ``width`` pixels.

        As albumentations 1.x: ``fog_coef`` uniform in its range, ``hw = int(width // 3 * fog_coef)``;
        rings of haze positions, ring ``k`` (from 1) with ``hw // 10 * k`` positions drawn uniformly in a
        window that starts at the centre and widens ring by ring until it covers the image.
        """
        rng = random.Random(_child_seeds(seed, 1)[0])
        fog_coef = rng.uniform(*self.fog_coef_range)
        hw = max(1, int(width // 3 * fog_coef))
        # Below about 42 pixels of width hw // 10 is 0: albumentations 1.x then drew no haze at all
        # and the "anomaly" was a no-op; here such small images still get one disc per ring step.
        per_ring = max(1, hw // 10)
        haze = []
        mid_x, mid_y, ring = width // 2 - 2 * hw, height // 2 - hw, 1
        while mid_x > -hw or mid_y > -hw:
            for _ in range(per_ring * ring):
                haze.append((rng.randint(mid_x, width - mid_x - hw), rng.randint(mid_y, height - mid_y - hw)))
            mid_x -= 3 * hw * width // (height + width)
            mid_y -= 3 * hw * height // (height + width)
            ring += 1
        return FogParams(fog_coef, self.alpha_coef, tuple(haze))

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        _check_rgb(rgb)
        return render_fog(rgb, self.params_for(*rgb.shape[:2], seed))

    __call__ = apply

    def __repr__(self) -> str:
        return f"Fog(dataset={self.dataset!r}, fog_coef_range={self.fog_coef_range}, alpha_coef={self.alpha_coef})"


@dataclass(frozen=True)
class FlareCircle:
    """One small flare circle: blend ``alpha``, centre ``(x, y)`` and radius in pixels, RGB colour."""

    alpha: float
    center: tuple[int, int]
    radius: int
    color: tuple[int, ...]


@dataclass(frozen=True)
class SunFlareParams:
    """Everything :func:`render_sun_flare` needs: the source centre ``(x, y)`` and radius in pixels,
    its RGB colour, and the small circles."""

    center: tuple[int, int]
    src_radius: int
    src_color: tuple[int, ...]
    circles: tuple[FlareCircle, ...]


def render_sun_flare(rgb: np.ndarray, params: SunFlareParams) -> np.ndarray:
    """Draw a sun flare on a copy of ``rgb`` (H, W, 3) uint8.

    First each circle is filled on an overlay that keeps every circle drawn so far, and the overlay
    is blended over the output with the circle's alpha. Then the source: ``n = src_radius // 10``
    discs of radii ``linspace(1, src_radius, n)``, smallest first, each filled on an overlay and
    blended with alpha ``a_j ** 3``, ``a = linspace(0, 1, n)`` taken from the end, so the smallest
    disc is blended at 1 (white at the centre) and the largest at 0. Per pixel at distance ``d``
    from the centre this gives ``c + (v - c) * prod(1 - a_j ** 3 over the discs covering d)``,
    ``v`` the pixel before, ``c`` the source colour (up to the uint8 rounding of each blend).
    """
    _check_rgb(rgb)
    overlay = rgb.copy()
    out = rgb.copy()
    for circle in params.circles:
        cv2.circle(overlay, circle.center, circle.radius, circle.color, -1)
        out = cv2.addWeighted(overlay, circle.alpha, out, 1.0 - circle.alpha, 0.0)
    overlay = out.copy()
    n = params.src_radius // 10
    alphas = np.linspace(0.0, 1.0, num=n) ** 3
    radii = np.linspace(1, params.src_radius, num=n)
    for j in range(n):
        cv2.circle(overlay, params.center, int(radii[j]), params.src_color, -1)
        a = float(alphas[n - 1 - j])
        out = cv2.addWeighted(overlay, a, out, 1.0 - a, 0.0)
    return out


class SunFlare:
    """The original's sun flare: a bright source with a soft halo and 6 to 12 small flare circles.

    Draws its parameters as albumentations 1.x ``RandomSunFlare`` did (the version the original
    used) and renders them with the same algorithm (Automold's: flare circles alpha-blended one
    after another, then the source as ``src_radius // 10`` concentric discs blended with
    ``alpha_j ** 3``, ``alpha`` running from 1 at the centre down to 0 at ``src_radius``). The
    rendering is done here rather than by the installed albumentations because albumentations 2
    caps the source's alpha at five times the circles' mean alpha (0.05 to 0.2), i.e. at about 0.6
    instead of 1: the source peaks at about ``0.6 ** 3 = 0.2`` instead of white, a far fainter
    anomaly than the one the original's figures were measured on.

    The source radius depends on the image width (``width // 2``; WoodScape ``int(0.7 * width)``).
    """

    kind = "sunflare"

    def __init__(self, dataset: DatasetName = "cityscapes") -> None:
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
        self.src_color = (255, 255, 255)

    def src_radius(self, width: int) -> int:
        """Flare source radius in pixels for an image ``width`` pixels wide."""
        return width // 2 if self.radius_fraction == 0.5 else int(width * self.radius_fraction)

    def params_for(self, height: int, width: int, seed: int) -> SunFlareParams:
        """The flare drawn for ``seed`` on an image of ``height`` x ``width`` pixels.

        As albumentations 1.x: the source centre uniform in ``flare_roi``; the circles on the line
        through it at angle ``2 pi * U(angle_range)``, sampled every 10 pixels of its length; per
        circle alpha ``U(0.05, 0.2)``, radius ``r ** 3`` with ``r`` in ``1 .. max(height // 100 - 2, 2)``
        and each colour channel within 50 below the source colour.
        """
        rng = random.Random(_child_seeds(seed, 1)[0])
        angle = 2 * math.pi * rng.uniform(*self.angle_range)
        x_min, y_min, x_max, y_max = self.flare_roi
        cx = int(width * rng.uniform(x_min, x_max))
        cy = int(height * rng.uniform(y_min, y_max))
        n_circles = rng.randint(*self.num_flare_circles_range)
        line = [(cx + t * math.cos(angle), cy + t * math.sin(angle)) for t in range(-cx, width - cx, 10)]
        circles = []
        for _ in range(n_circles):
            alpha = rng.uniform(0.05, 0.2)
            x, y = line[rng.randint(0, len(line) - 1)]
            radius = rng.randint(1, max(height // 100 - 2, 2)) ** 3
            color = tuple(rng.randint(max(c - 50, 0), c) for c in self.src_color)
            circles.append(FlareCircle(alpha, (int(x), int(y)), radius, color))
        return SunFlareParams((cx, cy), max(1, self.src_radius(width)), self.src_color, tuple(circles))

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        _check_rgb(rgb)
        return render_sun_flare(rgb, self.params_for(*rgb.shape[:2], seed))

    __call__ = apply

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
