"""The float baseline of ``edge-birads bench``: a float32 TFLite and the float Keras model of the same network.

The only runtime-side module that knows the training framework exists: it asks whether TensorFlow is
installed (without importing it), has a child process rebuild the float network from the card's
``keras_config`` and convert it, and times both in their own children. Nothing of the runtime imports it
except ``bench``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edge_birads.bench_child import EngineResult, engine_from_child, run_child
from edge_birads.bench_protocol import serve, timed_loop
from edge_birads.progress import Progress

BASELINE = "Keras (TensorFlow)"  # the engine the ratios divide by the int8 one
FLOAT32 = "float32 TFLite"
NO_TENSORFLOW = "TensorFlow is not installed (pip install 'edge-birads[train]')"
DISTRIBUTIONS = ("tensorflow", "keras")  # versions listed in the report's machine section


def tensorflow_installed() -> bool:
    """Whether TensorFlow is importable, without importing it here."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def float_model_with_card(float_model: Path, int8_model: Path, scratch: Path) -> Path:
    """A user's float32 .tflite, with a card: its own beside it, else the int8 card with its sha256."""
    from edge_birads.card import card_path_for, sha256_of

    if card_path_for(float_model).is_file():
        return float_model
    data = json.loads(card_path_for(int8_model).read_text(encoding="utf-8"))
    data["sha256"] = sha256_of(float_model)
    linked = scratch / "user-float32.tflite"
    shutil.copyfile(float_model, linked)
    card_path_for(linked).write_text(json.dumps(data), encoding="utf-8")
    return linked


def float_engines(model: Path, float_model: Path | None, card, base_job: dict, scratch: str, threads: int,
                  progress: Progress) -> tuple[list[EngineResult], list[str]]:
    """The float32 TFLite and Keras engines (run, or skipped with the reason), and notes for the report."""
    from edge_birads.card import card_path_for

    notes: list[str] = []
    has_tf = tensorflow_installed()
    has_config = "keras_config" in card.extra
    prepared: dict | None = None
    prepare_error = None
    engines: list[EngineResult] = []
    if has_tf and has_config:
        prepared, _, prepare_error = run_child(
            {"kind": "prepare", "model": str(model), "card": str(card_path_for(model)), "out_dir": scratch, "threads": threads}
        )
        if prepared:
            notes.append(f"float engines: Keras model rebuilt from the card's keras_config with {prepared['weights']}"
                         + (f" ({prepared['weights_note']})" if prepared.get("weights_note") else ""))
    if float_model is not None:
        float_path = float_model_with_card(float_model, model, Path(scratch))
        engines.append(engine_from_child(FLOAT32, dict(base_job, kind="tflite", model=str(float_path)), progress))
        engines[-1].model = str(float_model)
    elif prepared:
        engines.append(engine_from_child(FLOAT32, dict(base_job, kind="tflite", model=prepared["float_model"]), progress))
        engines[-1].model = "converted from keras_config (temporary)"
    else:
        engines.append(EngineResult(FLOAT32, "skipped", reason=skip_reason(has_tf, has_config, prepare_error)))
    if prepared:
        keras_job = dict(base_job, kind="keras", model=prepared["keras_model"], card_model=str(model))
        engines.append(engine_from_child(BASELINE, keras_job, progress))
        engines[-1].model = "rebuilt from keras_config (temporary)"
    else:
        engines.append(EngineResult(BASELINE, "skipped", reason=skip_reason(has_tf, has_config, prepare_error)))
    return engines, notes


def skip_reason(has_tf: bool, has_config: bool, prepare_error: str | None) -> str:
    if not has_tf:
        return NO_TENSORFLOW
    if not has_config:
        return "the model card has no keras_config to rebuild the float network from (or pass --float-model)"
    return f"could not rebuild and convert the float model: {prepare_error}"


# ---------------------------------------------------------------- the baseline's child jobs
# Run as ``python -m edge_birads.bench_baseline JOB_JSON`` (bench_child.run_child), with the
# worker's line protocol (bench_worker.serve).

def limit_tensorflow_threads(threads: int) -> None:
    """Cap TensorFlow to the same thread count as the TFLite engines (a fair, frugal baseline)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def run_keras(job: dict) -> dict:
    """The float Keras model in TensorFlow: the baseline the paper compared against."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from edge_birads.card import load_card
    from edge_birads.classifier import to_prediction
    from edge_birads.decode import read_file
    from edge_birads.preprocess import prepare

    limit_tensorflow_threads(job["threads"])
    card = load_card(job["card_model"])
    model = keras.models.load_model(job["model"], compile=False)
    spec = card.preprocessing

    def classify_one(path: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        image = read_file(path)
        t1 = time.perf_counter()
        tensor = prepare(image, spec)
        t2 = time.perf_counter()
        # A direct call, not model.predict(): predict() adds ~10x per-call overhead for
        # one image; the baseline gets its fastest single-image path.
        probabilities = np.asarray(model(tensor[np.newaxis], training=False)).reshape(-1)
        to_prediction(probabilities, card)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    result = timed_loop(job, classify_one)
    import tensorflow as tf

    result["runtime"] = f"tensorflow {tf.__version__} / keras {keras.__version__}"
    return result


def int8_weights_as_float(model_path: str) -> list[tuple[Any, Any]]:
    """(kernel, bias) per CONV_2D / FULLY_CONNECTED op of an int8 model, dequantized, in graph order.

    Read with the lean interpreter (before the baseline loads its framework). Kernels come
    back in TFLite layout (OHWI for conv, [out, in] for dense).
    """
    import numpy as np

    from edge_birads.interpreter import dequantize, make_interpreter

    interpreter, _ = make_interpreter(model_path, delegates=False)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}

    def dequantized(index: int, out_channels: int) -> Any:
        if index < 0:
            return np.zeros(out_channels, np.float32)
        detail = details[index]
        values = interpreter.get_tensor(index)
        params = detail["quantization_parameters"]
        scales = np.asarray(params["scales"], np.float32)
        if not np.issubdtype(values.dtype, np.integer) or scales.size == 0:
            return values.astype(np.float32)
        return dequantize(values, scales, params["zero_points"], axis=params["quantized_dimension"])

    weights = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            kernel_index, bias_index = int(op["inputs"][1]), int(op["inputs"][2]) if len(op["inputs"]) > 2 else -1
            out_channels = int(details[kernel_index]["shape"][0])
            weights.append((dequantized(kernel_index, out_channels), dequantized(bias_index, out_channels)))
    return weights


def keras_layout(kernel: Any) -> Any:
    """TFLite kernel layout -> Keras: OHWI -> HWIO for conv, [out, in] -> [in, out] for dense."""
    return kernel.transpose(1, 2, 3, 0) if kernel.ndim == 4 else kernel.T


def run_prepare(job: dict) -> dict:
    """Rebuild the float Keras model from the card and convert it to a float32 TFLite.

    Weights: the int8 model's own weights dequantized, so all three engines
    compute (nearly) the same function; random initialisation when the int8
    graph does not map one-to-one onto the Keras layers. Speed and memory do
    not depend on the weight values.
    """
    import hashlib

    from edge_birads.errors import ModelError

    try:
        weights = int8_weights_as_float(job["model"])
        weights_error = None
    except (ModelError, ValueError, KeyError, IndexError, RuntimeError) as exc:  # only means random init
        weights, weights_error = [], f"{type(exc).__name__}: {exc}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    limit_tensorflow_threads(job["threads"])
    with open(job["card"], encoding="utf-8") as handle:
        card_data = json.load(handle)
    model = keras.models.model_from_json(json.dumps(card_data["keras_config"]))
    layers = [layer for layer in model.layers if layer.weights]
    source = "random initialisation (speed and memory do not depend on weight values)"
    if weights and len(weights) == len(layers):
        try:
            for layer, (kernel, bias) in zip(layers, weights):
                layer.set_weights([keras_layout(kernel), bias][: len(layer.weights)])
            source = "the int8 model's weights, dequantized"
        except ValueError as exc:
            weights_error = f"weights do not fit the Keras layers: {exc}"
    elif weights_error is None:
        weights_error = f"{len(weights)} weighted ops in the int8 graph, {len(layers)} weighted Keras layers"
    out_dir = job["out_dir"]
    keras_path = os.path.join(out_dir, "baseline.keras")
    model.save(keras_path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    flat = converter.convert()
    float_path = os.path.join(out_dir, "float32.tflite")
    with open(float_path, "wb") as handle:
        handle.write(flat)
    card_data = dict(card_data, name=f"{card_data.get('name', 'model')} (float32 for bench)", sha256=hashlib.sha256(flat).hexdigest())
    with open(os.path.join(out_dir, "float32.json"), "w", encoding="utf-8") as handle:
        json.dump(card_data, handle)
    return {
        "keras_model": keras_path,
        "float_model": float_path,
        "weights": source,
        "weights_note": weights_error,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


JOBS = {"keras": run_keras, "prepare": run_prepare}

if __name__ == "__main__":
    sys.exit(serve(JOBS))
