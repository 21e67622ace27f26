"""The fold protocol stands on its own, and draws exactly the folds the ablation drew before it did.

The reference below is the fold code as it stood inside ``convert.training.train_lesion``
(commit 5325756), copied verbatim: every archived row's predictions were made on
those folds, so the protocol's must be the same patients, fold by fold.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields

import numpy as np
import pytest

from convert.data.lesion_data import AnnotatedImage, PreparedPool
from convert.data.split import FoldProtocol, fold_split, kfold_by_patient
from edge_birads.preprocess import PreprocessSpec


# ---- the reference: convert/training/train_lesion.py at 5325756 (patient_folds, validation_split, fold_split)
def old_patient_folds(pool, k, seed):
    items = pool.items
    return kfold_by_patient([f"{it.source}/{it.patient_id}" for it in items], [it.source for it in items], [it.label for it in items], k, seed)


def old_validation_split(pool, indices, fraction, seed):
    sub = PreparedPool(pool.spec, pool.images, [pool.items[i] for i in indices], [pool.lesions[i] for i in indices])
    k = max(2, int(round(1.0 / fraction)))
    folds = old_patient_folds(sub, k, seed + 1000)
    return indices[folds != 0], indices[folds == 0]


def old_fold_split(pool, cfg, fold):
    folds = old_patient_folds(pool, cfg.folds, cfg.seed)
    test_idx = np.nonzero(folds == fold)[0]
    train_idx, val_idx = old_validation_split(pool, np.nonzero(folds != fold)[0], cfg.validation_fraction, cfg.seed + fold)
    return train_idx, val_idx, test_idx


def pool_of(items) -> PreparedPool:
    return PreparedPool(PreprocessSpec(height=4, width=4), np.zeros((len(items), 4, 4), np.uint8), list(items), [()] * len(items))


def synthetic_items(patients: int = 300, seed: int = 0) -> list[AnnotatedImage]:
    """Two sources (one without normals, as CBIS), 1-4 views per patient, colliding patient codes across sources."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(patients):
        source = "mini-mias" if p % 3 == 0 else "cbis-ddsm-mass"
        worst = int(rng.choice(3, p=[0.5, 0.3, 0.2])) if source == "mini-mias" else int(rng.choice([1, 2]))
        for view in range(int(rng.integers(1, 5))):
            label = worst if view == 0 else int(rng.integers(0 if source == "mini-mias" else 1, worst + 1))
            items.append(AnnotatedImage(path=None, patient_id=f"P{p % 120:03d}", source=source, label=label))
    order = rng.permutation(len(items))  # images of a patient are not contiguous
    return [items[i] for i in order]


def splits(pool, protocol, split) -> list[tuple[list[int], list[int], list[int]]]:
    return [tuple(part.tolist() for part in split(pool, protocol, fold)) for fold in range(protocol.folds)]


def test_the_protocol_is_four_frozen_fields_with_the_ablation_defaults():
    protocol = FoldProtocol()
    assert [f.name for f in fields(FoldProtocol)] == ["folds", "seed", "validation_fraction", "referral_sensitivity"]
    assert (protocol.folds, protocol.seed, protocol.validation_fraction, protocol.referral_sensitivity) == (5, 0, 0.125, 0.9)
    with pytest.raises(AttributeError):
        protocol.folds = 3  # frozen
    # the lesion FCN's own cross-validation (build of an FCN row) draws its folds through the protocol too
    from convert.training.train_lesion import TrainConfig

    assert TrainConfig(folds=3, seed=2, validation_fraction=0.25).protocol() == FoldProtocol(3, 2, 0.25, 0.9)


@pytest.mark.parametrize("protocol", [FoldProtocol(), FoldProtocol(folds=3, validation_fraction=0.25), FoldProtocol(seed=7)])
def test_folds_are_the_old_ones_on_a_synthetic_pool(protocol):
    pool = pool_of(synthetic_items())
    new, old = splits(pool, protocol, fold_split), splits(pool, protocol, old_fold_split)
    assert new == old
    # and they are folds: every image tested once, no patient on two sides
    assert sorted(i for _, _, test in new for i in test) == list(range(len(pool.items)))
    key = lambda i: (pool.items[i].source, pool.items[i].patient_id)  # noqa: E731
    for train, val, test in new:
        assert not {key(i) for i in test} & {key(i) for i in train + val} and not {key(i) for i in train} & {key(i) for i in val}


# sha256 of the real pool's folds (every image's source/patient, fold and part) under FoldProtocol(), as drawn at 5325756.
REAL_FOLDS_SHA256 = "e1290de515cfc3bdba1d550fdd05d63b32cb5be38aefcde70a73583cde678e2f"


def fold_fingerprint(pool, protocol) -> str:
    lines = []
    for fold, parts in enumerate(splits(pool, protocol, fold_split)):
        for name, part in zip(("train", "val", "test"), parts):
            lines += [f"{fold} {name} {pool.items[i].source}/{pool.items[i].patient_id}/{pool.items[i].path.name}" for i in part]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_folds_are_the_old_ones_on_the_real_pool():
    from convert.data.lesion_data import load_cbis, load_mias
    from convert.data.sources import data_root

    root = data_root()
    if not ((root / "mini-mias" / "labels.csv").is_file() and (root / "cbis-ddsm-mass" / "labels.csv").is_file()):
        pytest.skip(f"real pools not found under {root} (../shared/data or $EDGE_BIRADS_DATA): the fold check on real patient ids needs them")
    pool = pool_of(load_mias() + load_cbis())  # patient ids and labels only: no pixels are read
    protocol = FoldProtocol()
    assert splits(pool, protocol, fold_split) == splits(pool, protocol, old_fold_split)
    assert fold_fingerprint(pool, protocol) == REAL_FOLDS_SHA256


def test_archived_rows_were_scored_on_the_protocol_s_folds():
    """Every archived row's per-fold predictions (docs/results) hold exactly the protocol's test and validation images."""
    from convert.data.lesion_data import load_cbis, load_mias
    from convert.data.sources import data_root
    from convert.training.pretrained import RESULTS

    root = data_root()
    if not ((root / "mini-mias" / "labels.csv").is_file() and (root / "cbis-ddsm-mass" / "labels.csv").is_file()):
        pytest.skip(f"real pools not found under {root} (../shared/data or $EDGE_BIRADS_DATA): the archived folds index them")
    pool = pool_of(load_mias() + load_cbis())
    protocol = FoldProtocol()
    saved = sorted(RESULTS.glob("*/fold*_int8.npz"))
    assert saved, "no archived row"
    for path in saved:
        fold = int(path.name[len("fold") : -len("_int8.npz")])
        _, val_idx, test_idx = fold_split(pool, protocol, fold)
        data = np.load(path)
        assert data["test_idx"].tolist() == test_idx.tolist(), path
        assert data["val_idx"].tolist() == val_idx.tolist(), path
