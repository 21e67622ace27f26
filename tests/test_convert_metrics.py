"""Metric functions against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convert.evaluation.metrics import (
    bootstrap_auc_ci,
    confusion_matrix,
    evaluate_probabilities,
    per_class_report,
    roc_auc,
    sensitivity_at_specificity,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from convert.training.train import balanced_class_weights, epoch_order

LABELS = ("A", "B", "C")


def test_confusion_matrix_and_per_class_report() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 1]
    matrix = confusion_matrix(np.array(y_true), np.array(y_pred), 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 1, 3]]
    report = per_class_report(matrix, LABELS)
    # Class A: TP 2, FN 1, FP 1, TN 6.
    assert report["A"]["precision"] == pytest.approx(2 / 3)
    assert report["A"]["recall"] == report["A"]["sensitivity"] == pytest.approx(2 / 3)
    assert report["A"]["specificity"] == pytest.approx(6 / 7)
    assert report["A"]["f1"] == pytest.approx(2 / 3)
    assert report["A"]["support"] == 3
    # Class C: TP 3, FN 2, FP 1, TN 4.
    assert report["C"]["precision"] == pytest.approx(3 / 4)
    assert report["C"]["recall"] == pytest.approx(3 / 5)
    assert report["C"]["specificity"] == pytest.approx(4 / 5)
    assert report["C"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_never_predicted_class_has_undefined_precision_not_zero() -> None:
    matrix = confusion_matrix(np.array([0, 1, 2]), np.array([0, 0, 0]), 3)
    report = per_class_report(matrix, LABELS)
    assert report["B"]["precision"] is None and report["B"]["f1"] is None
    assert report["B"]["recall"] == 0.0 and report["B"]["specificity"] == 1.0
    absent = per_class_report(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 3), LABELS)
    assert absent["C"]["recall"] is None and absent["C"]["support"] == 0


def test_roc_auc_counts_ties_as_half() -> None:
    # Positive 0.8 beats both negatives (2); positive 0.4 ties one (0.5) and beats one (1): 3.5 / 4.
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.4, 0.4, 0.2])) == pytest.approx(0.875)
    assert roc_auc(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == 1.0
    assert roc_auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.9])) == 0.0
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    # Three-way tie at 0.5 (ranks 2-4 share 3): positives rank 3 and 5, U = 8 - 3 = 5 of 2 x 3 pairs.
    assert roc_auc(np.array([0, 1, 0, 0, 1]), np.array([0.1, 0.5, 0.5, 0.5, 0.9])) == pytest.approx(5 / 6)


def test_roc_auc_matches_scikit_learn_on_random_scores() -> None:
    from sklearn import metrics  # the [dev] extra installs scikit-learn: this cross-check never skips in CI

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))


def test_bootstrap_interval_brackets_the_auc() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.5 * y
    low, high = bootstrap_auc_ci(y, s, n_boot=300, seed=0)
    assert low < roc_auc(y, s) < high and 0.0 <= low and high <= 1.0
    assert bootstrap_auc_ci(y, s, n_boot=300, seed=0) == (low, high)


def test_patient_bootstrap_resamples_a_womans_images_together() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    s = rng.random(60) + 0.5 * y
    # Each woman has two identical images (both breasts, say): doubling every image leaves each resample's AUC
    # unchanged, so resampling women must give exactly the per-image interval of the undoubled set.
    y2, s2, women = np.repeat(y, 2), np.repeat(s, 2), np.repeat(np.arange(60), 2)
    by_woman = bootstrap_auc_ci(y2, s2, n_boot=300, seed=0, groups=women)
    assert by_woman == pytest.approx(bootstrap_auc_ci(y, s, n_boot=300, seed=0))
    # Resampling images instead pretends there are 120 independent cases: a narrower, overconfident interval.
    by_image = bootstrap_auc_ci(y2, s2, n_boot=300, seed=0)
    assert by_image[1] - by_image[0] < by_woman[1] - by_woman[0]


def test_threshold_is_the_largest_reaching_the_target_sensitivity() -> None:
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.7, 0.5, 0.3, 0.1, 0.6, 0.2, 0.05])
    # 80% of 5 positives = 4: the 4th highest positive score.
    assert threshold_for_sensitivity(y, s, 0.8) == 0.3
    assert sensitivity_specificity(y, s, 0.3) == (pytest.approx(0.8), pytest.approx(2 / 3))
    # 90% needs 4.5 -> all 5 positives.
    assert threshold_for_sensitivity(y, s, 0.9) == 0.1
    assert sensitivity_specificity(y, s, 0.1) == (1.0, pytest.approx(1 / 3))
    assert threshold_for_sensitivity(np.array([0, 0]), np.array([0.3, 0.4]), 0.9) == 0.0


def test_evaluate_probabilities_sums_several_malignant_classes() -> None:
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.4, 0.1], [0.2, 0.6, 0.1, 0.1]])
    y = np.array([0, 3, 2, 1])
    labels = ("1", "3", "4", "5")
    result = evaluate_probabilities(probs, y, labels, ("4", "5"), threshold=0.45, n_boot=50)
    # Malignancy scores 0.2, 0.7, 0.5, 0.2 -> positives 0.7 and 0.5 above both negatives.
    assert result["malignant_vs_rest"]["auc"] == 1.0
    assert result["referral"] == {"threshold": 0.45, "sensitivity": 1.0, "specificity": 1.0}
    assert result["accuracy"] == pytest.approx(3 / 4)  # image 3 (true "4") is predicted "1"
    assert result["per_class"]["4"]["recall"] == 0.0
    assert result["confusion_matrix"][2] == [1, 0, 0, 0]


def test_balanced_class_weights_and_oversampling() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    weights = balanced_class_weights(y, 4)
    assert weights.tolist() == pytest.approx([9 / 18, 9 / 6, 9 / 3, 0.0])
    order = epoch_order(y, np.random.default_rng(0), oversample=True)
    assert np.bincount(y[order]).tolist() == [6, 6, 6]
    assert set(order[y[order] == 0]) == {0, 1, 2, 3, 4, 5}  # majority images each once
    plain = epoch_order(y, np.random.default_rng(0), oversample=False)
    assert sorted(plain) == list(range(9))


def test_focal_loss_matches_the_formula() -> None:
    pytest.importorskip("tensorflow")
    from convert.models.losses import FocalLoss, focal_loss_value

    y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    p = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]], np.float32)
    per_sample = np.asarray(focal_loss_value(y, p))
    expected = [0.25 * 0.5**2 * -math.log(0.5), 0.25 * 0.1**2 * -math.log(0.9)]
    assert per_sample == pytest.approx(expected, rel=1e-5)
    assert float(FocalLoss()(y, p)) == pytest.approx(np.mean(expected), rel=1e-5)
    # gamma 0, alpha 1 is plain cross-entropy.
    assert float(FocalLoss(gamma=0.0, alpha=1.0)(y, p)) == pytest.approx(np.mean([-math.log(0.5), -math.log(0.9)]), rel=1e-5)


def test_sensitivity_at_specificity_by_hand() -> None:
    # negatives 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0; positives 0.35 0.75 0.85 0.95
    negatives = np.arange(1, 11) / 10
    positives = np.array([0.35, 0.75, 0.85, 0.95])
    y = np.r_[np.zeros(10, bool), np.ones(4, bool)]
    s = np.r_[negatives, positives]
    # specificity >= 0.7 first at t = 0.75 (7 of 10 negatives below): positives 0.75, 0.85, 0.95 caught
    assert sensitivity_at_specificity(y, s, 0.7) == pytest.approx(0.75)
    # >= 0.9: t = 0.95 (9 of 10 below), one positive caught
    assert sensitivity_at_specificity(y, s, 0.9) == pytest.approx(0.25)
    assert sensitivity_at_specificity(y, s, 0.0) == pytest.approx(1.0)
    # ties: a negative tied with the positives at 0.5 cannot be excluded without excluding them
    tied = np.array([0.1, 0.2, 0.5, 0.5, 0.5])
    assert sensitivity_at_specificity(np.array([0, 0, 0, 1, 1], bool), tied, 0.7) == pytest.approx(0.0)
    assert sensitivity_at_specificity(np.array([0, 0, 0, 1, 1], bool), tied, 0.6) == pytest.approx(1.0)
    assert sensitivity_at_specificity(np.ones(3, bool), np.arange(3.0)) is None


def test_the_95_percent_interval_is_the_2_5_and_97_5_percent_quantiles_of_the_bootstrap_aucs() -> None:
    """Recomputed here from the resampler's own draws: a 90% interval reported as 95% would be too narrow."""
    from convert.evaluation.metrics import bootstrap_indices

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150)
    s = rng.random(150) + 0.4 * y
    aucs = [roc_auc(y[idx], s[idx]) for idx in bootstrap_indices(len(y), 400, seed=7)]
    aucs = [auc for auc in aucs if auc is not None]
    expected = (float(np.quantile(aucs, 0.025)), float(np.quantile(aucs, 0.975)))
    assert bootstrap_auc_ci(y, s, n_boot=400, seed=7) == pytest.approx(expected, abs=1e-12)
    narrower = (float(np.quantile(aucs, 0.05)), float(np.quantile(aucs, 0.95)))
    assert expected[0] < narrower[0] - 1e-3 and narrower[1] + 1e-3 < expected[1]  # a 90% interval would differ
    assert bootstrap_auc_ci(y, s, n_boot=400, seed=7, level=0.9) == pytest.approx(narrower, abs=1e-12)
    # What the card and the report print as "auc_ci95" is that same interval.
    probs = np.column_stack([1 - s / 2, s / 2])
    result = evaluate_probabilities(probs, y, ("benign", "malignant"), ("malignant",), n_boot=400, seed=7)
    assert result["malignant_vs_rest"]["auc_ci95"] == pytest.approx(expected, abs=1e-12)
