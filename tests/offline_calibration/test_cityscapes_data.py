"""Cityscapes dataset and data module on tiny fixtures in the exact official layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, labels as cs_labels

from lsea_monitor.errors import DatasetLayoutError, ImageDecodeError, InputValidationError
from lsea_monitor.preprocessing import CITYSCAPES_MEAN, CITYSCAPES_STD, Preprocessing
from offline_calibration.anomalies import ANOMALY_KINDS
from offline_calibration.cityscapes import (
    CITYSCAPES_CLASS_NAMES,
    ID_TO_TRAIN_ID,
    IGNORE_TRAIN_ID,
    CityscapesDataModule,
    CityscapesDataset,
    _augment,
    compute_rgb_stats,
    load_label,
    load_rgb,
)

H, W = 24, 48
#: Real ids: road, sidewalk, building, sky, person, car, bicycle and ignored ones
#: (0 unlabeled, 1 ego vehicle, 4 static, 5 dynamic, 6 ground, 9 parking, 14 guard rail, 29 caravan).
USED_IDS = (7, 8, 11, 23, 24, 26, 33, 0, 1, 4, 5, 6, 9, 14, 29)
LAYOUT = {"train": {"aachen": 3, "bochum": 2}, "val": {"frankfurt": 2, "lindau": 1}, "test": {"berlin": 2}}


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_cityscapes(root: Path, layout: dict = LAYOUT, placeholder_test: bool = True, seed: int = 0) -> Path:
    """Tiny Cityscapes: random images; label ids in vertical bands; the test split's labels are
    placeholders (ignored ids only), as in the real release."""
    rng = np.random.default_rng(seed)
    for split, cities in layout.items():
        for city, n in cities.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                       rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
                if split == "test" and placeholder_test:
                    ids = np.where(np.arange(H)[:, None] > H - 4, 1, 0).repeat(W, 1).astype(np.uint8)
                else:
                    ids = np.array(USED_IDS, np.uint8)[(np.arange(W) + i) % len(USED_IDS)][None].repeat(H, 0)
                _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                _write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png",
                       np.zeros((H, W, 3), np.uint8))
    return root


@pytest.fixture
def cs_root(tmp_path: Path) -> Path:
    return make_cityscapes(tmp_path / "cityscapes")


def same_size() -> Preprocessing:
    return Preprocessing(H, W)


# --- mapping and reading ------------------------------------------------------------------------------


def test_id_to_train_id_matches_cityscapesscripts() -> None:
    for lab in cs_labels:
        if 0 <= lab.id < 256:
            expected = lab.trainId if 0 <= lab.trainId < 255 else IGNORE_TRAIN_ID
            assert ID_TO_TRAIN_ID[lab.id] == expected, lab.name
    assert set(ID_TO_TRAIN_ID[34:].tolist()) == {IGNORE_TRAIN_ID}
    assert len(CITYSCAPES_CLASS_NAMES) == 20 and CITYSCAPES_CLASS_NAMES[0] == "road"
    assert CITYSCAPES_CLASS_NAMES[18] == "bicycle" and CITYSCAPES_CLASS_NAMES[19] == "ignored"


def test_every_id_in_a_label_file_is_mapped(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", {"val": {"ulm": 1}})
    ids = np.arange(34, dtype=np.uint8).repeat(2)[None].repeat(H, 0)[:, :W]
    ids = np.concatenate([ids, np.full((H, W - ids.shape[1]), 255, np.uint8)], 1)
    _write(root / "gtFine/val/ulm/ulm_000000_000019_gtFine_labelIds.png", ids)
    label = CityscapesDataset(root, "val", same_size())[0]["label"].numpy()
    for col in range(W):
        lab = id2label.get(int(ids[0, col]))
        expected = lab.trainId if lab is not None and 0 <= lab.trainId < 255 else IGNORE_TRAIN_ID
        assert np.all(label[:, col] == expected)


def test_items_shapes_dtypes_and_normalisation(cs_root: Path) -> None:
    pre = Preprocessing(12, 24)
    ds = CityscapesDataset(cs_root, "train", pre)
    assert len(ds) == 5
    item = ds[1]
    assert item["image"].shape == (3, 12, 24) and item["image"].dtype == torch.float32
    assert item["label"].shape == (12, 24) and item["label"].dtype == torch.int64
    assert 0 <= int(item["label"].min()) and int(item["label"].max()) <= IGNORE_TRAIN_ID
    assert item["index"] == 1 and item["anomaly"] == "none"
    assert item["path"].endswith("aachen_000001_000019_leftImg8bit.png")
    # The shared preprocessing, nothing else.
    assert torch.equal(item["image"], pre(load_rgb(item["path"])))
    assert pre.mean == CITYSCAPES_MEAN and pre.std == CITYSCAPES_STD


def test_labels_are_resized_nearest_neighbour(cs_root: Path) -> None:
    full = CityscapesDataset(cs_root, "val", same_size())[0]["label"]
    half = CityscapesDataset(cs_root, "val", Preprocessing(H // 2, W // 2))[0]["label"]
    assert set(half.unique().tolist()) <= set(full.unique().tolist())  # no interpolated classes
    assert torch.equal(half, full[::2, ::2]) or torch.equal(half, full[1::2, 1::2])


def test_splits_are_sorted_deterministic_and_disjoint(cs_root: Path) -> None:
    paths = {s: [it["path"] for it in CityscapesDataset(cs_root, s, same_size(), return_labels=False)]
             for s in ("train", "val", "test")}
    assert paths["train"] == sorted(paths["train"])
    assert [Path(p).parent.name for p in paths["train"]] == ["aachen"] * 3 + ["bochum"] * 2
    assert not (set(paths["train"]) & set(paths["val"])) and not (set(paths["val"]) & set(paths["test"]))
    again = [it["path"] for it in CityscapesDataset(cs_root, "train", same_size(), return_labels=False)]
    assert again == paths["train"]


def test_max_images(cs_root: Path) -> None:
    assert len(CityscapesDataset(cs_root, "train", same_size(), max_images=2)) == 2
    with pytest.raises(InputValidationError, match="max_images"):
        CityscapesDataset(cs_root, "train", same_size(), max_images=0)


def test_compute_rgb_stats(cs_root: Path) -> None:
    paths = sorted((cs_root / "leftImg8bit/train").rglob("*.png"))
    mean, std = compute_rgb_stats(paths)
    pixels = np.concatenate([load_rgb(p).reshape(-1, 3) for p in paths]) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-6)


# --- data module ----------------------------------------------------------------------------------------


def test_data_module_loaders(cs_root: Path) -> None:
    dm = CityscapesDataModule(cs_root, batch_size=2, img_size=(H, W), seed=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    val = list(dm.val_dataloader())
    assert [len(b["index"]) for b in val] == [2, 1]
    assert torch.equal(torch.cat([b["index"] for b in val]), torch.arange(3))
    # Shuffle order depends on the seed only.
    order = [int(i) for b in dm.train_dataloader() for i in b["index"]]
    dm2 = CityscapesDataModule(cs_root, batch_size=2, img_size=(H, W), seed=3)
    dm2.setup("fit")
    assert order == [int(i) for b in dm2.train_dataloader() for i in b["index"]]
    assert sorted(order) == list(range(5))
    assert dm.hparams["seed"] == 3 and dm.hparams["img_size"] == [H, W]


def test_train_augmentation_flips_image_and_label_together(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    for split in ("train", "val"):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, : W // 4] = (0, 0, 255)  # red (BGR) on the left quarter
        ids = np.full((H, W), 23, np.uint8)
        ids[:, : W // 4] = 24  # person where red
        _write(root / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png", img)
        _write(root / "gtFine" / split / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", ids)
    dm = CityscapesDataModule(root, img_size=(H, W), train_augment=True)
    dm.setup("fit")
    ds = dm.train_set
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        item = ds[0]
        red = item["image"][0] > item["image"][2]  # R > B after normalisation
        person = item["label"] == 11
        assert torch.equal(red, person)
        flips += bool(person[:, -1].all())
    assert 0 < flips < 12  # both branches seen
    assert not dm.val_set.augment


def test_brightness_contrast_jitter_saturates_at_black_and_white() -> None:
    """The jitter is ``clip(x * contrast + offset)``: a dark pixel pushed below 0 becomes black, never
    a brighter grey (cv2.convertScaleAbs, used before, returned |x * contrast + offset|)."""
    ramp = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)  # every grey level, mean 127.5
    checked = {"negative": 0, "positive": 0}
    for seed in range(200):
        torch.manual_seed(seed)
        u = torch.rand(4).tolist()
        if u[0] < 0.5 or u[1] >= 0.5:
            continue  # flipped (the ramp would be reordered) or not jittered
        torch.manual_seed(seed)
        out, _ = _augment(ramp, None)
        contrast, brightness = 0.8 + 0.4 * u[2], (u[3] - 0.5) * 51.0
        offset = brightness + float(ramp.mean()) * (1 - contrast)
        expected = np.clip(np.rint(ramp.astype(np.float64) * contrast + offset), 0, 255)
        assert np.abs(out.astype(np.int64) - expected).max() <= 1, seed  # float32 rounding at .5
        if offset < 0:
            checked["negative"] += 1
            assert out[0, 0, 0] == 0  # black stays black
            assert np.all(np.diff(out[..., 0].ravel().astype(np.int64)) >= 0)  # still monotone
        else:
            checked["positive"] += 1
        if 255 * contrast + offset > 256:
            assert out[-1, -1, 0] == 255  # white saturates, does not wrap around
    assert checked["negative"] >= 5 and checked["positive"] >= 5  # both signs of the offset seen


def test_anomaly_loaders_alter_the_same_images(cs_root: Path) -> None:
    dm = CityscapesDataModule(cs_root, batch_size=1, img_size=(H, W), seed=0)
    dm.setup("validate")
    clean = list(dm.val_dataloader())
    anomalous = list(dm.anomaly_val_dataloader())
    again = list(CityscapesDataModule(cs_root, img_size=(H, W)).anomaly_val_dataloader())
    assert len(clean) == len(anomalous) == 3
    for c, a, b in zip(clean, anomalous, again):
        assert c["path"] == a["path"] and torch.equal(c["label"], a["label"])
        assert not torch.equal(c["image"], a["image"])
        assert torch.equal(a["image"], b["image"]) and a["anomaly"] == b["anomaly"]
        assert a["anomaly"][0] in ANOMALY_KINDS
    other_seed = CityscapesDataModule(cs_root, img_size=(H, W), anomaly_seed=5).anomaly_val_dataloader()
    assert any(not torch.equal(a["image"], o["image"]) for a, o in zip(anomalous, other_seed))
    for kind in ANOMALY_KINDS:
        items = list(dm.anomaly_dataloader("val", kind))
        assert all(it["anomaly"] == [kind] for it in items)
        assert all(not torch.equal(c["image"], it["image"]) for c, it in zip(clean, items))
    test_anom = list(dm.anomaly_test_dataloader())
    assert len(test_anom) == 2 and "label" not in test_anom[0]


def test_placeholder_test_labels_are_detected(cs_root: Path, tmp_path: Path) -> None:
    dm = CityscapesDataModule(cs_root, img_size=(H, W))
    dm.setup("test")
    assert not dm.has_labels("test")
    item = dm.test_set[0]
    assert "label" not in item and item["image"].shape == (3, H, W)
    forced = CityscapesDataModule(cs_root, img_size=(H, W), test_labels=True)
    forced.setup("test")
    assert torch.all(forced.test_set[0]["label"] == IGNORE_TRAIN_ID)
    labelled = make_cityscapes(tmp_path / "labelled", placeholder_test=False)
    dm2 = CityscapesDataModule(labelled, img_size=(H, W))
    dm2.setup("test")
    assert dm2.has_labels("test") and "label" in dm2.test_set[0]
    no_gt = make_cityscapes(tmp_path / "nogt", {"test": {"bonn": 1}})
    for p in sorted((no_gt / "gtFine").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    dm3 = CityscapesDataModule(no_gt, img_size=(H, W))
    assert len(list(dm3.test_dataloader())) == 1 and not dm3.has_labels("test")


def test_data_module_config_errors(cs_root: Path) -> None:
    with pytest.raises(InputValidationError, match="batch_size"):
        CityscapesDataModule(cs_root, batch_size=0)
    with pytest.raises(InputValidationError, match="img_size"):
        CityscapesDataModule(cs_root, img_size=(4, 4, 4))
    with pytest.raises(InputValidationError, match="positive"):
        CityscapesDataModule(cs_root, img_size=(0, 8))
    dm = CityscapesDataModule(cs_root, img_size=(H, W))
    with pytest.raises(InputValidationError, match="Unknown stage"):
        dm.setup("training")
    with pytest.raises(InputValidationError, match="Unknown anomaly kind 'snow'"):
        dm.anomaly_dataloader("val", "snow")
    with pytest.raises(InputValidationError, match="Unknown split"):
        dm.anomaly_dataloader("valid", "fog")
    with pytest.raises(InputValidationError, match="Unknown anomaly 'rain'"):
        CityscapesDataset(cs_root, "val", anomaly="rain")
    with pytest.raises(InputValidationError, match="Unknown Cityscapes split"):
        CityscapesDataset(cs_root, "training")


# --- failure paths --------------------------------------------------------------------------------------


def test_missing_root_shows_layout_and_contents(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        CityscapesDataset(tmp_path, "val")
    msg = str(err.value)
    assert "leftImg8bit/val does not exist" in msg and "Expected layout" in msg and "something_else/" in msg
    with pytest.raises(DatasetLayoutError, match="is not a folder"):
        CityscapesDataset(tmp_path / "nope", "val")


def test_empty_split_and_no_cities(tmp_path: Path) -> None:
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="No city folders"):
        CityscapesDataset(tmp_path, "val")
    (tmp_path / "leftImg8bit" / "val" / "ulm").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"(?s)is empty.*ulm contains: \(empty\)"):
        CityscapesDataset(tmp_path, "val")


def test_badly_named_images(cs_root: Path) -> None:
    _write(cs_root / "leftImg8bit/val/lindau/photo.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"do not follow.*photo\.png"):
        CityscapesDataset(cs_root, "val")


def test_images_in_other_formats_or_places_are_errors_not_skipped(cs_root: Path) -> None:
    """Calibration never skips data silently: a JPEG among the PNGs, a sub-folder of a city, an
    image outside any city folder each stop it with the layout; label folders keep their JSON."""
    city = cs_root / "leftImg8bit/val/lindau"
    (cs_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_polygons.json").write_text("{}")  # official
    assert len(CityscapesDataset(cs_root, "val")) == 3
    jpeg = city / "lindau_000009_000019_leftImg8bit.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DatasetLayoutError, match=r"(?s)holds 1 entries that are not PNG images.*"
                                                 r"lindau_000009_000019_leftImg8bit\.jpg.*Expected layout"):
        CityscapesDataset(cs_root, "val")
    jpeg.unlink()
    (city / "more").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"not PNG images, e\.g\. \['more/'\]"):
        CityscapesDataset(cs_root, "val")
    (city / "more").rmdir()
    _write(cs_root / "leftImg8bit/val/frankfurt_000009_000019_leftImg8bit.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"1 images lie directly in .*leftImg8bit/val, outside any city"):
        CityscapesDataset(cs_root, "val")


def test_missing_labels_folder(cs_root: Path) -> None:
    for p in sorted((cs_root / "gtFine" / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (cs_root / "gtFine" / "val").rmdir()
    with pytest.raises(DatasetLayoutError, match="gtFine/val does not exist"):
        CityscapesDataset(cs_root, "val")
    assert len(CityscapesDataset(cs_root, "val", return_labels=False)) == 3


def test_mismatched_image_and_label_counts(cs_root: Path) -> None:
    missing = cs_root / "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=r"3 images but 2 label files.*frankfurt_000001_000019_leftImg8bit"):
        CityscapesDataset(cs_root, "val")
    _write(missing, np.zeros((H, W), np.uint8))
    stray = cs_root / "gtFine/val/lindau/lindau_000009_000019_gtFine_labelIds.png"
    _write(stray, np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"1 labels have no image.*lindau_000009"):
        CityscapesDataset(cs_root, "val")


def test_corrupt_and_empty_images_are_named(cs_root: Path) -> None:
    bad = cs_root / "leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = CityscapesDataset(cs_root, "val", same_size())
    ds[0]
    with pytest.raises(ImageDecodeError, match=r"frankfurt_000001_000019_leftImg8bit\.png \(78 bytes\)"):
        ds[1]
    loader = CityscapesDataModule(cs_root, img_size=(H, W)).val_dataloader()
    with pytest.raises(ImageDecodeError, match="frankfurt_000001"):
        list(loader)  # never skipped silently
    bad.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_rgb(bad)
    with pytest.raises(ImageDecodeError, match="Cannot read image"):
        load_rgb(cs_root / "missing.png")


def test_wrong_label_files_are_rejected(cs_root: Path) -> None:
    path = cs_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    _write(path, np.full((H, W), 100, np.uint8))  # e.g. not Cityscapes ids
    with pytest.raises(ImageDecodeError, match=r"values \[100\].*labelIds"):
        CityscapesDataset(cs_root, "val", same_size())[2]
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 128
    _write(path, colour)
    with pytest.raises(ImageDecodeError, match="3 different channels"):
        load_label(path)
    grey3 = np.repeat(np.full((H, W, 1), 7, np.uint8), 3, 2)
    _write(path, grey3)
    assert load_label(path).shape == (H, W)
    _write(path, np.full((H, W), 300, np.uint16))
    with pytest.raises(ImageDecodeError, match="values above 255"):
        load_label(path)


def test_palette_labels_give_their_indices_not_the_palette_colours(cs_root: Path) -> None:
    from PIL import Image

    path = cs_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    ids = np.array(USED_IDS, np.uint8)[np.arange(W) % len(USED_IDS)][None].repeat(H, 0)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
    im.save(path)
    assert Image.open(path).mode == "P"
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 3  # what cv2 alone would have read
    assert np.array_equal(load_label(path), ids)
    item = CityscapesDataset(cs_root, "val", same_size())[2]
    assert np.array_equal(item["label"].numpy(), ID_TO_TRAIN_ID[ids])
    path.write_bytes(path.read_bytes()[:60])  # truncated palette PNG
    with pytest.raises(ImageDecodeError, match="lindau_000000_000019_gtFine_labelIds.png"):
        load_label(path)


def test_a_label_of_another_size_than_its_image_is_refused(cs_root: Path) -> None:
    path = cs_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    _write(path, np.full((W, H), 7, np.uint8))  # transposed: resizing would stretch it silently
    ds = CityscapesDataset(cs_root, "val", same_size())
    with pytest.raises(ImageDecodeError, match=rf"is {H}x{W} pixels but its image .*lindau_000000.* is {W}x{H}"):
        ds[2]
    ds[1]  # the others are fine
    _write(path, np.full((H, W), 7, np.uint8))
    assert ds[2]["label"].shape == (H, W)


def test_worker_processes_give_identical_items(cs_root: Path) -> None:
    """Per-image seeding: the anomaly of image i does not depend on loader workers or order."""
    ds = CityscapesDataset(cs_root, "val", same_size(), anomaly="random", anomaly_seed=2)
    ds[0], ds[1]  # warm internal caches before pickling
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["image"], ds[1]["image"])
    in_process = list(CityscapesDataModule(cs_root, img_size=(H, W), anomaly_seed=2).anomaly_val_dataloader())
    workers = list(CityscapesDataModule(cs_root, img_size=(H, W), anomaly_seed=2, num_workers=1)
                   .anomaly_val_dataloader())
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(in_process, workers))
    assert [a["anomaly"] for a in in_process] == [b["anomaly"] for b in workers]


def test_segmentation_quality_sees_placeholder_test_labels(cs_root: Path, tmp_path: Path) -> None:
    """lsea-calibrate measures the segmentation on test only where test labels are real."""
    from offline_calibration.segmentation_quality import has_real_labels

    assert not has_real_labels(CityscapesDataset(cs_root, "test", same_size(), return_labels=True), IGNORE_TRAIN_ID)
    assert has_real_labels(CityscapesDataset(cs_root, "val", same_size(), return_labels=True), IGNORE_TRAIN_ID)
    labelled = make_cityscapes(tmp_path / "labelled", placeholder_test=False)
    assert has_real_labels(CityscapesDataset(labelled, "test", same_size(), return_labels=True), IGNORE_TRAIN_ID)
