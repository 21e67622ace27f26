"""One int8 path: the runtime's edge_birads.interpreter runs every model, from a file or from bytes, with or without
a lesion map; convert's runner and the parity gate are that code, not a copy of it."""

from __future__ import annotations

import numpy as np
import pytest

from edge_birads import interpreter
from edge_birads.classifier import Classifier, default_model_path
from edge_birads.errors import ModelError

LABELS = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]


def noise_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, 1)) * rng.random((n, 1, 1, 1))).astype(np.float32)


def test_a_model_from_bytes_runs_as_the_same_model_from_its_file():
    path = default_model_path()
    from_file, _ = interpreter.make_interpreter(path)
    from_bytes, _ = interpreter.make_interpreter(path.read_bytes())
    images = noise_images(4, 224)
    assert np.array_equal(interpreter.batch_probabilities(from_file, images), interpreter.batch_probabilities(from_bytes, images))


def test_bad_model_bytes_are_one_model_error():
    with pytest.raises(ModelError, match=r"^cannot load model \(12 bytes in memory\): "):
        interpreter.make_interpreter(b"not a model!")


def test_the_batch_function_is_the_classifiers_own_run_image_renormalised_or_not():
    """N images -> N x labels: row i is what Classifier.predict says about image i (dequantized), renormalised on request."""
    classifier = Classifier()
    images = noise_images(5, 224, seed=1)
    raw = interpreter.batch_probabilities(classifier.interpreter, images, renormalised=False)
    one_by_one = np.stack([classifier.predict(image) for image in images])
    assert raw.shape == (5, 3) and raw.dtype == np.float32
    assert np.array_equal(raw, one_by_one)
    renormalised = interpreter.batch_probabilities(classifier.interpreter, images)
    assert np.array_equal(renormalised, interpreter.renormalise(one_by_one))
    assert np.allclose(renormalised.sum(axis=1), 1.0) and not np.allclose(raw.sum(axis=1), 1.0, atol=1e-7)
    generator = interpreter.batch_probabilities(classifier.interpreter, (image for image in images))  # a pool too large for memory
    assert np.array_equal(generator, renormalised)


def test_renormalise_rows_and_an_all_zero_row():
    rows = np.array([[0.5, 0.25, 0.27], [0.0, 0.0, 0.0], [-0.1, 0.2, 0.2]])
    assert interpreter.renormalise(rows).tolist() == [
        pytest.approx([0.5 / 1.02, 0.25 / 1.02, 0.27 / 1.02]), [1 / 3, 1 / 3, 1 / 3], [0.0, 0.5, 0.5]]
    assert interpreter.renormalise(np.array([2.0, 2.0])).tolist() == [0.5, 0.5]


@pytest.fixture(scope="module")
def map_model_bytes() -> bytes:
    """A tiny int8 model with a (1, 4, 4, 1) lesion map before its probabilities, made by the one converter."""
    pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) builds the test model")
    import keras
    from keras import layers

    from convert.evaluation.export import to_tflite_int8

    keras.utils.set_random_seed(0)
    image = keras.Input((64, 64, 1))
    pooled = layers.AveragePooling2D(16)(image)
    lesion_map = layers.Conv2D(1, 1, name="lesion_map")(pooled)
    probs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(pooled))
    model = keras.Model(image, [lesion_map, probs])
    return to_tflite_int8(model, noise_images(16, 64, seed=2))


def test_a_model_with_a_lesion_map_gives_both_per_image_as_the_classifier_does(map_model_bytes, tmp_path):
    import hashlib
    import json

    path = tmp_path / "map.tflite"
    path.write_bytes(map_model_bytes)
    card = {"name": "map", "labels": LABELS, "malignant_label": LABELS[2], "referral": {"threshold": 0.5},
            "sha256": hashlib.sha256(map_model_bytes).hexdigest(), "preprocessing": {"height": 64, "width": 64}}
    path.with_suffix(".json").write_text(json.dumps(card))
    classifier = Classifier(path)
    images = noise_images(3, 64, seed=3)
    probabilities, maps = interpreter.batch_outputs(interpreter.make_interpreter(map_model_bytes)[0], images, renormalised=False)
    assert probabilities.shape == (3, 3) and maps.shape == (3, 4, 4)
    for i, image in enumerate(images):
        p, m = classifier.predict_with_map(image)
        assert np.array_equal(p, probabilities[i]) and np.array_equal(m, maps[i])
    assert float(np.ptp(maps)) > 0  # maps that differ: the comparison above is not 0 == 0
    from convert.evaluation.export import TfliteModel

    wrapped = TfliteModel(map_model_bytes)  # convert's handle picks the probabilities, not the map
    assert wrapped.output_spec.shape == [1, 3] and wrapped.input_spec.dtype == "int8"
    assert np.array_equal(wrapped.predict(images), interpreter.renormalise(probabilities))


def test_the_parity_gate_is_one_function_for_fresh_and_saved_results():
    pytest.importorskip("tensorflow", reason="convert needs the [train] extra")
    from convert.evaluation.export import MAX_DIFF, MIN_AGREEMENT, ParityError, parity, parity_gate

    rng = np.random.default_rng(0)
    reference = rng.dirichlet([1, 1, 1], 200)
    close = reference + rng.normal(0, 0.002, reference.shape)
    assert parity_gate(parity(reference, close)).n_images == 200
    assert parity_gate(parity(reference, close).to_dict()).n_images == 200  # as a cross-validation run saved it
    far = reference[:, ::-1]
    with pytest.raises(ParityError, match=rf"^fold 3: poor int8 parity: top-1 agreement 0\.\d+ .*need >= {MIN_AGREEMENT}\).*need <= {MAX_DIFF}\)$"):
        parity_gate(parity(reference, far).to_dict(), where="fold 3: ")
    saved = {**parity(reference, close).to_dict(), "decisive_agreement": 0.94, "op_versions": {"CONV_2D": 3}}
    with pytest.raises(ParityError, match=r"top-1 agreement 0\.940 on images without near-ties \(need >= 0\.95\)"):
        parity_gate(saved)  # agreement alone fails the default gate
    assert parity_gate(saved, min_agreement=0.9).decisive_agreement == 0.94
    with pytest.raises(ParityError, match=r"largest probability difference 0\.0\d+ \(need <= 0\.001\)$"):
        parity_gate(parity(reference, close), max_diff=0.001)  # the difference alone fails a strict gate


def test_dequantize_per_channel_along_an_axis():
    values = np.array([[127, -128], [10, -10]], np.int8)
    per_row = interpreter.dequantize(values, [0.5, 2.0], [-128, 0], axis=0)
    assert per_row.tolist() == [[127.5, 0.0], [20.0, -20.0]]
    per_column = interpreter.dequantize(values, [0.5, 2.0], [0, 0], axis=1)
    assert per_column.tolist() == [[63.5, -256.0], [5.0, -20.0]]


def test_the_bench_reads_the_bundled_models_weights_per_channel_through_the_one_dequantize():
    """The float baseline of `edge-birads bench` is rebuilt from these: every weighted op, each kernel scaled per output channel."""
    from edge_birads.bench_baseline import int8_weights_as_float

    weights = int8_weights_as_float(str(default_model_path()))
    assert [kernel.shape for kernel, _ in weights] == [(32, 3, 3, 1), (64, 3, 3, 32), (128, 3, 3, 64), (128, 86528), (3, 128)]
    plain, _ = interpreter.make_interpreter(default_model_path(), delegates=False)
    conv1 = next(op for op in plain._get_ops_details() if op["op_name"] == "CONV_2D")
    detail = next(d for d in plain.get_tensor_details() if d["index"] == conv1["inputs"][1])
    scales = detail["quantization_parameters"]["scales"]
    assert scales.size == 32 and np.ptp(scales) > 0  # per channel, and not all alike
    raw = plain.get_tensor(detail["index"]).astype(np.float32)
    assert np.allclose(weights[0][0], raw * scales[:, None, None, None].astype(np.float32), rtol=0, atol=1e-7)


def test_the_lesion_pipeline_scores_a_pool_with_the_classifiers_numbers_not_renormalised():
    """convert.evaluation.lesion_export.run_int8 (cross-validation and the lesion card): the runtime's outputs as they are, image by image
    from the uint8 pool, as the lesion rows' archived figures were computed."""
    pytest.importorskip("tensorflow", reason="convert needs the [train] extra")
    from pathlib import Path

    from convert.data.lesion_data import AnnotatedImage, PreparedPool
    from convert.evaluation.lesion_export import run_int8
    from edge_birads.preprocess import PreprocessSpec

    images = (noise_images(4, 224, seed=4)[..., 0] * 255).astype(np.uint8)
    items = [AnnotatedImage(Path(f"{i}.png"), f"p{i}", "synthetic", i % 3) for i in range(4)]
    pool = PreparedPool(PreprocessSpec(224, 224), images, items, [() for _ in items])
    scores = run_int8(default_model_path().read_bytes(), pool, np.array([3, 1]))
    classifier = Classifier()
    expected = np.stack([classifier.predict(images[i].astype(np.float32)[..., None] / 255.0) for i in (3, 1)])
    assert np.array_equal(scores, expected) and not np.array_equal(scores, interpreter.renormalise(expected))
