"""Evaluation metrics as pure numpy functions (tested against hand-computed values).

The paper's Table 2 form (per class: precision, recall = sensitivity,
specificity, F1, support), the malignant-vs-rest ROC AUC with a bootstrap
interval, and the referral operating point. Undefined ratios (0/0) are
reported as None rather than 0, so "never predicted" is not mistaken for
"always wrong".
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class_report(matrix: np.ndarray, labels: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """Precision, recall, sensitivity, specificity, F1 and support per class (one-vs-rest)."""
    total = int(matrix.sum())
    report = {}
    for i, label in enumerate(labels):
        tp = int(matrix[i, i])
        fn = int(matrix[i, :].sum()) - tp
        fp = int(matrix[:, i].sum()) - tp
        tn = total - tp - fn - fp
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        report[label] = {
            "precision": precision,
            "recall": recall,
            "sensitivity": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": f1,
            "support": tp + fn,
        }
    return report


def roc_auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); None if one class is absent.

    Vectorised midranks, because the patient bootstrap calls it thousands of times per row.
    """
    y = np.asarray(y_binary, bool)
    s = np.asarray(scores, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Tied scores share the mean of the ranks they span: last rank of the group minus (count - 1) / 2.
    midrank = np.cumsum(counts) - (counts - 1) / 2.0
    u = midrank[inverse.ravel()][y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_indices(n_items: int, n_boot: int, seed: int = 0, groups: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Seeded bootstrap resamples of ``n_items`` items, as index arrays.

    With ``groups`` (patient ids, one per item) whole patients are drawn with
    replacement, because one woman's images are not independent; without,
    single items are. One resampler for every interval, so AUC and rate
    intervals of the same run resample the same way.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n_items, n_items)
        return
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.nonzero(inverse == g)[0] for g in range(inverse.max() + 1)]
    for _ in range(n_boot):
        yield np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])


def bootstrap_auc_ci(
    y_binary: np.ndarray,
    scores: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the AUC (seeded; by patient with ``groups``, see ``bootstrap_indices``).

    Resamples that lack a class are skipped.
    """
    y = np.asarray(y_binary, bool)
    s = np.asarray(scores, np.float64)
    if y.sum() == 0 or (~y).sum() == 0:
        return None
    values = []
    for idx in bootstrap_indices(len(y), n_boot, seed, groups):
        auc = roc_auc(y[idx], s[idx])
        if auc is not None:
            values.append(auc)
    if not values:
        return None
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def sensitivity_specificity(y_binary: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """Referral when score >= threshold: (sensitivity, specificity)."""
    y = np.asarray(y_binary, bool)
    flagged = np.asarray(scores, np.float64) >= threshold
    return _ratio(int((flagged & y).sum()), int(y.sum())), _ratio(int((~flagged & ~y).sum()), int((~y).sum()))


def threshold_for_sensitivity(y_binary: np.ndarray, scores: np.ndarray, target: float = 0.9) -> float:
    """The LARGEST threshold whose sensitivity (score >= t) is at least ``target``.

    Largest, because among thresholds that catch enough malignant images it
    refers the fewest others (best specificity). It is the score of the
    ceil(target * n_pos)-th highest-scoring positive. Chosen on validation
    data only; with no positives it returns 0.0 (refer everything).
    """
    y = np.asarray(y_binary, bool)
    positives = np.sort(np.asarray(scores, np.float64)[y])[::-1]
    if len(positives) == 0:
        return 0.0
    k = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[k - 1])


def sensitivity_at_specificity(y_binary: np.ndarray, scores: np.ndarray, specificity: float = 0.7) -> float | None:
    """Sensitivity at the lowest threshold whose specificity (score < t counts as negative) is >= ``specificity``.

    A point read off the test ROC curve, not an operating point (its threshold
    is chosen on the very images it is measured on); it answers "could any
    threshold give >= 85% sensitivity at >= 70% specificity here?", which is
    how issue 6 states its target, and ranks models at that point.
    """
    y = np.asarray(y_binary, bool)
    s = np.asarray(scores, np.float64)
    if not y.any() or y.all():
        return None
    for t in np.append(np.unique(s), np.inf):
        if (s[~y] < t).mean() >= specificity - 1e-12:
            return float((s[y] >= t).mean())
    return None  # pragma: no cover - t = inf always reaches specificity 1


def evaluate_probabilities(
    probs: np.ndarray,
    y_true: np.ndarray,
    labels: list[str] | tuple[str, ...],
    malignant_labels: list[str] | tuple[str, ...],
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything the model card reports for one set of images.

    ``malignant_labels`` may name several classes (the paper's BI-RADS 4 and
    5); the malignancy score is their summed probability.
    """
    probs = np.asarray(probs, np.float64)
    y_true = np.asarray(y_true, int)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    malignant_idx = [labels.index(name) for name in malignant_labels]
    score = probs[:, malignant_idx].sum(axis=1) if len(probs) else np.zeros(0)
    positive = np.isin(y_true, malignant_idx)
    auc = roc_auc(positive, score)
    result = {
        "n_images": int(len(y_true)),
        "accuracy": _ratio(int(np.trace(matrix)), int(matrix.sum())),
        "per_class": per_class_report(matrix, labels),
        "confusion_matrix": matrix.tolist(),
        "malignant_vs_rest": {
            "positives": int(positive.sum()),
            "negatives": int((~positive).sum()),
            "auc": auc,
            "auc_ci95": bootstrap_auc_ci(positive, score, n_boot=n_boot, seed=seed) if auc is not None else None,
        },
    }
    if threshold is not None:
        sens, spec = sensitivity_specificity(positive, score, threshold)
        result["referral"] = {"threshold": threshold, "sensitivity": sens, "specificity": spec}
    return result
