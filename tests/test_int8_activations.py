"""The converter's two int8 activation modes (convert.evaluation.export.INT8_ACTIVATIONS): ranges calibrated once from
representative images (full-integer), or quantized per image at run time (int8 weights, float input and output)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) converts the test models")

from convert.evaluation.export import keras_predict, parity, parity_gate, to_tflite_int8
from edge_birads.interpreter import batch_probabilities, make_interpreter


@pytest.fixture(scope="module")
def small_cnn():
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    image = keras.Input((32, 32, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    x = layers.Conv2D(32, 3, strides=2, padding="same")(x)  # 4,608 weights: the converter leaves kernels under 1,024 in float
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, layers.Dense(3, activation="softmax")(x))
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 30, bias])  # a head that spreads its outputs, as a trained one does
    return model


def bright(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 32, 32, 1)).astype(np.float32)


def test_dynamic_activations_keep_int8_weights_and_float_input_and_output(small_cnn):
    flatbuffer = to_tflite_int8(small_cnn, None, "dynamic")
    interpreter, _ = make_interpreter(flatbuffer, delegates=False)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    kernels = [t for t in interpreter.get_tensor_details() if list(t["shape"]) == [32, 3, 3, 16]]
    assert [t["dtype"] for t in kernels] == [np.int8]
    calibrated, _ = make_interpreter(to_tflite_int8(small_cnn, bright(16, 0)), delegates=False)
    assert calibrated.get_input_details()[0]["dtype"] == np.int8


def test_dynamic_activations_follow_images_far_from_the_calibration_ranges(small_cnn):
    """Calibrated on bright images, the full-integer model sees a dim image through a handful of input steps;
    per-image ranges keep its detail, so only the dynamic model follows the float network there."""
    dim = bright(40, 1) * 0.02
    reference = keras_predict(small_cnn, dim)
    calibrated, _ = make_interpreter(to_tflite_int8(small_cnn, bright(32, 0), "calibrated"))
    dynamic, _ = make_interpreter(to_tflite_int8(small_cnn, None, "dynamic"))
    off_calibrated = np.abs(batch_probabilities(calibrated, dim) - reference).max()
    off_dynamic = np.abs(batch_probabilities(dynamic, dim) - reference).max()
    assert off_dynamic < 0.002 and off_calibrated > 0.02
    parity_gate(parity(reference, batch_probabilities(dynamic, dim)))  # the gate every export passes


def test_an_unknown_activation_mode_or_no_calibration_images_is_refused(small_cnn):
    with pytest.raises(ValueError, match=r"int8 activations must be one of \('calibrated', 'dynamic'\), not 'float'"):
        to_tflite_int8(small_cnn, bright(4, 0), "float")
    with pytest.raises(ValueError, match="int8 conversion needs representative images"):
        to_tflite_int8(small_cnn, None)
