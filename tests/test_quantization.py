"""Quantization arithmetic and how probabilities become a prediction."""

from __future__ import annotations

import numpy as np
import pytest

from edge_birads.card import ModelCard
from edge_birads.classifier import to_prediction
from edge_birads.interpreter import dequantize, quantize
from edge_birads.preprocess import PreprocessSpec

CARD = ModelCard(
    name="t",
    labels=("BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"),
    malignant_label="BI-RADS 4-5",
    referral_threshold=0.25,
    sha256="0" * 64,
    preprocessing=PreprocessSpec(),
)


def test_quantize_uses_scale_and_zero_point_and_saturates():
    values = np.array([0.0, 1.0 / 255, 128.0 / 255, 1.0, 2.0, -1.0], np.float32)
    q = quantize(values, 1.0 / 255, -128, np.int8)
    assert q.dtype == np.int8
    assert q.tolist() == [-128, -127, 0, 127, 127, -128]


def test_dequantize_widens_before_subtracting():
    # int8 arithmetic would wrap: 127 - (-128) = 255 does not fit in int8.
    values = np.array([127, -128], np.int8)
    np.testing.assert_allclose(dequantize(values, 0.5, -128), [127.5, 0.0])


def test_round_trip_error_is_at_most_half_a_step():
    scale = 1.0 / 255
    values = np.random.default_rng(0).random(1000).astype(np.float32)
    restored = dequantize(quantize(values, scale, -128, np.int8), scale, -128)
    assert np.abs(restored - values).max() <= scale / 2 + 1e-7


def test_prediction_renormalises_and_flags_referral_at_the_threshold():
    prediction = to_prediction(np.array([0.5, 0.25, 0.25], np.float32) * 0.98, CARD)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.suspicion_score == pytest.approx(0.25)
    assert prediction.referral is True  # score == threshold refers
    assert prediction.group == "BI-RADS 4-5"  # referred: the suspicious group, though BI-RADS 1 is most likely
    routine = to_prediction(np.array([0.6, 0.2, 0.2]), CARD)
    assert (routine.referral, routine.group) == (False, "BI-RADS 1")
    assert to_prediction(np.array([0.25, 0.5, 0.25]), CARD).group == "BI-RADS 4-5"


def test_a_routine_group_is_the_most_likely_of_the_other_groups():
    strict = ModelCard("t", CARD.labels, CARD.malignant_label, 0.9, CARD.sha256, CARD.preprocessing)
    routine = to_prediction(np.array([0.05, 0.15, 0.8]), strict)  # BI-RADS 4-5 most likely, but under the threshold
    assert (routine.referral, routine.group) == (False, "BI-RADS 2-3")


def test_the_malignancy_score_is_the_malignant_labels_probability_wherever_it_sits():
    """Benign and malignant probabilities differ here, so reading the wrong index cannot go unnoticed."""
    prediction = to_prediction(np.array([0.1, 0.6, 0.3]), CARD)
    assert prediction.suspicion_score == pytest.approx(0.3)
    assert prediction.referral is True and prediction.group == "BI-RADS 4-5"  # 0.3 >= 0.25, although the benign 0.6 wins
    benign = to_prediction(np.array([0.1, 0.7, 0.2]), CARD)  # 0.2 < 0.25: the benign 0.7 is not read as the score
    assert (benign.referral, benign.group, benign.suspicion_score) == (False, "BI-RADS 2-3", pytest.approx(0.2))
    first = ModelCard("t", ("BI-RADS 4-5", "BI-RADS 1", "BI-RADS 2-3"), "BI-RADS 4-5", 0.25, "0" * 64, PreprocessSpec())
    moved = to_prediction(np.array([0.3, 0.1, 0.6]), first)
    assert moved.suspicion_score == pytest.approx(0.3) and moved.referral is True and moved.group == "BI-RADS 4-5"
    moved_routine = to_prediction(np.array([0.2, 0.1, 0.7]), first)
    assert (moved_routine.suspicion_score, moved_routine.group) == (pytest.approx(0.2), "BI-RADS 2-3")


def test_all_zero_output_gives_a_uniform_not_a_crash():
    prediction = to_prediction(np.zeros(3), CARD)
    assert prediction.probabilities == {label: pytest.approx(1 / 3) for label in CARD.labels}
