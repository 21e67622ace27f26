"""The bundled model's outputs on fixed real images stay what they were when it was bundled.

A tolerance of one int8 output step (plus renormalisation slack) allows for float rounding across
machines; anything more means decoding or preprocessing changed, which would silently change what the
deployed model sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edge_birads.classifier import Classifier

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from make_golden import GOLDEN, inputs  # noqa: E402


def test_bundled_model_reproduces_the_golden_outputs(cbis_dicoms):
    classifier = Classifier()
    golden = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert golden[0]["model_sha256"] == classifier.sha256, "the bundled model changed: python tools/make_golden.py"
    step = classifier.interpreter.get_output_details()[0]["quantization"][0] or 1e-6
    current = dict(inputs())
    assert [g["input"] for g in golden] == list(current)
    for expected in golden:
        got = classifier.classify_file(current[expected["input"]])
        assert got.error is None, (expected["input"], got.error)
        for label, p in expected["probabilities"].items():
            assert got.prediction.probabilities[label] == pytest.approx(p, abs=1.5 * step), (expected["input"], label)
