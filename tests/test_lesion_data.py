"""Patch sampling from lesion annotations, on synthetic images with known lesions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from convert.data.lesion_data import (
    AnnotatedImage,
    Lesion,
    PatchConfig,
    PreparedPool,
    annotated,
    augmented_patch,
    breast_mask,
    build_patch_batch,
    epoch_centres,
    extract_patch,
    lesion_centres,
    lesion_distance,
    lesions_of,
    location_targets,
    map_lesion,
    normal_centres,
    prepare_annotated,
)
from convert.data.sources import SOURCE_CBIS, SOURCE_MIAS, Record, parse_boxes, parse_mias_lesions
from convert.training.train_lesion import auc, patient_folds
from edge_birads.preprocess import PreprocessSpec


def synthetic_mammogram(size: int = 1024, breast_right: int = 600, blob: tuple[int, int] | None = None, radius: int = 30) -> np.ndarray:
    """Dark background, a mid-grey 'breast' on the left, film-label speck far right, optional bright blob."""
    image = np.full((size, size), 5, dtype=np.uint8)
    cv2.ellipse(image, (0, size // 2), (breast_right, int(size * 0.45)), 0, -90, 90, 120, -1)
    if blob is not None:
        cv2.circle(image, (blob[1], blob[0]), radius, 250, -1)
    return image


def mias_record(lesions: str, pathology_label: str = "BI-RADS 4-5") -> Record:
    return Record("mdb999.png", "mias-999", pathology_label, SOURCE_MIAS, lesions=parse_mias_lesions(lesions), extra={"abnormality": "CIRC"})


def test_mias_origin_is_bottom_left():
    (lesion,), unlocated = lesions_of(mias_record("CIRC:M:100:200:10"))
    assert (lesion.row, lesion.col) == (823.0, 100.0)
    assert lesion.half_height == lesion.half_width == 10.0
    assert lesion.malignant and not unlocated


def test_mias_findings_without_coordinates_are_flagged():
    lesions, unlocated = lesions_of(mias_record("CIRC:B:477:133:30;CALC:M:*NOTE:3*:"))
    assert unlocated
    assert len(lesions) == 1
    assert lesions[0].row == 1023 - 133 and lesions[0].col == 477 and not lesions[0].malignant
    assert lesions_of(mias_record("", "BI-RADS 1")) == ((), False)
    item = annotated(mias_record("CIRC:B:477:133:30;CALC:M:*NOTE:3*:"))
    assert (item.label, item.finding, item.unlocated_finding) == (2, "CIRC", True)


def test_cbis_boxes_top_left_origin_take_the_image_pathology():
    record = Record("x.jpg", "P_00001", "BI-RADS 4-5", SOURCE_CBIS, boxes=parse_boxes("69,402,107,82"))
    (lesion,), unlocated = lesions_of(record)
    assert (lesion.row, lesion.col) == (402 + 41, 69 + 53.5)
    assert (lesion.half_height, lesion.half_width) == (41, 53.5)
    assert lesion.malignant and not unlocated
    benign = annotated(Record("x.jpg", "P_00001", "BI-RADS 2-3", SOURCE_CBIS, boxes=parse_boxes("69,402,107,82")))
    assert benign.label == 1 and benign.finding == "MASS" and not benign.lesions[0].malignant


@pytest.mark.parametrize("crop", [False, True])
def test_mias_annotation_lands_on_the_lesion_after_prepare(tmp_path, crop):
    """A blob drawn at MIAS (x, y) must be where the mapped lesion says, through crop and resize."""
    x, y, radius = 300, 700, 40  # MIAS coordinates: row = 1023 - 700 = 323
    image = synthetic_mammogram(blob=(1023 - y, x), radius=radius)
    path = tmp_path / "mdb999.png"
    cv2.imwrite(str(path), image)
    lesions, _ = lesions_of(mias_record(f"CIRC:M:{x}:{y}:{radius}"))
    item = AnnotatedImage(path=path, patient_id="mias-999", source="mini-mias", label=2, lesions=lesions)
    spec = PreprocessSpec(height=256, width=256, crop_to_breast=crop)
    prepared, (mapped,) = prepare_annotated(item, spec)
    blob_rows, blob_cols = np.nonzero(prepared > 0.9)
    assert abs(blob_rows.mean() - mapped.row) < 1.5
    assert abs(blob_cols.mean() - mapped.col) < 1.5
    assert abs((blob_cols.max() - blob_cols.min()) / 2 - mapped.half_width) < 2.0
    if crop:  # the breast crop enlarges the breast horizontally, and the lesion with it
        assert mapped.half_width > radius * 256 / 1024 * 1.3
    # the wrong origin (row = y) would put it on the far side of the image
    assert prepared[int(round(mapped.row)), int(round(mapped.col))] > 0.9


def test_map_lesion_through_crop_box():
    lesion = Lesion(row=150.0, col=60.0, half_height=10.0, half_width=20.0, malignant=False)
    mapped = map_lesion(lesion, box=(100, 300, 50, 150), out_shape=(100, 200))
    assert mapped.row == pytest.approx((150 - 100 + 0.5) * 0.5 - 0.5)
    assert mapped.col == pytest.approx((60 - 50 + 0.5) * 2.0 - 0.5)
    assert (mapped.half_height, mapped.half_width) == (5.0, 40.0)


def test_lesion_centres_sit_on_the_lesion():
    lesion = Lesion(row=50.0, col=80.0, half_height=10.0, half_width=20.0, malignant=True)
    rng = np.random.default_rng(0)
    exact = lesion_centres(lesion, 3, rng, jitter=0.0)
    assert np.all(exact == [50.0, 80.0])
    jittered = lesion_centres(lesion, 200, rng, jitter=0.5)
    assert np.all(lesion_distance(jittered[:, 0], jittered[:, 1], lesion) <= np.sqrt(0.5))


def test_lesion_patch_is_centred_on_the_blob():
    image = synthetic_mammogram(size=256, breast_right=150, blob=(128, 60), radius=8)
    patch = extract_patch(image, 128, 60, 32)
    assert patch.shape == (32, 32)
    assert patch[16, 16] == 250 and patch[0, 0] == 120


def test_extract_patch_pads_outside_the_image():
    image = np.full((10, 10), 7, dtype=np.uint8)
    patch = extract_patch(image, 0, 0, 6)
    assert patch[:3, :].sum() == 0 and patch[:, :3].sum() == 0
    assert np.all(patch[3:, 3:] == 7)


def test_normal_centres_inside_breast_and_away_from_lesions():
    image = synthetic_mammogram(size=256, breast_right=150)
    mask = breast_mask(image.astype(np.float32) / 255.0)
    assert mask[128, 20] and not mask[128, 250] and not mask[5, 200]
    lesion = Lesion(row=128.0, col=60.0, half_height=15.0, half_width=15.0, malignant=True)
    centres = normal_centres(mask, (lesion,), 500, np.random.default_rng(1), margin_px=20.0)
    assert len(centres) == 500
    rows, cols = centres[:, 0].astype(int), centres[:, 1].astype(int)
    assert np.all(mask[rows, cols])
    distance_px = np.hypot(centres[:, 0] - 128.0, centres[:, 1] - 60.0)
    assert distance_px.min() > 15.0 + 20.0


def test_normal_centres_empty_when_lesion_covers_the_breast():
    mask = np.zeros((50, 50), dtype=bool)
    mask[20:30, 20:30] = True
    lesion = Lesion(row=25.0, col=25.0, half_height=20.0, half_width=20.0, malignant=False)
    assert normal_centres(mask, (lesion,), 10, np.random.default_rng(0), margin_px=5.0).shape == (0, 2)


def test_location_targets_label_inside_ignore_margin_normal_beyond():
    cfg = PatchConfig(margin_px=10.0, min_half_extent=4.0)
    lesion = Lesion(row=50.0, col=50.0, half_height=10.0, half_width=10.0, malignant=True)
    rows = np.array([50.0, 50.0, 50.0, 50.0])
    cols = np.array([50.0, 58.0, 65.0, 90.0])  # centre, inside, margin, far
    target, weight = location_targets((lesion,), rows, cols, cfg)
    assert target.tolist() == [2, 2, 0, 0]
    assert weight.tolist() == [1.0, 1.0, 0.0, 1.0]
    tiny = Lesion(row=50.0, col=50.0, half_height=1.0, half_width=1.0, malignant=False)
    target, _ = location_targets((tiny,), np.array([52.0]), np.array([52.0]), cfg)
    assert target.tolist() == [1]  # grown to min_half_extent, so a small lesion still owns a location


def test_augmented_patch_targets_follow_the_blob():
    """Under random rotation/flip/scale the lesion-labelled locations stay on the bright blob."""
    image = synthetic_mammogram(size=512, breast_right=300, blob=(200, 120), radius=20)
    lesion = Lesion(row=200.0, col=120.0, half_height=20.0, half_width=20.0, malignant=True)
    cfg = PatchConfig(size=96, stride=16, margin_px=8.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        centre = lesion_centres(lesion, 1, rng, jitter=0.8)[0]
        patch, target, weight = augmented_patch(image, (lesion,), centre, cfg, rng, augment=True)
        assert patch.shape == (96, 96) and target.shape == (6, 6)
        cells = patch.reshape(6, 16, 6, 16).mean(axis=(1, 3))
        assert (target == 2).any()
        normal = (target == 0) & (weight > 0)
        if normal.any():
            assert cells[target == 2].min() > cells[normal].max()


def make_pool(n_patients: int = 30) -> PreparedPool:
    images, items, lesions = [], [], []
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        source = "mini-mias" if p % 3 == 0 else "cbis-ddsm-mass"
        for view in range(2):
            label = int(rng.integers(0, 3)) if source == "mini-mias" else int(rng.integers(1, 3))
            blob = (200, 120) if label else None
            images.append(synthetic_mammogram(size=512, breast_right=300, blob=blob, radius=20))
            items.append(AnnotatedImage(path=None, patient_id=f"p{p}", source=source, label=label))
            lesions.append((Lesion(200.0, 120.0, 20.0, 20.0, label == 2),) if label else ())
    return PreparedPool(PreprocessSpec(height=512, width=512), np.stack(images), items, lesions)


def test_epoch_patches_balanced_kinds_and_shapes():
    pool = make_pool(6)
    cfg = PatchConfig(size=64, stride=16, per_lesion_mias=5, per_lesion_cbis=2, normal_per_mias_normal=7, normal_per_mias_lesion=3, normal_per_cbis=1, anywhere_per_image=1)
    pairs = epoch_centres(pool, range(len(pool.items)), cfg, np.random.default_rng(0))
    expected = 0
    for item, ls in zip(pool.items, pool.lesions):
        mias = item.source == "mini-mias"
        expected += len(ls) * (5 if mias else 2) + (7 if mias and item.label == 0 else 3 if mias else 1) + 1
    assert len(pairs) == expected
    x, y, w = build_patch_batch(pool, pairs, cfg, np.random.default_rng(0))
    assert x.shape == (expected, 64, 64, 1) and y.shape == (expected, 4, 4) and w.shape == y.shape
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_patient_folds_never_split_a_patient():
    pool = make_pool(30)
    folds = patient_folds(pool, 5, seed=0)
    by_patient = {}
    for item, fold in zip(pool.items, folds):
        by_patient.setdefault(item.patient_id, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values())
    assert set(folds.tolist()) == set(range(5))


def test_auc_against_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    # positives 0.9, 0.7, 0.4 vs negatives 0.8, 0.6, 0.5: pairs won 3 + 2 + 0 = 5 of 9
    assert auc(scores, positive) == pytest.approx(5 / 9)
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(auc(scores, np.zeros(6, bool)))


def test_hard_negatives_are_the_top_scoring_locations_away_from_lesions():
    from convert.data.lesion_data import hard_negative_centres

    cfg = PatchConfig(stride=16, margin_px=8.0, min_half_extent=4.0)
    maps = np.zeros((8, 8, 2), dtype=np.float32)
    maps[2, 2, 1] = 9.0  # on the lesion: a true positive, never mined
    maps[6, 5, 0] = 5.0  # false positive far from it
    maps[0, 7, 1] = 3.0  # weaker false positive
    lesion = Lesion(row=2 * 16 + 7.5, col=2 * 16 + 7.5, half_height=10.0, half_width=10.0, malignant=True)
    centres = hard_negative_centres(maps, (lesion,), cfg, top_k=2, rng=np.random.default_rng(0))
    assert centres.shape == (2, 2)
    expected = np.array([[6 * 16 + 7.5, 5 * 16 + 7.5], [0 * 16 + 7.5, 7 * 16 + 7.5]])
    assert np.all(np.abs(centres - expected) <= 4.0)


def _lesions_brighter_than_surroundings(items, spec) -> float:
    """Fraction of annotated lesions whose mean intensity beats the ring around them (1.5-2.5 radii)."""
    wins = total = 0
    for item in items:
        image, lesions = prepare_annotated(item, spec)
        rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
        for lesion in lesions:
            distance = lesion_distance(rows, cols, lesion)
            inside, ring = image[distance <= 1.0], image[(distance > 1.5) & (distance <= 2.5)]
            if inside.size and ring.size:
                total += 1
                wins += inside.mean() > ring.mean()
    return wins / total


@pytest.mark.parametrize("source", ["mini-mias", "cbis-ddsm-mass"])
def test_real_annotations_land_on_the_lesions(source):
    """On the real pools, masses are denser than their surroundings: ~97% of mapped annotations are
    brighter than the ring around them (a wrong origin, e.g. MIAS y read top-down, gives ~60%)."""
    from convert.data.lesion_data import load_cbis, load_mias
    from convert.data.sources import data_root

    folder = data_root() / source
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is absent (set EDGE_BIRADS_DATA to the shared data folder)")
    items = load_mias() if source == "mini-mias" else load_cbis()[:150]
    items = [item for item in items if item.lesions]
    fraction = _lesions_brighter_than_surroundings(items, PreprocessSpec(height=512, width=256, crop_to_breast=True))
    assert fraction > 0.9
