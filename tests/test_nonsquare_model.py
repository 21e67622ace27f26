"""A model whose input is not square (a pretrained backbone may want 40 rows by 24 columns, or the reverse).

Every bundled and CI model is square, so a swap of width and height anywhere between the card and the
interpreter would go unnoticed: the image would reach the model scrambled, with the same number of
pixels. Here a tiny int8 model with a 40x24 input is built with TensorFlow (the [train] extra), and
what the runtime's Classifier says about a file must equal the model run on OpenCV's own resize of it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) builds the non-square test model")

from convert.evaluation.export import TfliteModel, to_tflite_int8  # noqa: E402
from edge_birads.classifier import Classifier  # noqa: E402
from edge_birads.errors import ModelError  # noqa: E402

HEIGHT, WIDTH = 40, 24
LABELS = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]


def write_model(folder: Path, height: int, width: int, card_height: int, card_width: int) -> Path:
    """An int8 Flatten -> Dense softmax model: class 1 weighs the top rows against the bottom ones, class 2 the
    left columns against the right ones, so what the model says depends on where each pixel sits."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((height, width, 1))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:height, 0:width]
    weights = np.stack([np.zeros((height, width)), np.where(r < height / 2, 0.03, -0.03), np.where(c < width / 2, 0.03, -0.03)], -1)
    dense.set_weights([weights.reshape(height * width, 3).astype(np.float32), np.zeros(3, np.float32)])
    # Calibrated on ramps in every direction, so the int8 logits have room for what the test images give.
    ramps = [np.clip(a * (r / (height - 1) - 0.5) + b * (c / (width - 1) - 0.5) + 0.5, 0, 1) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    flat = to_tflite_int8(model, np.stack(ramps)[..., None].astype(np.float32))
    path = folder / f"m{height}x{width}.tflite"
    path.write_bytes(flat)
    card = {
        "schema_version": 1,
        "name": f"non-square test model {height}x{width} (random weights)",
        "labels": LABELS,
        "malignant_label": LABELS[-1],
        "preprocessing": {"height": card_height, "width": card_width, "interpolation": "area"},
        "referral": {"threshold": 0.5},
        "sha256": hashlib.sha256(flat).hexdigest(),
    }
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("nonsquare"), HEIGHT, WIDTH, HEIGHT, WIDTH)


def asymmetric_png(folder: Path) -> tuple[Path, np.ndarray]:
    r, c = np.mgrid[0:300, 0:200]
    image = (r * 180.0 / 299 + c * 75.0 / 199 + 40 * np.sin(r / 17.0) * np.cos(c / 11.0)).clip(0, 255).astype(np.uint8)
    path = folder / "asymmetric.png"
    assert cv2.imwrite(str(path), image)
    return path, image


def test_classifier_feeds_a_non_square_model_opencvs_height_by_width_resize(model_path, tmp_path):
    path, image = asymmetric_png(tmp_path)
    result = Classifier(model_path).classify_file(path)
    assert result.error is None, result.error
    reference = TfliteModel(model_path)
    right = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    expected = reference.predict(right[None, :, :, None])[0]
    assert list(result.prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=2e-6)
    # The same pixels resized the other way round and read as 40x24: what a swap would feed. It must say
    # something else, or this test could not tell the two apart.
    swapped = cv2.resize(image, (HEIGHT, WIDTH), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    scrambled = reference.predict(swapped.reshape(1, HEIGHT, WIDTH, 1))[0]
    assert np.abs(scrambled - expected).max() > 0.05


def test_a_card_that_states_the_transposed_input_is_refused(tmp_path):
    model = write_model(tmp_path, HEIGHT, WIDTH, card_height=WIDTH, card_width=HEIGHT)
    with pytest.raises(ModelError, match=r"model input shape \(1, 40, 24, 1\) does not match its card \(1, 24, 40, 1\)"):
        Classifier(model)
