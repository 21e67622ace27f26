"""Out-of-fold ensembles of ablation rows: does the paper CNN's whole-image view add to the lesion FCN's?

Why: the two networks look at different things (the paper CNN at the whole
224x224 image, the FCN at lesion-sized patches of the breast crop), and in
cross-validation each is better on a different source. Their int8
malignancy outputs on the SAME patient folds can be combined without any
retraining: per fold, each member's logit of P(malignant) is standardised
with the mean and spread of its own validation outputs, the standardised
logits are averaged (equal weights: the validation folds hold 4-5 MIAS
malignancies, too few to fit weights), and the referral threshold is chosen
on validation like every other row. The result is a row with a malignancy
score only (no per-class figures) in the layout ``collect_cv`` reads.

This measures whether combining is worth building into one shippable model;
it is not itself a model the runtime can load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from convert.data.lesion_data import PreparedPool
from convert.data.split import FoldProtocol, fold_split
from convert.evaluation.metrics import threshold_for_sensitivity
from convert.training.train_lesion import collect_cv


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1.0 - 1e-4)  # an int8 output step is 1/256
    return np.log(p / (1.0 - p))


def combine(val_scores: list[np.ndarray], test_scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average of the members' logits, each standardised by its validation mean and sd; mapped to (0, 1)."""
    val_z, test_z = [], []
    for val, test in zip(val_scores, test_scores):
        lv, lt = logit(val), logit(test)
        mean, sd = lv.mean(), lv.std() or 1.0
        val_z.append((lv - mean) / sd)
        test_z.append((lt - mean) / sd)
    squash = lambda z: 1.0 / (1.0 + np.exp(-np.mean(z, axis=0)))  # noqa: E731
    return squash(val_z), squash(test_z)


def member_outputs(run: Path, pool: PreparedPool, folds: FoldProtocol, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(val_idx, val P(malignant), test_idx, test P(malignant)) of one row's int8 fold model.

    Rows written before validation outputs were kept get them now by running
    the fold's saved .tflite over its validation images (cached beside it).
    """
    saved = np.load(run / f"fold{fold}_int8.npz")
    _, val_idx, test_idx = fold_split(pool, folds, fold)
    if not np.array_equal(saved["test_idx"], test_idx):
        raise ValueError(f"{run}: fold {fold} holds other patients than the ablation's fold")
    if "val_probs" in saved.files:
        val_probs = saved["val_probs"]
    else:
        cache = run / f"fold{fold}_int8_val.npy"
        if not cache.exists():
            from convert.evaluation.lesion_export import run_int8

            np.save(cache, run_int8((run / f"fold{fold}.tflite").read_bytes(), pool, val_idx))
        val_probs = np.load(cache)
    return val_idx, val_probs[:, 2], test_idx, saved["probs"][:, 2]


def ensemble_cv(members: dict[str, tuple[Path, PreparedPool, FoldProtocol]], out_dir: Path, protocol: FoldProtocol = FoldProtocol()) -> dict:
    """Write the ensemble's fold{k}_int8.npz files and return its out-of-fold metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({"members": list(members), "combination": "mean of validation-standardised logits"}, indent=1))
    folds = protocol
    pool = next(iter(members.values()))[1]  # every member's pool holds the same images in the same order
    for fold in range(folds.folds):
        outputs = {}
        for name, (run, member_pool, member_folds) in members.items():
            if (run / f"fold{fold}_int8.npz").exists():
                outputs[name] = member_outputs(run, member_pool, member_folds, fold)
        if len(outputs) < len(members):
            continue
        (val_idx, _, test_idx, _), *_ = outputs.values()
        val, test = combine([o[1] for o in outputs.values()], [o[3] for o in outputs.values()])
        val_malignant = np.array([pool.items[i].label == 2 for i in val_idx])
        threshold = threshold_for_sensitivity(val_malignant, val, protocol.referral_sensitivity)
        np.savez(out_dir / f"fold{fold}_int8.npz", test_idx=test_idx, probs=test[:, None], threshold=threshold, val_idx=val_idx,
                 val_probs=val[:, None])
    return collect_cv(pool, out_dir, folds, suffix="_int8")  # {} while no fold of every member has finished
