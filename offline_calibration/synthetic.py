"""Built-in default dataset: procedural road scenes written in the official Cityscapes layout.

Every scene is a pure function of ``(seed, split, index, height, width)``: a pinhole camera (random
focal length, height, horizon, principal point and roll) looks down a straight street whose road,
lanes, sidewalks, buildings (with windows and doors), walls, fences, vegetation, poles, traffic
signs and lights, cars, trucks, buses, pedestrians and cyclists are random 3-D boxes and
billboards projected onto the image and painted far to near. Lighting varies (clear, overcast,
dusk; exposure, white balance, haze, cast shadows, sensor noise).

Images are reproducible for a given OpenCV version (anti-aliased drawing may differ across
versions); labels do not depend on anti-aliasing. Labels are PIXEL-EXACT: the label map is, by construction, the painter's rasterisation with
``cv2.fillPoly(..., lineType=cv2.LINE_8)`` of the labelled polygons in ``Scene.shapes``, in order; the
colour image is painted from the same integer polygons (anti-aliased), and details that do not
change the class (windows, lane marks, shadows, noise) are painted on the colour image only. Label
values are Cityscapes label ``id`` values (``cityscapesscripts.helpers.labels``), so the same
Cityscapes loader maps them to train ids. The ego-vehicle bonnet (id 1) maps to the ignored class.

Output, for ``split`` in train/val/test::

    root/leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_color.png   (optional)

Command line: ``python -m offline_calibration.synthetic --out DIR --n-train 300 --n-val 100 --n-test 100``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label, name2label
from tqdm import tqdm

from lsea_monitor.errors import DatasetLayoutError, InputValidationError

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Synthetic city names per split (no underscore: Cityscapes stems are ``city_seq_frame``).
CITIES: dict[str, tuple[str, ...]] = {
    "train": ("ashford", "brimley", "carden", "dunmoor"),
    "val": ("elmsworth", "fernhill"),
    "test": ("glenrock", "harwick"),
}
IMAGES_PER_CITY = 250
FRAME_ID = 19  # Cityscapes annotates frame 000019 of each 30-frame snippet
MARKER_NAME = ".lsea_synthetic.json"
PARTIAL_MARKER_NAME = ".lsea_synthetic.partial.json"
_SPLIT_CODE = {s: zlib.crc32(s.encode()) for s in SPLITS}


def _id(name: str) -> int:
    return int(name2label[name].id)


ROAD, SIDEWALK, BUILDING, WALL, FENCE = _id("road"), _id("sidewalk"), _id("building"), _id("wall"), _id("fence")
POLE, LIGHT, SIGN, VEGETATION, TERRAIN = (_id("pole"), _id("traffic light"), _id("traffic sign"),
                                          _id("vegetation"), _id("terrain"))
SKY, PERSON, RIDER, CAR, TRUCK, BUS = _id("sky"), _id("person"), _id("rider"), _id("car"), _id("truck"), _id("bus")
MOTORCYCLE, BICYCLE, EGO = _id("motorcycle"), _id("bicycle"), _id("ego vehicle")
#: Every Cityscapes label id the generator can write.
SYNTHETIC_LABEL_IDS: frozenset[int] = frozenset(
    {ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK,
     BUS, MOTORCYCLE, BICYCLE, EGO}
)
_COLOR_LUT = np.zeros((256, 3), np.uint8)
for _lid, _lab in id2label.items():
    if 0 <= _lid < 256:
        _COLOR_LUT[_lid] = _lab.color
_COLOR_LUT_BGR = np.ascontiguousarray(_COLOR_LUT[:, ::-1]).reshape(256, 1, 3)

Colour = tuple[int, int, int]


# --- records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One labelled polygon: ``label_id`` painted over ``polygon`` (K, 2) int32 pixel (x, y)."""

    label_id: int
    polygon: np.ndarray


@dataclass
class Scene:
    """A rendered scene.

    Attributes
    ----------
    rgb : ndarray (H, W, 3) uint8
    label_ids : ndarray (H, W) uint8, Cityscapes label ids
    shapes : list of Shape
        Painter's order; rasterising them with ``cv2.fillPoly(LINE_8)`` onto a sky-filled canvas
        reproduces ``label_ids`` exactly (the first shape covers the whole image).
    """

    rgb: np.ndarray
    label_ids: np.ndarray
    shapes: list[Shape] = field(default_factory=list)


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_dataset` did (``ms_per_image``: wall time over all workers)."""

    root: str
    counts: dict[str, int]
    height: int
    width: int
    seed: int
    skipped: bool
    seconds: float
    ms_per_image: float
    label_pixel_fraction: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- camera -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    f: float
    cx: float
    horizon: float
    cam_h: float
    roll: float
    width: int
    height: int

    def project(self, pts: np.ndarray) -> np.ndarray:
        """World (..., 3) (X right, Y up, Z forward; Z > 0) -> pixel (..., 2) float."""
        out = np.empty(pts.shape[:-1] + (2,), np.float64)
        inv_z = self.f / pts[..., 2]
        u, v = out[..., 0], out[..., 1]
        np.multiply(pts[..., 0], inv_z, out=u)
        u += self.cx
        np.multiply(self.cam_h - pts[..., 1], inv_z, out=v)
        v += self.horizon
        if self.roll:
            c, s = math.cos(self.roll), math.sin(self.roll)
            du, dv = u - self.width / 2, v - self.height / 2
            out[..., 0] = self.width / 2 + c * du - s * dv
            out[..., 1] = self.height / 2 + s * du + c * dv
        return out

    def px(self, size_m: float, z: float) -> float:
        """Projected size in pixels of ``size_m`` metres at depth ``z``."""
        return self.f * size_m / z


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], np.float64)


def _quad_x(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """Rectangle in the plane X = x."""
    return np.array([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]], np.float64)


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane Z = z (facing the camera)."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)


def _quad_ground(x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> np.ndarray:
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], np.float64)


# --- canvas -----------------------------------------------------------------------------------------


_FILL, _HULL, _DETAILS = 0, 1, 2


class _Canvas:
    """Colour image and label map painted far to near.

    3-D drawing calls are queued and projected in one vectorised pass by :meth:`flush` (per-call
    numpy overhead dominates otherwise); the queue is flushed before any direct pixel operation,
    so the painter's order is the call order.
    """

    def __init__(self, height: int, width: int, cam: _Camera, haze: Colour, visibility_m: float) -> None:
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.labels = np.full((height, width), SKY, np.uint8)
        full = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.int32)
        self.shapes: list[Shape] = [Shape(SKY, full)]
        self.cam = cam
        self.haze = tuple(float(c) for c in haze)
        self.visibility_m = visibility_m
        self._queue: list[tuple[np.ndarray, int, int | None, Colour]] = []

    def hazed(self, colour: Sequence[float], z: float) -> Colour:
        """Blend a colour towards the horizon colour with depth (aerial perspective)."""
        a = 1.0 - math.exp(-max(z, 0.0) / self.visibility_m)
        hz = self.haze
        return (int((1 - a) * colour[0] + a * hz[0]), int((1 - a) * colour[1] + a * hz[1]),
                int((1 - a) * colour[2] + a * hz[2]))

    def _visible(self, p: np.ndarray) -> bool:
        h, w = self.labels.shape
        lo, hi = p.min(axis=0), p.max(axis=0)
        return not (hi[0] < 0 or lo[0] >= w or hi[1] < 0 or lo[1] >= h)

    def _paint(self, p: np.ndarray, label: int | None, colour: Colour) -> None:
        if label is not None:
            cv2.fillPoly(self.labels, [p], label, cv2.LINE_8)
            self.shapes.append(Shape(label, p))
        cv2.fillPoly(self.rgb, [p], colour, cv2.LINE_AA)

    def fill(self, poly2d: np.ndarray, label: int | None, colour: Colour) -> None:
        """Paint one image-space polygon now; ``label=None`` paints the colour image only."""
        self.flush()
        p = np.round(poly2d).astype(np.int32)
        if self._visible(p):
            self._paint(p, None if label is None else int(label), colour)

    def fill3d(self, pts3d: np.ndarray, label: int | None, colour: Colour) -> None:
        """Queue a planar 3-D polygon (K, 3)."""
        self._queue.append((pts3d, _FILL, label, colour))

    def hull3d(self, pts3d: np.ndarray, label: int | None, colour: Colour) -> None:
        """Queue the silhouette (convex hull of the projection) of a convex solid's corners (K, 3)."""
        self._queue.append((pts3d, _HULL, label, colour))

    def details3d(self, polys3d: np.ndarray, colour: Colour) -> None:
        """Queue many small colour-only polygons (P, K, 3): windows, lane marks, leaf texture."""
        if len(polys3d):
            self._queue.append((polys3d, _DETAILS, None, colour))

    def flush(self) -> None:
        """Project every queued polygon at once (Z >= 1 m everywhere, so coordinates stay in
        cv2's range; points are never clamped, which would bend visible edges) and paint them."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        flat = [q[0].reshape(-1, 3) for q in queue]
        sizes = np.fromiter((len(f) for f in flat), np.int64, len(flat))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        proj = np.round(self.cam.project(np.concatenate(flat))).astype(np.int32)
        lo = np.minimum.reduceat(proj, starts, axis=0)
        hi = np.maximum.reduceat(proj, starts, axis=0)
        h, w = self.labels.shape
        visible = ((hi[:, 0] >= 0) & (lo[:, 0] < w) & (hi[:, 1] >= 0) & (lo[:, 1] < h)).tolist()
        for (pts3d, mode, label, colour), a, n, vis in zip(queue, starts.tolist(), sizes.tolist(), visible):
            if not vis:
                continue
            p = proj[a:a + n]
            if mode == _DETAILS:
                cv2.fillPoly(self.rgb, list(p.reshape(pts3d.shape[0], -1, 2)), colour, cv2.LINE_8)
                continue
            if mode == _HULL:
                p = cv2.convexHull(p).reshape(-1, 2)
            self._paint(p, None if label is None else int(label), colour)


# --- palette ----------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, base: Sequence[int], amount: float) -> Colour:
    d = rng.normal(0, amount, 3).tolist()
    return (min(255, max(0, int(base[0] + d[0]))), min(255, max(0, int(base[1] + d[1]))),
            min(255, max(0, int(base[2] + d[2]))))


def _scale(c: Colour, k: float) -> Colour:
    return (int(min(255, c[0] * k)), int(min(255, c[1] * k)), int(min(255, c[2] * k)))


_FACADES = ((170, 160, 145), (190, 180, 165), (140, 120, 105), (120, 110, 110), (200, 195, 185), (155, 90, 70),
            (105, 105, 115), (215, 205, 170), (165, 140, 120))
_CAR_PAINT = ((230, 230, 230), (25, 25, 28), (120, 120, 125), (175, 175, 180), (140, 25, 25), (30, 50, 120),
              (40, 70, 50), (200, 180, 140), (70, 70, 80))
_CLOTHES = ((30, 30, 35), (60, 60, 90), (150, 30, 30), (40, 80, 140), (200, 200, 200), (100, 80, 60), (60, 100, 60),
            (180, 150, 60), (90, 40, 90))
_SKIN = ((230, 190, 160), (200, 150, 120), (150, 100, 70), (100, 70, 50))


# --- scene elements ---------------------------------------------------------------------------------


@dataclass
class _Street:
    xl: float  # road left edge (m)
    xr: float  # road right edge
    swl: float  # sidewalk widths
    swr: float
    lane_w: float
    z_near: float
    z_far: float

    @property
    def out_l(self) -> float:
        return self.xl - self.swl

    @property
    def out_r(self) -> float:
        return self.xr + self.swr


def _draw_sky(cv: _Canvas, rng: np.random.Generator, top: Colour, bottom: Colour) -> None:
    h, w = cv.labels.shape
    hor = int(np.clip(cv.cam.horizon, 1, h))
    t = np.linspace(0.0, 1.0, hor)[:, None]
    grad = (1 - t) * np.asarray(top, np.float64) + t * np.asarray(bottom, np.float64)
    # cv2 broadcasts a column 7x faster than numpy's strided assignment.
    cv.rgb[:hor] = cv2.resize(grad[:, None, :].astype(np.uint8), (w, hor), interpolation=cv2.INTER_NEAREST)
    if hor < h:
        cv.rgb[hor:] = cv2.resize(np.asarray(bottom, np.uint8).reshape(1, 1, 3), (w, h - hor),
                                  interpolation=cv2.INTER_NEAREST)
    for _ in range(int(rng.integers(0, 5))):  # clouds: colour only
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, 0.7 * hor))
        ax, ay = float(rng.uniform(0.05, 0.2) * w), float(rng.uniform(0.02, 0.06) * h)
        pts = cv2.ellipse2Poly((int(cx), int(cy)), (int(ax), max(1, int(ay))), 0, 0, 360, 15)
        cloud = _scale(bottom, float(rng.uniform(1.02, 1.15)))
        cv.fill(pts.astype(np.float64), None, cloud)


def _draw_ground(cv: _Canvas, rng: np.random.Generator, st: _Street, light: float) -> None:
    cam = cv.cam
    zn, zf = st.z_near, st.z_far
    # Terrain: a ground trapezoid reaching 6 image widths sideways at the horizon, 3 at the bottom.
    far_x, near_x = 6.0 * zf * cam.width / cam.f, 3.0 * zn * cam.width / cam.f
    ground = np.array([[-near_x, 0, zn], [near_x, 0, zn], [far_x, 0, zf], [-far_x, 0, zf]], np.float64)
    terrain = _jitter(rng, (95, 120, 60) if rng.random() < 0.7 else (125, 115, 90), 12)
    cv.fill3d(ground, TERRAIN, _scale(terrain, light))
    asphalt = _scale(_jitter(rng, (85, 85, 90), 10), light)
    cv.fill3d(_quad_ground(st.xl, st.xr, zn, zf), ROAD, asphalt)
    paving = _scale(_jitter(rng, (150, 145, 140), 15), light)
    cv.fill3d(_quad_ground(st.out_l, st.xl, zn, zf), SIDEWALK, paving)
    cv.fill3d(_quad_ground(st.xr, st.out_r, zn, zf), SIDEWALK, _jitter(rng, paving, 4))
    # Curbs (sidewalk class), lane marks and crossings (road class): colour only.
    curb = _scale((175, 172, 168), light)
    cv.fill3d(_quad_ground(st.xl - 0.25, st.xl, zn, zf, 0.0), None, curb)
    cv.fill3d(_quad_ground(st.xr, st.xr + 0.25, zn, zf, 0.0), None, curb)
    white = _scale((225, 225, 220), light)
    mark_w = float(rng.uniform(0.1, 0.16))
    edges = [st.xl + 0.3, st.xr - 0.3 - mark_w]
    if rng.random() < 0.7:
        for x in edges:
            cv.fill3d(_quad_ground(x, x + mark_w, zn, zf), None, white)
    n_lanes = max(1, int(round((st.xr - st.xl) / st.lane_w)))
    dash, gap = float(rng.uniform(2.5, 4.0)), float(rng.uniform(5.0, 9.0))
    offset = float(rng.uniform(0, dash + gap))
    quads = []
    for k in range(1, n_lanes):
        x = st.xl + k * (st.xr - st.xl) / n_lanes - mark_w / 2
        centre_solid = n_lanes == 2 and rng.random() < 0.25
        if centre_solid:
            quads.append(_quad_ground(x, x + mark_w, zn, min(zf, 150.0)))
            continue
        z = zn - offset
        while z < 120.0:
            a, b = max(z, zn), z + dash
            if b > zn:
                quads.append(_quad_ground(x, x + mark_w, a, b))
            z += dash + gap
    if quads:
        colour = white if rng.random() < 0.8 else _scale((220, 190, 60), light)
        cv.details3d(np.stack(quads), colour)
    if rng.random() < 0.25:  # zebra crossing
        zc = float(rng.uniform(6, 25))
        stripes = [_quad_ground(x, x + 0.5, zc, zc + 3.0) for x in np.arange(st.xl + 0.5, st.xr - 0.5, 1.0)]
        cv.details3d(np.stack(stripes), white)


def _shadow_pass(cv: _Canvas, polys3d: list[np.ndarray], strength: float) -> None:
    """Darken the ground under cast shadows (colour only; drawn before the objects)."""
    if not polys3d:
        return
    cv.flush()
    mask = np.zeros(cv.labels.shape, np.uint8)
    for p in polys3d:
        q = np.round(cv.cam.project(p)).astype(np.int32)
        if cv._visible(q):
            cv2.fillPoly(mask, [q], 255, cv2.LINE_AA)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    region = cv.rgb[y:y + h, x:x + w]
    keep = cv2.subtract(255, cv2.multiply(mask[y:y + h, x:x + w], strength))  # 255 = unshaded
    region[...] = cv2.multiply(region, cv2.merge([keep, keep, keep]), scale=1.0 / 255)


def _building(cv: _Canvas, rng: np.random.Generator, side: int, x_face: float, z0: float, z1: float, height_m: float,
              light: float, sun_side: int, front: bool = True) -> None:
    depth = float(rng.uniform(8, 20))
    x_back = x_face - depth if side < 0 else x_face + depth
    box = _box(min(x_face, x_back), max(x_face, x_back), 0.0, height_m, z0, z1)
    base = _jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 10)
    lit = light * (1.1 if side == sun_side else 0.8)
    facade = cv.hazed(_scale(base, lit), (z0 + z1) / 2)
    cv.hull3d(box, BUILDING, facade)
    # Front face (plane Z = z0), in shade or light.
    if front:  # the face towards the camera (not drawn when the box starts behind the camera)
        front_colour = cv.hazed(_scale(base, light * 0.95), z0)
        cv.fill3d(_quad_z(z0, min(x_face, x_back), max(x_face, x_back), 0.0, height_m), None, front_colour)
    # Windows on the facade, one fillPoly call.
    floor_h = float(rng.uniform(2.8, 3.6))
    win_w, win_h = float(rng.uniform(0.8, 1.6)), float(rng.uniform(1.0, 1.8))
    pitch = float(rng.uniform(2.0, 3.5))
    ground_floor = float(rng.uniform(0.0, 1.0)) < 0.5
    ys = np.arange(floor_h * (1.3 if ground_floor else 0.3), height_m - win_h - 0.3, floor_h)
    zs = np.arange(z0 + 0.8, z1 - win_w - 0.3, pitch)
    if len(ys) and len(zs) and cv.cam.px(win_w, z1) >= 1.0:
        # (rows, cols, 4 corners, xyz) by broadcasting, flattened to (P, 4, 3).
        quads = np.empty((len(ys), len(zs), 4, 3))
        quads[..., 0] = x_face
        quads[..., 1] = ys[:, None, None] + np.array([0.0, win_h, win_h, 0.0])
        quads[..., 2] = zs[None, :, None] + np.array([0.0, 0.0, win_w, win_w])
        quads = quads.reshape(-1, 4, 3)
        glass = cv.hazed(_jitter(rng, (60, 70, 85) if rng.random() < 0.7 else (150, 160, 175), 10), (z0 + z1) / 2)
        cv.details3d(quads, _scale(glass, light))
    if ground_floor:  # shop front band
        band = cv.hazed(_scale(_jitter(rng, (50, 50, 55), 20), light), (z0 + z1) / 2)
        cv.fill3d(_quad_x(x_face, 0.3, min(2.6, height_m), z0 + 0.5, z1 - 0.5), None, band)


_COS18, _SIN18 = np.cos(np.linspace(0, 2 * np.pi, 18, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 18, endpoint=False))
_COS8, _SIN8 = np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False))


def _tree(cv: _Canvas, rng: np.random.Generator, x: float, z: float, light: float, scale: float = 1.0) -> None:
    u = rng.random(2)
    trunk_h = (1.5 + 1.5 * float(u[0])) * scale
    r = (1.2 + 1.6 * float(u[1])) * scale
    bark = cv.hazed(_scale((80, 65, 50), light), z)
    cv.fill3d(_quad_z(z, x - 0.12 * scale, x + 0.12 * scale, 0.0, trunk_h + r * 0.5), VEGETATION, bark)
    rad = r * rng.uniform(0.75, 1.15, 18)
    crown = np.empty((18, 3))
    crown[:, 0] = x + rad * _COS18
    crown[:, 1] = trunk_h + r + 0.8 * rad * _SIN18
    crown[:, 2] = z
    green = _jitter(rng, (60, 95, 40), 14)
    cv.fill3d(crown, VEGETATION, cv.hazed(_scale(green, light), z))
    if cv.cam.px(r, z) > 8:  # leaf texture: darker and lighter clumps (colour only), vectorised
        k = 4
        v = rng.random((k, 4))
        a, rr = 2 * np.pi * v[:, 0], (0.1 + 0.5 * v[:, 1]) * r
        size = ((0.2 + 0.2 * v[:, 2]) * r)[:, None] * rng.uniform(0.75, 1.25, (k, 8))
        clumps = np.empty((k, 8, 3))
        clumps[..., 0] = (x + rr * np.cos(a))[:, None] + size * _COS8
        clumps[..., 1] = (trunk_h + r + 0.7 * rr * np.sin(a))[:, None] + 0.8 * size * _SIN8
        clumps[..., 2] = z
        for j in range(k):
            tone = 0.65 + 0.15 * float(v[j, 3]) if j % 2 == 0 else 1.1 + 0.15 * float(v[j, 3])
            cv.fill3d(clumps[j], None, cv.hazed(_scale(green, light * tone), z))


def _pole(cv: _Canvas, rng: np.random.Generator, x: float, z: float, light: float, towards_road: float) -> None:
    h = float(rng.uniform(3.0, 8.0))
    w = float(rng.uniform(0.08, 0.2))
    metal = cv.hazed(_scale(_jitter(rng, (110, 110, 115), 15), light), z)
    cv.fill3d(_quad_z(z, x - w / 2, x + w / 2, 0.0, h), POLE, metal)
    kind = rng.random()
    if kind < 0.35 and h > 5:  # street light arm
        arm = float(rng.uniform(1.0, 2.5)) * towards_road
        cv.fill3d(_quad_z(z, min(x, x + arm), max(x, x + arm), h - 0.15, h), POLE, metal)
    elif kind < 0.75:  # traffic sign
        size = float(rng.uniform(0.5, 0.9))
        yc = min(h, 2.8) - size / 2 if h < 3.3 else float(rng.uniform(2.2, h - size))
        shape = rng.integers(3)
        if shape == 0:
            ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            pts = np.stack([x + size / 2 * np.cos(ang), yc + size / 2 * np.sin(ang), np.full(16, z - 0.05)], -1)
        elif shape == 1:
            pts = np.array([[x - size / 2, yc + size / 2, z - 0.05], [x + size / 2, yc + size / 2, z - 0.05],
                            [x, yc - size / 2, z - 0.05]])
        else:
            pts = _quad_z(z - 0.05, x - size / 2, x + size / 2, yc - size / 2, yc + size / 2)
        face = [(200, 30, 30), (30, 60, 160), (230, 200, 40), (240, 240, 240)][int(rng.integers(4))]
        cv.fill3d(pts, SIGN, cv.hazed(_scale(face, light), z))
        if cv.cam.px(size, z) > 6:
            inner = (pts - [x, yc, 0]) * [0.6, 0.6, 1] + [x, yc, 0]
            cv.fill3d(inner, None, cv.hazed(_scale((235, 235, 235), light), z))
    else:  # traffic light head
        hh = float(rng.uniform(0.8, 1.0))
        y0 = min(h, float(rng.uniform(2.5, 4.5))) - hh
        cv.fill3d(_quad_z(z - 0.05, x - 0.18, x + 0.18, y0, y0 + hh), LIGHT, cv.hazed((30, 30, 30), z))
        if cv.cam.px(0.3, z) > 3:
            on = int(rng.integers(3))
            for k, col in enumerate(((220, 40, 30), (230, 170, 30), (40, 200, 80))):
                yc = y0 + hh * (0.8 - 0.3 * k)
                lamp = col if k == on else _scale(col, 0.3)
                cv.fill3d(_quad_z(z - 0.06, x - 0.09, x + 0.09, yc - 0.09, yc + 0.09), None, lamp)


def _vehicle(cv: _Canvas, rng: np.random.Generator, x: float, z: float, light: float, kind: int) -> list[np.ndarray]:
    """Draw a car, truck or bus whose rear-left-bottom corner is at (x, 0, z); returns its shadow."""
    if kind == CAR:
        w, length, h = float(rng.uniform(1.6, 1.95)), float(rng.uniform(3.8, 4.9)), float(rng.uniform(1.35, 1.65))
    elif kind == TRUCK:
        w, length, h = float(rng.uniform(2.2, 2.5)), float(rng.uniform(5.5, 9.0)), float(rng.uniform(2.4, 3.4))
    else:
        w, length, h = 2.5, float(rng.uniform(10.0, 12.5)), float(rng.uniform(2.9, 3.3))
    x0, x1, z0, z1 = x, x + w, z, z + length
    paint = _jitter(rng, _CAR_PAINT[int(rng.integers(len(_CAR_PAINT)))], 8)
    if kind == BUS:
        paint = _jitter(rng, ((220, 200, 40), (200, 40, 40), (230, 230, 230), (40, 90, 160))[int(rng.integers(4))], 8)
    clearance = 0.18 if kind == CAR else 0.35
    body_top = h * (0.6 if kind == CAR else 1.0)
    # Wheels (part of the vehicle): visible ones on the camera side and at the back.
    tyre = cv.hazed((20, 20, 22), z)
    r = 0.33 if kind == CAR else 0.5
    side_x = x1 if x1 < 0 else (x0 if x0 > 0 else None)
    for wz in (z0 + 0.8, z1 - 0.8):
        for wx in ((x0 + 0.15, x1 - 0.15) if side_x is None else (side_x,)):
            ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
            pts = np.stack([np.full(10, wx), r + r * np.sin(ang), wz + r * np.cos(ang)], -1)
            cv.fill3d(pts, kind, tyre)
    body = _box(x0, x1, clearance, body_top, z0, z1)
    shade = cv.hazed(_scale(paint, light * 0.8), z)
    cv.hull3d(body, kind, shade)
    cv.fill3d(_quad_z(z0, x0, x1, clearance, body_top), None, cv.hazed(_scale(paint, light), z))
    if kind == CAR:
        inset, cz0, cz1 = 0.12, z0 + length * float(rng.uniform(0.2, 0.3)), z1 - length * float(rng.uniform(0.25, 0.35))
        cabin = _box(x0 + inset, x1 - inset, body_top - 0.02, h, cz0, cz1)
        cv.hull3d(cabin, CAR, cv.hazed(_scale(paint, light * 0.9), z))
        glass = cv.hazed(_scale((45, 55, 65), light), z)
        cv.fill3d(np.array([[x0 + inset + 0.05, body_top + 0.05, cz0], [x1 - inset - 0.05, body_top + 0.05, cz0],
                            [x1 - inset - 0.1, h - 0.07, cz0 + 0.25], [x0 + inset + 0.1, h - 0.07, cz0 + 0.25]]),
                  None, glass)
        if side_x is not None:
            cv.fill3d(_quad_x(side_x, body_top + 0.08, h - 0.08, cz0 + 0.3, cz1 - 0.15), None, glass)
    else:
        glass = cv.hazed(_scale((40, 50, 60), light), z)
        cv.fill3d(_quad_z(z0, x0 + 0.15, x1 - 0.15, h * 0.55, h * 0.9), None, glass)
        if side_x is not None and kind == BUS:
            cv.fill3d(_quad_x(side_x, h * 0.5, h * 0.88, z0 + 0.5, z1 - 0.8), None, glass)
    # Tail lights and plate.
    if cv.cam.px(w, z) > 12:
        red = (200, 30, 25)
        yl = clearance + (body_top - clearance) * 0.6
        cv.fill3d(_quad_z(z0 - 0.01, x0 + 0.05, x0 + 0.3, yl, yl + 0.15), None, red)
        cv.fill3d(_quad_z(z0 - 0.01, x1 - 0.3, x1 - 0.05, yl, yl + 0.15), None, red)
        xm = (x0 + x1) / 2
        cv.fill3d(_quad_z(z0 - 0.01, xm - 0.26, xm + 0.26, clearance + 0.1, clearance + 0.22), None, (225, 225, 225))
    return [_quad_ground(x0 - 0.2, x1 + 0.2, z0 - 0.3, z1 + 0.2)]


def _person(cv: _Canvas, rng: np.random.Generator, x: float, z: float, light: float, label: int = PERSON,
            base_y: float = 0.0, height_m: float | None = None, seated: bool = False) -> None:
    h = height_m if height_m is not None else float(rng.uniform(1.5, 1.95))
    skin = cv.hazed(_scale(_SKIN[int(rng.integers(len(_SKIN)))], light), z)
    top = cv.hazed(_scale(_jitter(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))], 10), light), z)
    legs = cv.hazed(_scale(_jitter(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))], 10), light), z)
    sw = h * 0.13  # half shoulder width
    hip, neck = base_y + h * 0.47, base_y + h * 0.82
    if not seated:
        stride = float(rng.uniform(0.0, 0.25)) * h
        for dx in (-1, 1):
            foot = x + dx * stride / 2
            cv.fill3d(np.array([[x + dx * 0.02 - 0.07, hip, z], [x + dx * 0.02 + 0.07, hip, z],
                                [foot + 0.06, base_y, z], [foot - 0.06, base_y, z]]), label, legs)
    else:
        cv.fill3d(_quad_z(z, x - sw * 0.9, x + sw * 0.9, hip - 0.15, hip + 0.05), label, legs)
    cv.fill3d(np.array([[x - sw, neck, z], [x + sw, neck, z], [x + sw * 0.8, hip, z], [x - sw * 0.8, hip, z]]),
              label, top)
    for dx in (-1, 1):  # arms
        swing = float(rng.uniform(-0.15, 0.15))
        cv.fill3d(np.array([[x + dx * sw, neck, z], [x + dx * (sw + 0.08), neck - 0.05, z],
                            [x + dx * (sw + 0.1) + swing, hip + 0.02, z], [x + dx * (sw - 0.02) + swing, hip, z]]),
                  label, top)
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    rh = h * 0.065
    head = np.stack([x + rh * np.cos(ang), neck + 1.3 * rh + 1.2 * rh * np.sin(ang), np.full(12, z)], -1)
    cv.fill3d(head, label, skin)
    if cv.cam.px(rh, z) > 3 and rng.random() < 0.7:  # hair
        hair = cv.hazed(_scale(_jitter(rng, (50, 35, 25), 20), light), z)
        cv.fill3d(head[:7], None, hair)  # upper half of the head


def _two_wheeler(cv: _Canvas, rng: np.random.Generator, x: float, z: float, light: float) -> None:
    motor = rng.random() < 0.35
    label = MOTORCYCLE if motor else BICYCLE
    length, r = (1.9, 0.32) if motor else (1.7, 0.34)
    dark = cv.hazed(_scale((30, 30, 30), light), z)
    frame = cv.hazed(_scale(_jitter(rng, (120, 40, 40) if motor else (60, 90, 140), 25), light), z)
    # Seen from behind or from the side depending on position: draw a side profile in plane X = x.
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    for wz in (z, z + length):
        cv.fill3d(np.stack([np.full(12, x), r + r * np.sin(ang), wz + r * np.cos(ang)], -1), label, dark)
    if motor:
        cv.hull3d(_box(x - 0.2, x + 0.2, 0.35, 0.95, z + 0.3, z + length - 0.3), label, frame)
    else:
        cv.fill3d(np.array([[x, r, z], [x, 0.85, z + 0.5], [x, 0.9, z + 1.2], [x, r, z + length],
                            [x, r + 0.1, z + length], [x, 0.8, z + 1.2], [x, 0.75, z + 0.55], [x, r + 0.1, z]]),
                  label, frame)
    _person(cv, rng, x, z + length * 0.45, light, label=RIDER, base_y=0.35 if motor else 0.45,
            height_m=float(rng.uniform(1.25, 1.45)), seated=True)


def _ego_vehicle(cv: _Canvas, rng: np.random.Generator, light: float) -> None:
    h, w = cv.labels.shape
    depth = float(rng.uniform(0.06, 0.13)) * h
    xs = np.linspace(-0.1 * w, 1.1 * w, 25)
    bulge = float(rng.uniform(0.3, 0.7)) * depth
    ys = h - depth + bulge * ((xs - w / 2) / (0.6 * w)) ** 2
    poly = np.vstack([np.stack([xs, ys], -1), [[1.1 * w, 2 * h], [-0.1 * w, 2 * h]]])
    paint = _scale(_jitter(rng, (30, 32, 36), 6), light)
    cv.fill(poly, EGO, paint)
    hl = np.stack([xs[6:19], ys[6:19] + 0.25 * depth], -1)
    cv2.polylines(cv.rgb, [np.round(hl).astype(np.int32)], False, _scale(paint, 2.2), 1, cv2.LINE_AA)


# --- scene ------------------------------------------------------------------------------------------

_NOISE_LEVELS = (1.2, 2.2, 3.2)  # sensor noise std in grey levels
_NOISE_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _noise_bank(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed Gaussian noise split into its positive and negative parts (uint8), one slab per level,
    32 pixels larger than the image so that each image takes a random window (cv2.add/subtract
    then apply it with saturation, much faster than float arithmetic)."""
    key = (height, width)
    bank = _NOISE_CACHE.get(key)
    if bank is None:
        noise = np.random.default_rng(12345).normal(0, 1, (height + 32, width + 32, 3))
        levels = np.stack([np.round(noise * s) for s in _NOISE_LEVELS])
        bank = (np.clip(levels, 0, 255).astype(np.uint8), np.clip(-levels, 0, 255).astype(np.uint8))
        _NOISE_CACHE.clear()
        _NOISE_CACHE[key] = bank
    return bank


def render_scene(seed: int | np.random.Generator, height: int = 256, width: int = 512) -> Scene:
    """Render one road scene.

    Parameters
    ----------
    seed : int or numpy Generator
    height, width : int
        Image size in pixels (at least 32 x 64).

    Returns
    -------
    Scene
        ``rgb`` (H, W, 3) uint8, ``label_ids`` (H, W) uint8 Cityscapes ids, ``shapes``.
    """
    if height < 32 or width < 64:
        raise InputValidationError(f"Synthetic scenes need at least 32 x 64 pixels, got {height} x {width}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    roll = float(np.deg2rad(rng.uniform(-2.5, 2.5))) if rng.random() < 0.4 else 0.0
    cam = _Camera(f=float(rng.uniform(0.75, 1.15)) * width, cx=float(rng.uniform(0.4, 0.6)) * width,
                  horizon=float(rng.uniform(0.34, 0.5)) * height, cam_h=float(rng.uniform(1.2, 1.8)), roll=roll,
                  width=width, height=height)
    # Lighting: clear day, overcast or dusk.
    mood = rng.choice(3, p=[0.5, 0.3, 0.2])
    if mood == 0:
        sky_top, sky_bottom, light, shadow = (_jitter(rng, (70, 125, 200), 12), _jitter(rng, (170, 200, 230), 10),
                                              float(rng.uniform(0.95, 1.15)), float(rng.uniform(0.25, 0.45)))
    elif mood == 1:
        sky_top, sky_bottom, light, shadow = (_jitter(rng, (165, 170, 178), 10), _jitter(rng, (205, 208, 212), 8),
                                              float(rng.uniform(0.8, 1.0)), 0.0)
    else:
        sky_top, sky_bottom, light, shadow = (_jitter(rng, (60, 70, 120), 10), _jitter(rng, (230, 160, 110), 12),
                                              float(rng.uniform(0.55, 0.75)), float(rng.uniform(0.15, 0.3)))
    cv = _Canvas(height, width, cam, haze=sky_bottom, visibility_m=float(rng.uniform(120, 600)))
    _draw_sky(cv, rng, sky_top, sky_bottom)

    lane_w = float(rng.uniform(2.9, 3.6))
    n_lanes = int(rng.integers(1, 5))
    road_w = lane_w * n_lanes
    left = -float(rng.uniform(0.3, 0.8)) * road_w
    # Nearest ground row 30 % of the height below the image (room for the roll); >= 1 m.
    z_near = max(1.0, 0.9 * cam.f * cam.cam_h / (1.3 * height - cam.horizon))
    st = _Street(xl=left, xr=left + road_w, swl=float(rng.uniform(1.5, 5.0)), swr=float(rng.uniform(1.5, 5.0)),
                 lane_w=lane_w, z_near=z_near, z_far=1500.0)
    _draw_ground(cv, rng, st, light)

    sun_side = 1 if rng.random() < 0.5 else -1
    near_items: list[tuple[float, Callable[[], Any]]] = []  # (depth, draw) inside the street
    far_items: list[tuple[float, Callable[[], Any]]] = []  # beyond the sidewalks
    shadows: list[np.ndarray] = []

    # Skyline at the end of the street.
    for _ in range(int(rng.integers(3, 9))):
        zs = float(rng.uniform(150, 400))
        xs = float(rng.uniform(-0.7, 0.7)) * zs * width / cam.f
        wb, hb = float(rng.uniform(10, 50)), float(rng.uniform(8, 45))
        if rng.random() < 0.7:
            col = cv.hazed(_scale(_jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 10), light), zs)
            far_items.append((zs, lambda xs=xs, zs=zs, wb=wb, hb=hb, col=col:
                              cv.fill3d(_quad_z(zs, xs, xs + wb, 0.0, hb), BUILDING, col)))
        else:
            far_items.append((zs, lambda xs=xs, zs=zs, wb=wb: _tree(cv, rng, xs, zs, light, scale=wb / 8)))

    # Roadside: buildings, gaps with walls, fences, hedges or trees.
    for side, x_out in ((-1, st.out_l), (1, st.out_r)):
        if rng.random() < 0.12:
            continue  # open field on this side
        z = float(rng.uniform(-10.0, 8.0))
        while z < 160.0:
            if rng.random() < 0.75:
                length = float(rng.uniform(8, 35))
                setback = float(rng.uniform(0.0, 2.5)) if rng.random() < 0.6 else 0.0
                x_face = x_out - setback if side < 0 else x_out + setback
                hb = float(rng.uniform(5, 28))
                z0 = max(z, 1.0)
                z1 = z + length
                if z1 > z0 + 1.0:
                    far_items.append((z0, lambda s=side, xf=x_face, a=z0, b=z1, hb=hb, fr=z >= 1.0:
                                      _building(cv, rng, s, xf, a, b, hb, light, sun_side, fr)))
                    if shadow and side != sun_side:
                        w_sh = min(hb * 0.6, st.xr - st.xl + st.swl + st.swr)
                        xs0, xs1 = (x_face, x_face + w_sh) if side < 0 else (x_face - w_sh, x_face)
                        shadows.append(_quad_ground(xs0, xs1, max(z0, st.z_near), z1))
                z = z1 + (float(rng.uniform(0, 2)) if rng.random() < 0.7 else 0.0)
            else:
                gap = float(rng.uniform(4, 20))
                z0, z1 = max(z, 1.0), z + gap
                what = rng.random()
                if z1 > z0 + 1.0:
                    xa = x_out - 0.3 if side < 0 else x_out
                    if what < 0.3:
                        lab, col = (WALL, _jitter(rng, (150, 140, 130), 15)) if rng.random() < 0.5 else \
                                   (FENCE, _jitter(rng, (110, 100, 85), 15))
                        hw = float(rng.uniform(0.8, 2.2))
                        far_items.append((z0, lambda xa=xa, a=z0, b=z1, hw=hw, lab=lab, col=col:
                                          cv.hull3d(_box(xa, xa + 0.3, 0.0, hw, a, b), lab,
                                                    cv.hazed(_scale(col, light), a))))
                    elif what < 0.55:
                        hh = float(rng.uniform(0.8, 1.8))
                        col = _jitter(rng, (55, 90, 40), 12)
                        far_items.append((z0, lambda xa=xa, a=z0, b=z1, hh=hh, col=col:
                                          cv.hull3d(_box(xa, xa + 0.6, 0.0, hh, a, b), VEGETATION,
                                                    cv.hazed(_scale(col, light), a))))
                    if what > 0.4:
                        for tz in np.arange(z0 + 2, z1, float(rng.uniform(6, 12))):
                            tx = x_out + side * float(rng.uniform(2, 6))
                            far_items.append((float(tz), lambda tx=tx, tz=float(tz):
                                              _tree(cv, rng, tx, tz, light, 1.4)))
                z = z1

    # Street furniture and road users.
    for side, x_curb, x_out in ((-1, st.xl, st.out_l), (1, st.xr, st.out_r)):
        spacing = float(rng.uniform(12, 30))
        z = float(rng.uniform(3, spacing))
        while z < 120:
            xp = x_curb + side * 0.5
            near_items.append((z, lambda xp=xp, z=z, t=-side: _pole(cv, rng, xp, z, light, t)))
            z += spacing
        if rng.random() < 0.4:
            z = float(rng.uniform(4, 12))
            while z < 90:
                xt = x_curb + side * min(1.2, (x_out - x_curb) * side * 0.5)
                near_items.append((z, lambda xt=xt, z=z: _tree(cv, rng, xt, z, light)))
                z += float(rng.uniform(8, 15))
    for _ in range(int(rng.poisson(3.0))):  # pedestrians on sidewalks
        side = -1 if rng.random() < 0.5 else 1
        x_curb, x_out = (st.xl, st.out_l) if side < 0 else (st.xr, st.out_r)
        lo, hi = min(x_curb, x_out), max(x_curb, x_out)
        xp = float(rng.uniform(lo + 0.4, hi - 0.4)) if hi - lo > 1 else x_curb
        zp = float(rng.uniform(3.5, 50))
        near_items.append((zp, lambda xp=xp, zp=zp: _person(cv, rng, xp, zp, light)))
    if rng.random() < 0.15:  # someone crossing
        zp, xp = float(rng.uniform(5, 20)), float(rng.uniform(st.xl + 0.5, st.xr - 0.5))
        near_items.append((zp, lambda xp=xp, zp=zp: _person(cv, rng, xp, zp, light)))
    lanes = [st.xl + (k + 0.5) * lane_w for k in range(n_lanes)]
    occupied: list[tuple[float, float, float]] = []  # (x, z, length) of placed vehicles
    for _ in range(int(rng.poisson(3.5))):
        r = rng.random()
        kind = CAR if r < 0.82 else (TRUCK if r < 0.92 else BUS)
        parked = rng.random() < 0.45
        zc = float(rng.uniform(3.5 if not parked else 2.5, 70))
        if parked:
            xc = st.xl + 0.2 if rng.random() < 0.5 else st.xr - 2.1
        else:
            xc = lanes[int(rng.integers(n_lanes))] - 0.95 + float(rng.normal(0, 0.2))
        if kind != CAR:
            xc = min(max(xc, st.xl), st.xr - 2.5)
        length = 5.0 if kind == CAR else 12.5
        if any(abs(xc - xo) < 2.6 and zc < zo + lo + 1.0 and zo < zc + length + 1.0 for xo, zo, lo in occupied):
            continue
        occupied.append((xc, zc, length))

        def draw_vehicle(xc: float = xc, zc: float = zc, kind: int = kind) -> None:
            _vehicle(cv, rng, xc, zc, light, kind)

        near_items.append((zc, draw_vehicle))
        shadows.append(_quad_ground(xc - 0.2, xc + (1.9 if kind == CAR else 2.5) + 0.2, zc - 0.3, zc + length - 0.5))
    if rng.random() < 0.2:
        zc, xc = float(rng.uniform(5, 40)), st.xr - 1.0 if rng.random() < 0.6 else st.xl + 1.0
        near_items.append((zc, lambda xc=xc, zc=zc: _two_wheeler(cv, rng, xc, zc, light)))

    _shadow_pass(cv, shadows, shadow if shadow else 0.25)
    for _, draw in sorted(far_items, key=lambda t: -t[0]):
        draw()
    for _, draw in sorted(near_items, key=lambda t: -t[0]):
        draw()
    if rng.random() < 0.45:
        _ego_vehicle(cv, rng, light)
    cv.flush()

    cv.rgb = _finish(cv.rgb, rng)
    return Scene(rgb=cv.rgb, label_ids=cv.labels, shapes=cv.shapes)


def _finish(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera response: white balance and gamma (LUT), smooth illumination, sensor noise, blur."""
    h, w = rgb.shape[:2]
    gains = rng.uniform(0.92, 1.08, 3) * rng.uniform(0.85, 1.15)
    gamma = float(rng.uniform(0.85, 1.2))
    levels = np.arange(256, dtype=np.float64)[:, None] * gains[None, :]
    lut = np.clip(255.0 * (np.clip(levels, 0, 255) / 255.0) ** gamma, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(rgb, lut)
    # Smooth illumination field in [0.85, 1.12] (fixed point, 128 = 1.0), slightly coloured.
    low = rng.uniform(0.85, 1.12, (4, 8, 1)) * rng.uniform(0.97, 1.03, (4, 8, 3))
    illum = cv2.resize(np.round(low * 128).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.multiply(out, illum, scale=1.0 / 128)
    pos, neg = _noise_bank(h, w)
    k, oy, ox = int(rng.integers(len(_NOISE_LEVELS))), int(rng.integers(0, 32)), int(rng.integers(0, 32))
    out = cv2.subtract(cv2.add(out, pos[k, oy:oy + h, ox:ox + w]), neg[k, oy:oy + h, ox:ox + w])
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (3, 3), float(rng.uniform(0.4, 0.8)))
    return out


# --- writing the dataset ----------------------------------------------------------------------------


def image_seed(seed: int, split: str, index: int) -> int:
    """Seed of image ``index`` of ``split``: independent of the split sizes and of the workers."""
    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1)[0])


def stem_for(split: str, index: int) -> tuple[str, str]:
    """``(city, stem)`` of image ``index``, e.g. ``("ashford", "ashford_000012_000019")``."""
    cities = CITIES[split]
    city = cities[(index // IMAGES_PER_CITY) % len(cities)]
    seq = index % IMAGES_PER_CITY + (index // (IMAGES_PER_CITY * len(cities))) * IMAGES_PER_CITY
    return city, f"{city}_{seq:06d}_{FRAME_ID:06d}"


# Fast lossless PNG settings (zlib level 1, run-length matching, "up" filter): about 2x faster than
# cv2's defaults for photos and 3-10x for flat label maps, at a similar size.
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
_PNG_LABEL = _PNG_FAST


def _write_png(path: Path, array: np.ndarray, params: list[int]) -> None:
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:
        raise OSError(f"cv2 could not encode {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def _job(args: tuple[str, str, int, int, int, int, bool]) -> np.ndarray:
    root, split, index, seed, height, width, color = args
    scene = render_scene(image_seed(seed, split, index), height, width)
    city, stem = stem_for(split, index)
    img_dir = Path(root, "leftImg8bit", split, city)
    gt_dir = Path(root, "gtFine", split, city)
    _write_png(img_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR), _PNG_FAST)
    _write_png(gt_dir / f"{stem}_gtFine_labelIds.png", scene.label_ids, _PNG_LABEL)
    if color:
        ids3 = cv2.merge([scene.label_ids, scene.label_ids, scene.label_ids])
        _write_png(gt_dir / f"{stem}_gtFine_color.png", cv2.LUT(ids3, _COLOR_LUT_BGR), _PNG_LABEL)
    return np.bincount(scene.label_ids.ravel(), minlength=256)


def _config(n: dict[str, int], height: int, width: int, seed: int, color: bool) -> dict[str, Any]:
    return {"generator": "offline_calibration.synthetic", "version": GENERATOR_VERSION, "counts": n,
            "height": height, "width": width, "seed": seed, "color": color}


def generate_dataset(root: str | os.PathLike, n_train: int, n_val: int, n_test: int, height: int = 256,
                     width: int = 512, seed: int = 0, workers: int = 1, *, color: bool = True,
                     progress: bool = True) -> SyntheticSummary:
    """Write a synthetic dataset in the official Cityscapes layout (idempotent).

    Parameters
    ----------
    root : path
        Output folder; created if missing. Must be empty or hold an earlier output of this function.
    n_train, n_val, n_test : int
        Images per split (>= 0, at least one in total).
    height, width : int
        Image size in pixels.
    seed : int
        Image ``i`` of a split depends only on ``(seed, split, i, height, width)``.
    workers : int
        Processes (1: in this process).
    color : bool
        Also write ``*_gtFine_color.png``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    SyntheticSummary
        ``skipped=True`` when ``root`` already holds a complete dataset of the same configuration.

    Raises
    ------
    InputValidationError
        Invalid counts or sizes.
    DatasetLayoutError
        ``root`` holds other data, or a dataset generated with a different configuration.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("workers", workers)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise InputValidationError(f"{name} must be a non-negative integer, got {value!r}.")
    if sum(counts.values()) == 0:
        raise InputValidationError("Nothing to generate: n_train, n_val and n_test are all 0.")
    if height < 32 or width < 64:
        raise InputValidationError(f"Synthetic images need at least 32 x 64 pixels, got {height} x {width}.")
    root_p = Path(root)
    config = _config(counts, int(height), int(width), int(seed), bool(color))
    marker, partial = root_p / MARKER_NAME, root_p / PARTIAL_MARKER_NAME
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, ValueError) as err:
            raise DatasetLayoutError(
                f"Cannot read the dataset marker {marker}: {err}. Delete {root_p} and rerun."
            ) from err
        if existing.get("config") == config:
            return SyntheticSummary(root=str(root_p), counts=counts, height=height, width=width, seed=seed,
                                    skipped=True, seconds=0.0, ms_per_image=0.0,
                                    label_pixel_fraction=existing.get("label_pixel_fraction", {}))
        raise DatasetLayoutError(
            f"{root_p} already holds a synthetic dataset with another configuration:"
            f"\n  found    {existing.get('config')}"
            f"\n  requested {config}\nChoose another --out folder or delete {root_p}."
        )
    if root_p.exists():
        if not root_p.is_dir():
            raise DatasetLayoutError(f"Output path {root_p} exists and is not a folder.")
        entries = sorted(p.name for p in root_p.iterdir())
        resumable = partial.is_file() and json.loads(partial.read_text() or "{}").get("config") == config
        if entries and not resumable:
            raise DatasetLayoutError(
                f"Refusing to write a synthetic dataset into {root_p}: the folder is not empty and holds no "
                f"{MARKER_NAME} of the same configuration (found: {entries[:8]}{' ...' if len(entries) > 8 else ''}). "
                "Choose an empty or new folder."
            )
    root_p.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"config": config}, indent=1))
    jobs = []
    for split in SPLITS:
        for i in range(counts[split]):
            city, _ = stem_for(split, i)
            for top in ("leftImg8bit", "gtFine"):
                (root_p / top / split / city).mkdir(parents=True, exist_ok=True)
            jobs.append((str(root_p), split, i, int(seed), int(height), int(width), bool(color)))
    hist = np.zeros(256, np.int64)
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"synthetic -> {root_p}", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1:
            for job in jobs:
                hist += _job(job)
                bar.update()
        else:
            # "spawn", not the Linux default "fork": forking a parent that already runs threads (torch's
            # OpenMP pool, tqdm's monitor, a ROS executor) can leave a child stuck on a lock copied in the
            # held state, and the pool then waits forever.
            # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (e.g. a spawned child that
            # cannot re-import a __main__ read from stdin) raises BrokenProcessPool here instead of being
            # replaced by another that dies the same way, forever.
            ctx = multiprocessing.get_context("spawn")
            try:
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=cv2.setNumThreads,
                                         initargs=(1,)) as pool:
                    for h in pool.map(_job, jobs, chunksize=8):
                        hist += h
                        bar.update()
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    f"a synthetic-data worker process died ({exc}); spawned workers re-import the calling "
                    "script, which fails for code read from stdin or typed interactively: call "
                    "generate_dataset from a script file or module, or pass workers=1") from exc
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    total = max(int(hist.sum()), 1)
    fractions = {id2label[i].name: round(float(hist[i]) / total, 5) for i in sorted(SYNTHETIC_LABEL_IDS) if hist[i]}
    ms = 1000.0 * seconds / len(jobs)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"config": config, "label_pixel_fraction": fractions, "ms_per_image": round(ms, 2)},
                              indent=1))
    os.replace(tmp, marker)
    partial.unlink(missing_ok=True)
    return SyntheticSummary(root=str(root_p), counts=counts, height=height, width=width, seed=seed, skipped=False,
                            seconds=round(seconds, 3), ms_per_image=round(ms, 3), label_pixel_fraction=fractions)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m offline_calibration.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (Cityscapes layout)")
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-color", action="store_true", help="skip *_gtFine_color.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(args.out, args.n_train, args.n_val, args.n_test, args.height, args.width, args.seed,
                                   args.workers, color=not args.no_color, progress=not args.quiet)
    except (InputValidationError, DatasetLayoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
