"""The child process of ``edge-birads bench``: one engine, one fresh process.

Each engine runs in its own interpreter process so that its peak RSS and cold
start are those of a fresh classify process, not inflated by another engine
(TensorFlow alone is hundreds of MiB). The parent starts
``python -m edge_birads.bench_worker JOB_JSON`` and reads line records from
stdout:

- ``first {...}``     as soon as the first image has a result (cold start ends here),
- ``progress I``      after each timed image,
- ``result {...}``    timings and peak RSS when done,
- ``error MESSAGE``   when the engine cannot run (the parent lists it as skipped).

Nothing heavy is imported at module level: the int8 and float TFLite jobs
import exactly what ``edge-birads classify`` imports, and only the ``keras``
and ``prepare`` jobs import TensorFlow.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

STAGES = ("decode", "preprocess", "inference", "total")


def emit(tag: str, payload: Any = None) -> None:
    """One protocol line on stdout, flushed at once so the parent can time it."""
    line = tag if payload is None else f"{tag} {payload if isinstance(payload, str) else json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def peak_rss_mib() -> float:
    """This process's own peak resident set size, in MiB.

    Linux: VmHWM from /proc/self/status, the high-water mark of this process's
    own memory map. Not ru_maxrss: after fork+exec that also carries the
    parent's RSS at spawn time, so a large parent would inflate a small child.
    Elsewhere ru_maxrss (bytes on macOS, KiB on other systems).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def rss_split_mib() -> dict[str, float]:
    """Current RSS split: anonymous (the process's own; never evicted without swap) and file-backed.

    File-backed pages (shared libraries, a mapped model) are clean and can be
    reclaimed under memory pressure, which makes the peak of a process with a
    large library (TensorFlow) vary with what else runs on the machine.
    """
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile"):
                    out["anon_mib" if key == "RssAnon" else "file_mib"] = round(int(line.split()[1]) / 1024.0, 2)
    except (OSError, ValueError, IndexError):
        pass
    return out


def timed_loop(job: dict, classify_one: Callable[[str], tuple[float, float, float]]) -> dict:
    """Cold first image, then warm-up, then ``n`` timed images cycling through the list.

    ``classify_one(path)`` returns (decode, preprocess, inference) seconds.
    """
    images = job["images"]
    classify_one(images[0])
    emit("first", {"peak_rss_mib": round(peak_rss_mib(), 2)})
    for i in range(job["warmup"]):
        classify_one(images[(i + 1) % len(images)])
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(job["n"]):
        decode, preprocess, inference = classify_one(images[(job["warmup"] + 1 + i) % len(images)])
        for stage, seconds in zip(STAGES, (decode, preprocess, inference, decode + preprocess + inference)):
            samples[stage].append(round(seconds * 1000.0, 4))
        emit("progress", str(i + 1))
    return {"samples_ms": samples, "peak_rss_mib": round(peak_rss_mib(), 2), "rss_end": rss_split_mib()}


def run_tflite(job: dict) -> dict:
    """int8 or float32 TFLite through the lean runtime, exactly as classify runs it."""
    import edge_birads.cli  # noqa: F401  (a classify process has the CLI loaded too)
    from edge_birads.classifier import Classifier, to_prediction
    from edge_birads.decode import read_file
    from edge_birads.errors import InputError, ModelError
    from edge_birads.preprocess import prepare

    try:
        classifier = Classifier(job["model"], threads=job["threads"])
    except ModelError as exc:
        raise WorkerError(str(exc)) from None
    spec = classifier.card.preprocessing

    def classify_one(path: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        try:
            image = read_file(path, classifier.limits, for_model=True)  # as Classifier.classify_file reads it
        except InputError as exc:
            raise WorkerError(str(exc)) from None
        t1 = time.perf_counter()
        tensor = prepare(image, spec)
        t2 = time.perf_counter()
        to_prediction(classifier.predict(tensor), classifier.card)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    result = timed_loop(job, classify_one)
    result["runtime"] = classifier.runtime
    return result


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

    Read with the lean interpreter before TensorFlow is imported. Kernels come
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


class WorkerError(Exception):
    """An engine that cannot run; reported to the parent as one line."""


JOBS = {"tflite": run_tflite, "keras": run_keras, "prepare": run_prepare}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])
    try:
        result = JOBS[job["kind"]](job)
    except WorkerError as exc:
        emit("error", " ".join(str(exc).split()))
        return 3
    except ImportError as exc:
        emit("error", f"cannot import {exc.name or exc}")
        return 3
    emit("result", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
