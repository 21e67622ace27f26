"""The int8 parity gate's two halves on made-up probabilities: top-1 agreement and probability difference.

No TensorFlow needed: ``convert.evaluation.export.parity`` and ``Parity.ok`` are what ``convert_model`` gates on
(the CLI's refusal on a real conversion is in test_convert_pipeline.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from convert.evaluation.export import parity


def decisive_rows(n: int) -> np.ndarray:
    """Float-model probabilities whose best two classes are 0.06 apart: every image is decisive."""
    return np.tile([0.50, 0.44, 0.06], (n, 1))


def test_the_gate_refuses_low_top1_agreement_even_when_every_difference_is_small():
    reference = decisive_rows(100)
    candidate = reference.copy()
    candidate[:10, :2] = candidate[:10, 1::-1]  # 10 of 100 images flip their top class, each by only 0.06
    result = parity(reference, candidate)
    assert result.top1_agreement == result.decisive_agreement == pytest.approx(0.90)
    assert result.n_near_ties == 0
    assert result.max_abs_prob_diff == pytest.approx(0.06) and result.quantile_abs_prob_diff == pytest.approx(0.06)
    assert not result.ok(min_agreement=0.95, max_diff=0.1)  # refused for agreement alone
    assert result.ok(min_agreement=0.85, max_diff=0.1)


def test_the_gate_refuses_large_differences_even_when_every_top1_agrees():
    reference = decisive_rows(100)
    candidate = np.tile([0.80, 0.14, 0.06], (100, 1))  # same winner everywhere, 0.3 off
    result = parity(reference, candidate)
    assert result.decisive_agreement == 1.0
    assert not result.ok(min_agreement=0.95, max_diff=0.1)
    assert result.ok(min_agreement=0.95, max_diff=0.35)


def test_flips_on_near_ties_do_not_count_against_agreement():
    reference = decisive_rows(100)
    reference[:10] = [0.48, 0.47, 0.05]  # best two 0.01 apart: an int8 step can decide them
    candidate = reference.copy()
    candidate[:10, :2] = candidate[:10, 1::-1]
    result = parity(reference, candidate)
    assert result.n_near_ties == 10 and result.top1_agreement == pytest.approx(0.90) and result.decisive_agreement == 1.0
    assert result.ok(min_agreement=0.95, max_diff=0.1)
