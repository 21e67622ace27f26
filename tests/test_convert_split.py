"""Patient-level splits: no patient on two sides, the paper's proportions, seeded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from convert.data import sources as D
from convert.data.split import kfold_by_patient, patient_strata, split_by_patient


def make_records(n_patients: int = 400, seed: int = 0) -> list[D.Record]:
    """Two sources, 1-4 images per patient, labels skewed like the real pools (no pixels needed)."""
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        source = "a" if p % 3 else "b"
        label = D.GROUP_LABELS[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        for view in range(int(rng.integers(1, 5))):
            # A patient's second image can be less severe (worst label decides the stratum).
            image_label = label if view == 0 else D.GROUP_LABELS[min(D.GROUP_LABELS.index(label), int(rng.integers(0, 3)))]
            records.append(D.Record(f"{source}/{p}/{view}.png", f"{source}-{p:04d}", image_label, source))
    return records


def test_no_patient_on_two_sides_and_every_image_once() -> None:
    records = make_records()
    split = split_by_patient(records, seed=0)
    train, val, test = (split.patients(records, part) for part in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert sorted(split.train + split.val + split.test) == list(range(len(records)))


def test_paper_proportions_per_stratum() -> None:
    records = make_records(1000)
    split = split_by_patient(records, seed=0)
    n_patients = len({r.patient_id for r in records})
    n_test = len(split.patients(records, "test"))
    n_val = len(split.patients(records, "val"))
    assert abs(n_test / n_patients - 0.2) < 0.01
    assert abs(n_val / (n_patients - n_test) - 0.125) < 0.01
    strata = patient_strata(records)
    test_patients = split.patients(records, "test")
    for stratum, count in Counter(strata.values()).items():
        in_test = sum(1 for p, s in strata.items() if s == stratum and p in test_patients)
        assert abs(in_test - 0.2 * count) <= 1, stratum


def test_split_is_seeded() -> None:
    records = make_records()
    assert split_by_patient(records, seed=3) == split_by_patient(records, seed=3)
    assert split_by_patient(records, seed=3).test != split_by_patient(records, seed=4).test


def test_stratum_is_the_patients_worst_label() -> None:
    records = [
        D.Record("x1", "p1", "BI-RADS 1", "s"),
        D.Record("x2", "p1", "BI-RADS 4-5", "s"),
        D.Record("x3", "p2", "BI-RADS 2-3", "t"),
    ]
    assert patient_strata(records) == {"p1": "s|BI-RADS 4-5", "p2": "t|BI-RADS 2-3"}


def fold_keys(records: list[D.Record]) -> tuple[list[str], list[str], list[int]]:
    return [r.patient_id for r in records], [r.source for r in records], [D.GROUP_LABELS.index(r.label) for r in records]


def test_kfold_holds_each_patient_out_exactly_once_and_keeps_the_strata() -> None:
    records = make_records(300)
    folds = kfold_by_patient(*fold_keys(records), k=5, seed=1)
    fold_of: dict[str, set[int]] = {}
    for record, fold in zip(records, folds):
        fold_of.setdefault(record.patient_id, set()).add(int(fold))
    assert all(len(f) == 1 for f in fold_of.values()) and len(fold_of) == 300
    sizes = Counter(next(iter(f)) for f in fold_of.values())
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 1
    # every stratum (source, worst label) is dealt across the folds: at most one patient apart
    strata = patient_strata(records)
    for stratum in set(strata.values()):
        per_fold = Counter(next(iter(fold_of[p])) for p, s in strata.items() if s == stratum)
        counts = [per_fold.get(f, 0) for f in range(5)]
        assert max(counts) - min(counts) <= 1, stratum


def test_kfold_is_seeded_and_checks_its_arguments() -> None:
    keys = fold_keys(make_records(100))
    assert (kfold_by_patient(*keys, k=4, seed=2) == kfold_by_patient(*keys, k=4, seed=2)).all()
    assert (kfold_by_patient(*keys, k=4, seed=2) != kfold_by_patient(*keys, k=4, seed=3)).any()
    with pytest.raises(ValueError, match="k >= 2"):
        kfold_by_patient(*keys, k=1)
    with pytest.raises(ValueError, match="one entry per image"):
        kfold_by_patient(keys[0], keys[1][:-1], keys[2])


@pytest.mark.skipif(
    not (D.data_root() / "cbis-ddsm-mass" / "labels.csv").is_file() or not (D.data_root() / "mini-mias" / "labels.csv").is_file(),
    reason=f"shared data not found under {D.data_root()} (set EDGE_BIRADS_DATA)",
)
def test_real_pools_split_by_woman() -> None:
    records = D.load_mias() + D.load_cbis_masses()
    split = split_by_patient(records, seed=0)
    parts = [split.patients(records, part) for part in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    # MIAS numbers images in left/right pairs of one woman: both always on the same side.
    side = {}
    for part, patients in zip(("train", "val", "test"), parts):
        for p in patients:
            side[p] = part
    for r in records:
        if r.source == "mini-mias":
            assert side[r.patient_id] == side[D.patient_from_name(Path(r.path).name)]
    for part in ("val", "test"):
        sources = {records[i].source for i in getattr(split, part)}
        assert sources == {"mini-mias", "cbis-ddsm-mass"}
