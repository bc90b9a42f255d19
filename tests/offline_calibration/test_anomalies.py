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
    MudOverlay,
    RandomAnomaly,
    SunFlare,
    alpha_composite,
    apply_anomaly,
    index_seed,
    load_overlay,
    make_anomaly,
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
