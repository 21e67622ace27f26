"""Patient-level splits: hold-out (the paper's proportions) and k-fold.

The two views and two breasts of one woman look alike; if they fall on both
sides of a split, test scores measure memory, not generalisation. So every
function here assigns whole patients, never single images. Stratification
is by (source, patient's worst label) so each split keeps the mix of sources
and classes (the paper stratified by class).

Pure functions of (records, seed): no TensorFlow, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convert.data.sources import Record, labels_for

TEST_FRACTION = 0.2  # the paper: 20% for testing
VAL_FRACTION = 0.125  # the paper: 12.5% of the remaining 80% for validation


@dataclass(frozen=True)
class FoldProtocol:
    """How a cross-validation draws and scores its folds, whatever the architecture.

    ``folds`` patient-level folds drawn with ``seed``; within each fold's
    training patients ``validation_fraction`` are held out (they choose the
    epoch and the referral threshold); the threshold keeps
    ``referral_sensitivity`` of the validation malignancies. Every
    cross-validation (paper CNN, lesion FCN, pretrained, ensembles) takes one
    of these, so rows of the ablation hold the same women fold by fold.
    """

    folds: int = 5
    seed: int = 0
    validation_fraction: float = VAL_FRACTION
    referral_sensitivity: float = 0.9


@dataclass(frozen=True)
class Split:
    """Indices into the record list for each part, and the patients behind them."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    seed: int

    def patients(self, records: list[Record], part: str) -> set[str]:
        return {records[i].patient_id for i in getattr(self, part)}


def patient_strata(records: list[Record]) -> dict[str, str]:
    """Patient -> stratum "source|worst label" (worst = last in the class order)."""
    order = {label: i for i, label in enumerate(labels_for(records))}
    worst: dict[str, tuple[int, str]] = {}
    for record in records:
        rank = order[record.label]
        if record.patient_id not in worst or rank > worst[record.patient_id][0]:
            worst[record.patient_id] = (rank, f"{record.source}|{record.label}")
    return {patient: stratum for patient, (_, stratum) in worst.items()}


def _strata_groups(records: list[Record], seed: int) -> list[list[str]]:
    """Patients grouped by stratum, each group shuffled with ``seed``."""
    strata = patient_strata(records)
    rng = np.random.default_rng(seed)
    groups = []
    for stratum in sorted(set(strata.values())):
        patients = sorted(p for p, s in strata.items() if s == stratum)
        rng.shuffle(patients)
        groups.append(patients)
    return groups


def _take(patients: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Split off round(fraction * n) patients, at least one when the group has two or more."""
    n = len(patients)
    k = int(round(fraction * n))
    if k == 0 and n >= 2 and fraction > 0:
        k = 1
    return patients[:k], patients[k:]


def split_by_patient(
    records: list[Record], seed: int = 0, test_fraction: float = TEST_FRACTION, val_fraction: float = VAL_FRACTION
) -> Split:
    """Hold-out split: ``test_fraction`` of patients to test, then ``val_fraction`` of the rest to validation."""
    test_p: set[str] = set()
    val_p: set[str] = set()
    for group in _strata_groups(records, seed):
        test, rest = _take(group, test_fraction)
        val, _ = _take(rest, val_fraction)
        test_p.update(test)
        val_p.update(val)
    train, val, test = [], [], []
    for i, record in enumerate(records):
        if record.patient_id in test_p:
            test.append(i)
        elif record.patient_id in val_p:
            val.append(i)
        else:
            train.append(i)
    return Split(tuple(train), tuple(val), tuple(test), seed)


def kfold_by_patient(patients: Sequence[str], sources: Sequence[str], ranks: Sequence[int], k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) per image; all images of a patient share one fold.

    ``patients``, ``sources`` and ``ranks`` are per image (rank: the label's
    index in the class order, so a patient's worst label is the largest).
    Patients are stratified by (source, worst label): within each stratum,
    in sorted order, they are shuffled with one generator seeded by ``seed``
    and dealt round-robin, starting where the previous stratum stopped, so
    every fold holds each source's normals, benigns and malignants and the
    folds differ in size by at most about one patient per stratum. The
    paper CNN rows and the lesion FCN rows of the ablation use this one
    function, so their folds are the same women.
    """
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    if not len(patients) == len(sources) == len(ranks):
        raise ValueError("patients, sources and ranks must have one entry per image")
    members: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        members.setdefault(patient, []).append(index)
    strata: dict[tuple[str, int], list[list[int]]] = {}
    for indices in members.values():
        worst = max(ranks[i] for i in indices)
        strata.setdefault((sources[indices[0]], worst), []).append(indices)
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(patients), dtype=np.int64)
    offset = 0
    for key in sorted(strata):
        group = strata[key]
        for rank, p in enumerate(rng.permutation(len(group))):
            folds[group[p]] = (rank + offset) % k
        offset += len(group)
    return folds


# ---------------------------------------------------------------- folds of a prepared pool
# ``pool`` is anything with ``items`` (``convert.data.lesion_data.PreparedPool``): each item has source, patient_id and label (class index).


def _item_folds(items: Sequence, k: int, seed: int) -> np.ndarray:
    return kfold_by_patient([f"{it.source}/{it.patient_id}" for it in items], [it.source for it in items], [it.label for it in items], k, seed)


def patient_folds(pool, k: int, seed: int) -> np.ndarray:
    """Fold number per image (``kfold_by_patient``: a patient's images share a fold).

    Patients are keyed by source too (patient codes of different sources may
    collide) and stratified within each source by their worst label, so every
    fold holds each source's normals, benigns and malignants.
    """
    return _item_folds(pool.items, k, seed)


def validation_split(pool, indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` by patient into train / validation, stratified as above."""
    k = max(2, int(round(1.0 / fraction)))
    folds = _item_folds([pool.items[i] for i in indices], k, seed + 1000)
    return indices[folds != 0], indices[folds == 0]


def fold_split(pool, protocol: FoldProtocol, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) image indices of ``fold`` under ``protocol``."""
    folds = patient_folds(pool, protocol.folds, protocol.seed)
    test_idx = np.nonzero(folds == fold)[0]
    train_idx, val_idx = validation_split(pool, np.nonzero(folds != fold)[0], protocol.validation_fraction, protocol.seed + fold)
    return train_idx, val_idx, test_idx
