"""Anomalies: deterministic per seed, each kind alters the image, textures shipped with the package."""

from __future__ import annotations

import importlib.resources
import pickle

import numpy as np
import pytest

from lsea_monitor.errors import InputValidationError
from offline_calibration.anomalies import (
    ANOMALY_DATASETS,
    ANOMALY_KINDS,
    OVERLAY_NAMES,
    Fog,
    FogParams,
    MudOverlay,
    RandomAnomaly,
    FlareCircle,
    SunFlare,
    SunFlareParams,
    alpha_composite,
    apply_anomaly,
    index_seed,
    load_overlay,
    make_anomaly,
    render_fog,
    render_sun_flare,
)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A small textured image (so every anomaly has something to alter)."""
    rng = np.random.default_rng(0)
    img = np.zeros((48, 96, 3), np.uint8)
    img[:20] = (90, 140, 200)  # sky
    img[20:] = (110, 100, 110)  # road
    return np.clip(img.astype(int) + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)


def test_overlay_textures_are_package_data() -> None:
    folder = importlib.resources.files("offline_calibration").joinpath("data", "anomaly_overlays")
    for name in (*OVERLAY_NAMES, "NOTICE.md"):
        assert folder.joinpath(name).is_file(), name
    assert "Permission is hereby granted" in folder.joinpath("NOTICE.md").read_text(encoding="utf-8")
    for name in OVERLAY_NAMES:
        tex = load_overlay(name, 24, 40)
        assert tex.shape == (24, 40, 4) and tex.dtype == np.uint8
        assert tex[..., 3].max() > 0 and tex[..., 3].min() < 255  # partly transparent


@pytest.mark.parametrize("dataset", ANOMALY_DATASETS)
@pytest.mark.parametrize("kind", (*ANOMALY_KINDS, "random"))
def test_each_kind_is_deterministic_and_alters_the_image(rgb: np.ndarray, kind: str, dataset: str) -> None:
    before = rgb.copy()
    a = apply_anomaly(rgb, kind, seed=11, dataset=dataset)
    b = apply_anomaly(rgb, kind, seed=11, dataset=dataset)
    assert np.array_equal(rgb, before), "the input must not be modified"
    assert a.shape == rgb.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert (a != rgb).any(axis=2).mean() > 0.05, f"{kind} changed too few pixels"
    # A fresh object gives the same result (no hidden state between calls).
    assert np.array_equal(make_anomaly(kind, dataset).apply(rgb, 11), a)


@pytest.mark.parametrize("kind", (*ANOMALY_KINDS, "random"))
def test_seeds_differ(rgb: np.ndarray, kind: str) -> None:
    outs = [apply_anomaly(rgb, kind, seed=s) for s in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_random_anomaly_uses_all_kinds_about_equally(rgb: np.ndarray) -> None:
    r = RandomAnomaly()
    kinds = [r.kind_for(index_seed(0, i, "val")) for i in range(600)]
    counts = {k: kinds.count(k) for k in ANOMALY_KINDS}
    assert set(counts) == set(ANOMALY_KINDS)
    assert all(150 < c < 250 for c in counts.values()), counts
    seed = index_seed(0, 3, "val")
    sub_seed = int(np.random.SeedSequence(seed).generate_state(2)[1])
    assert np.array_equal(r.apply(rgb, seed), r.anomalies[r.kind_for(seed)].apply(rgb, sub_seed))


def test_dataset_parameters() -> None:
    assert Fog("cityscapes").alpha_coef == 0.5 and Fog("woodscape").alpha_coef == 0.6
    assert Fog().fog_coef_range == (0.7, 0.8)
    cs, ws = SunFlare("cityscapes"), SunFlare("woodscape")
    assert cs.flare_roi == (0.3, 0.1, 0.7, 0.9) and cs.src_radius(512) == 256
    assert ws.flare_roi == (0.2, 0.2, 0.8, 0.8) and ws.src_radius(640) == 448
    assert cs.num_flare_circles_range == (6, 12)


def test_render_fog_blends_white_discs_then_blurs() -> None:
    """One haze disc on a uniform image: inside it v + a * (255 - v) with a = alpha_coef * fog_coef,
    outside untouched; the box blur (hw // 10) only softens the rim."""
    grey, width = 100, 512
    img = np.full((256, width, 3), grey, np.uint8)
    params = FogParams(fog_coef=0.75, alpha_coef=0.5, haze=((150, 60),))
    hw = int(width // 3 * 0.75)  # 127: a disc of radius 63 centred at (150 + 63, 60 + 63)
    out = render_fog(img, params)
    inside = out[60 + hw // 2, 150 + hw // 2]
    assert inside.tolist() == [round(grey + 0.375 * (255 - grey))] * 3
    assert out[5, 5].tolist() == [grey] * 3 and out[250, 500].tolist() == [grey] * 3
    rim = out[60 + hw // 2, 150 + hw // 2 + hw // 2 - 2, 0]
    assert grey < rim < inside[0]  # blurred across the disc's edge
    assert np.array_equal(render_fog(img, FogParams(0.75, 0.5, ())), img)  # no haze, a blur of a flat image


def test_fog_draws_as_the_original() -> None:
    """albumentations 1.x RandomFog draws: fog_coef in its range; hw // 10 haze positions in the first
    ring (inside the central window), rings growing by hw // 10 until the window covers the image."""
    fog, counts = Fog(), set()
    for seed in range(100):
        p = fog.params_for(256, 512, seed)
        assert 0.7 <= p.fog_coef <= 0.8 and p.alpha_coef == 0.5
        hw = int(512 // 3 * p.fog_coef)
        first = p.haze[: hw // 10]
        mid_x, mid_y = 256 - 2 * hw, 128 - hw
        assert all(mid_x <= x <= 512 - mid_x - hw and mid_y <= y <= 256 - mid_y - hw for x, y in first)
        assert len(p.haze) % (hw // 10) == 0 and len(p.haze) // (hw // 10) in (1, 3, 6)  # 1, 2 or 3 rings
        counts.add(len(p.haze) // (hw // 10))
    assert counts >= {1, 3}
    assert Fog("woodscape").params_for(256, 512, 3).alpha_coef == 0.6
    # Where the original drew no haze (hw // 10 == 0 below about 42 pixels of width), still some.
    small = np.full((24, 32, 3), 90, np.uint8)
    assert all(fog.params_for(24, 32, s).haze and (fog.apply(small, s) != small).any() for s in range(20))
    assert fog.params_for(256, 512, 7) == fog.params_for(256, 512, 7)


def test_sun_flare_source_is_white_at_its_centre() -> None:
    """The original's flare (albumentations 1.x) saturates at its source; albumentations 2 renders
    the same parameters at about a fifth of that alpha (the centre of a flare on black about 190)."""
    black = np.zeros((256, 512, 3), np.uint8)
    flare = SunFlare()
    for seed in range(5):
        params = flare.params_for(256, 512, seed)
        out = flare.apply(black, seed)
        cx, cy = params.center
        assert out[cy, cx].tolist() == [255, 255, 255], (seed, out[cy, cx])
        # Bright well beyond the centre: at a third of the radius still more than half white.
        assert out[cy, min(511, cx + params.src_radius // 3)].min() > 128


def test_render_sun_flare_matches_the_closed_form() -> None:
    """Per pixel at distance d from the source: c + (v - c) * prod(1 - a_j ** 3) over the discs that
    cover d (discs of radii linspace(1, R, R // 10), a = linspace(0, 1, R // 10) from the end)."""
    grey, colour, radius, centre = 100, 255, 200, (256, 128)
    img = np.full((256, 512, 3), grey, np.uint8)
    out = render_sun_flare(img, SunFlareParams(centre, radius, (colour,) * 3, ()))
    n = radius // 10
    radii = np.linspace(1, radius, n).astype(int)
    alphas = np.linspace(0.0, 1.0, n)[::-1] ** 3  # alpha of disc j, smallest disc first
    for d in (0, *((radii[:-1] + radii[1:]) // 2), radius + 20):
        keep = np.prod(1.0 - alphas[radii >= d])
        expected = colour + (grey - colour) * keep
        got = int(out[centre[1], centre[0] + d, 0])
        assert abs(got - expected) <= 2, (d, got, expected)  # each of the n blends rounds to uint8


def test_sun_flare_draws_as_the_original() -> None:
    """Parameter draws of albumentations 1.x RandomSunFlare at the original's settings (256x512)."""
    flare = SunFlare()
    n_circles = set()
    for seed in range(300):
        p = flare.params_for(256, 512, seed)
        assert p.src_radius == 256 and p.src_color == (255, 255, 255)
        cx, cy = p.center
        assert 0.3 * 512 - 1 <= cx <= 0.7 * 512 and 0.1 * 256 - 1 <= cy <= 0.9 * 256
        n_circles.add(len(p.circles))
        for c in p.circles:
            assert isinstance(c, FlareCircle)
            assert 0.05 <= c.alpha <= 0.2
            assert c.radius in (1, 8)  # r ** 3 with r in 1 .. max(256 // 100 - 2, 2)
            assert all(205 <= v <= 255 for v in c.color)
        # The circles lie on one line through the source.
        if len(p.circles) >= 2:
            pts = np.array([c.center for c in p.circles], float) - (cx, cy)
            far = pts[np.argmax(np.hypot(*pts.T))]
            if np.hypot(*far) > 20:
                cross = np.abs(pts[:, 0] * far[1] - pts[:, 1] * far[0]) / np.hypot(*far)
                assert cross.max() <= 2.0, (seed, cross.max())
    assert n_circles == set(range(6, 13))
    assert flare.params_for(256, 512, 7) == flare.params_for(256, 512, 7)


def test_alpha_composite_matches_the_formula() -> None:
    img = np.full((2, 2, 3), 100, np.uint8)
    tex = np.zeros((2, 2, 4), np.uint8)
    tex[..., :3] = 200
    tex[..., 3] = [[0, 255], [128, 64]]
    out = alpha_composite(img, tex)
    assert out[0, 0].tolist() == [100] * 3 and out[0, 1].tolist() == [200] * 3
    assert out[1, 0, 0] == round((200 * 128 + 100 * 127) / 255)
    mud = MudOverlay(("dirt1.png",))
    assert mud.texture_for(1) == "dirt1.png"


def test_index_seed_namespaces() -> None:
    assert index_seed(0, 1, "val") == index_seed(0, 1, "val")
    seeds = {index_seed(0, 1, "val"), index_seed(0, 1, "test"), index_seed(1, 1, "val"), index_seed(0, 2, "val")}
    assert len(seeds) == 4


def test_anomalies_pickle_for_dataloader_workers(rgb: np.ndarray) -> None:
    r = RandomAnomaly("woodscape")
    clone = pickle.loads(pickle.dumps(r))
    assert np.array_equal(clone.apply(rgb, 4), r.apply(rgb, 4))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda img: apply_anomaly(img, "snow", 0), "Unknown anomaly kind 'snow'"),
        (lambda img: apply_anomaly(img, "fog", 0, dataset="kitti"), "Unknown anomaly dataset 'kitti'"),
        (lambda img: apply_anomaly(img.astype(np.float32), "fog", 0), "RGB uint8"),
        (lambda img: apply_anomaly(img[..., 0], "mud", 0), r"shape \(48, 96\)"),
        (lambda img: MudOverlay(("mud2.png",)), "Unknown overlay textures"),
        (lambda img: index_seed(-1, 0), "non-negative"),
    ],
)
def test_errors(rgb: np.ndarray, call, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        call(rgb)
