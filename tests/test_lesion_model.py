"""The lesion FCN's whole-image wrapper, its int8 export, and the head calibration."""

from __future__ import annotations

import numpy as np
import pytest

from convert.train_lesion import fit_head, head_probs

tf = pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) is not installed")


@pytest.fixture(scope="module")
def tiny():
    import keras

    from convert.lesion_model import build_fcn, build_whole_image_model

    keras.utils.set_random_seed(0)
    fcn = build_fcn(width=4)
    model = build_whole_image_model(fcn, 128, 64, smooth=2, batch_size=1)
    return fcn, model


def test_whole_image_model_is_fcn_maps_soft_max_pooled(tiny):
    fcn, model = tiny
    image = np.random.default_rng(0).random((1, 128, 64, 1), dtype=np.float32)
    maps = np.asarray(fcn(image))[0]
    assert maps.shape == (8, 4, 2)  # stride 16
    smooth = (maps[:-1, :-1] + maps[1:, :-1] + maps[:-1, 1:] + maps[1:, 1:]) / 4.0
    pooled = smooth.reshape(-1, 2).max(axis=0)
    expected = np.exp([0.0, pooled[0], pooled[1]])
    expected /= expected.sum()  # identity head: logits [0, benign, malignant]
    assert np.allclose(np.asarray(model(image))[0], expected, atol=1e-5)


def test_int8_export_runs_with_int8_io_and_plain_ops(tiny):
    from convert.lesion_export import Int8Runner, convert_int8, op_names, parity

    _, model = tiny
    rng = np.random.default_rng(1)
    images = rng.random((12, 128, 64, 1), dtype=np.float32)
    flatbuffer = convert_int8(model, images[:8])
    runner = Int8Runner(flatbuffer)
    spec = runner.quantization()
    assert spec["input"]["shape"] == [1, 128, 64, 1] and spec["input"]["dtype"] == "int8"
    assert spec["output"]["shape"] == [1, 3]
    ops = op_names(flatbuffer)
    assert ops <= {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "REDUCE_MAX", "FULLY_CONNECTED", "SOFTMAX"}
    int8_probs = np.stack([runner(image) for image in images[8:]])
    float_probs = np.stack([np.asarray(model(image[None]))[0] for image in images[8:]])
    assert np.allclose(int8_probs.sum(axis=1), 1.0, atol=0.02)
    assert parity(float_probs, int8_probs)["max_abs_prob_diff"] < 0.05


def test_fit_head_learns_which_score_means_which_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    scores = rng.normal(size=(300, 2))
    scores[labels == 1, 0] += 3.0  # benign score high on benign images
    scores[labels == 2, 1] += 3.0  # malignant score high on malignant images
    kernel, bias = fit_head(scores, labels)
    predicted = head_probs(scores, kernel, bias).argmax(axis=1)
    assert (predicted == labels).mean() > 0.8
    assert kernel[1, 2] > 0 > kernel[1, 0] and kernel[0, 1] > 0


def test_fit_head_keeps_identity_with_one_class():
    kernel, bias = fit_head(np.zeros((5, 2)), np.full(5, 2))
    assert kernel.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] and bias.tolist() == [0.0, 0.0, 0.0]
