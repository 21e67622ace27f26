"""k-fold cross-validation by patient: the figures an ablation table is built from.

With a few hundred patients one hold-out split gives wide, lucky-or-unlucky
numbers; k folds give a mean and a spread. In each fold the training
patients are split again (by patient) into fit and validation parts; the
referral threshold is chosen on that validation part and applied to the
held-out fold, as in the shipped model. Float Keras outputs are used here
(the int8 parity is checked when a configuration is shipped).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from convert.metrics import evaluate_probabilities, sensitivity_specificity, threshold_for_sensitivity
from convert.split import Split, kfold_by_patient, split_by_patient
from convert.train import RunData, TrainConfig, configure_tensorflow, make_batches, prepare_run_data

log = logging.getLogger("convert.crossval")


def fold_data(data: RunData, train_idx: tuple[int, ...], held_idx: tuple[int, ...], config: TrainConfig, fold: int) -> RunData:
    """A RunData whose test part is the held-out fold and whose val part comes from the training patients."""
    sub = [data.records[i] for i in train_idx]
    inner = split_by_patient(sub, seed=config.seed + fold, test_fraction=config.val_fraction, val_fraction=0.0)
    split = Split(
        train=tuple(train_idx[i] for i in inner.train + inner.val),
        val=tuple(train_idx[i] for i in inner.test),
        test=tuple(held_idx),
        seed=config.seed,
    )
    return replace(data, split=split)


def summarise_folds(folds: list[dict]) -> dict:
    """Mean and standard deviation of every numeric fold figure."""
    keys = sorted({k for f in folds for k, v in f.items() if isinstance(v, (int, float)) and k != "fold"})
    summary = {}
    for key in keys:
        values = np.array([f[key] for f in folds if f.get(key) is not None], np.float64)
        if len(values):
            summary[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": int(len(values))}
    return summary


def cross_validate(config: TrainConfig, k: int, out_dir: str | Path) -> dict:
    """Train ``k`` models (one per fold) and report malignant-vs-rest figures per fold and overall."""
    from convert.export import keras_predict
    from convert.models import build_paper_cnn, compile_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_tensorflow(config.threads, config.seed)
    data = prepare_run_data(config, synthetic_dir=out_dir / "synthetic-images")
    malignant = data.malignant_labels()
    m_idx = [data.labels.index(m) for m in malignant]
    folds = []
    for fold, (train_idx, held_idx) in enumerate(kfold_by_patient(data.records, k=k, seed=config.seed)):
        started = time.perf_counter()
        fd = fold_data(data, train_idx, held_idx, config, fold)
        x_tr, y_tr, _ = fd.part("train")
        x_val, y_val, _ = fd.part("val")
        x_te, y_te, r_te = fd.part("test")
        model = build_paper_cnn(len(data.labels), config.image_size, head=config.head, seed=config.seed + fold)
        compile_model(model, config.loss, config.learning_rate, config.focal_gamma, config.focal_alpha)
        model.fit(make_batches(x_tr, y_tr, len(data.labels), replace(config, seed=config.seed + fold)), epochs=config.epochs, verbose=0)
        p_val, p_te = keras_predict(model, x_val), keras_predict(model, x_te)
        score_val, score_te = p_val[:, m_idx].sum(1), p_te[:, m_idx].sum(1)
        threshold = threshold_for_sensitivity(np.isin(y_val, m_idx), score_val, config.referral_sensitivity)
        sens, spec = sensitivity_specificity(np.isin(y_te, m_idx), score_te, threshold)
        entry = {"fold": fold, "threshold": threshold, "test_sensitivity": sens, "test_specificity": spec}
        pooled = evaluate_probabilities(p_te, y_te, data.labels, malignant, threshold, n_boot=0)
        entry["auc_pooled"] = pooled["malignant_vs_rest"]["auc"]
        for label, m in pooled["per_class"].items():
            entry[f"recall {label}"] = m["recall"]
        for source in sorted({r.source for r in r_te}):
            mask = np.array([r.source == source for r in r_te])
            per = evaluate_probabilities(p_te[mask], y_te[mask], data.labels, malignant, threshold, n_boot=0)
            entry[f"auc {source}"] = per["malignant_vs_rest"]["auc"]
            entry[f"sensitivity {source}"] = per["referral"]["sensitivity"]
            entry[f"specificity {source}"] = per["referral"]["specificity"]
        entry["seconds"] = round(time.perf_counter() - started, 1)
        folds.append(entry)
        log.info("fold %d/%d: %s", fold + 1, k, {key: (round(v, 3) if isinstance(v, float) else v) for key, v in entry.items()})
    result = {"config": config.to_dict(), "k": k, "folds": folds, "summary": summarise_folds(folds)}
    (out_dir / "cv.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# {k}-fold cross-validation by patient: {config.name}", "", "| figure | mean | sd | folds |", "| --- | --- | --- | --- |"]
    lines += [f"| {key} | {v['mean']:.3f} | {v['sd']:.3f} | {v['n']} |" for key, v in result["summary"].items() if key != "seconds"]
    (out_dir / "cv.md").write_text("\n".join(lines) + "\n")
    return result
