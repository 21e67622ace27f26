"""Build the paper's network (and a GAP-head variant) with RANDOM weights, as int8 TFLite + card.

For speed and memory measurements only: latency and RSS do not depend on the
weight values, so these stand in for the trained model while it is being
trained, and let the GAP-head variant (issue 6) be measured before it exists.
Their predictions are meaningless; the cards say so. Needs TensorFlow ([train]).

    python benchmarks/make_test_models.py --out /tmp/bench-models

writes paper-cnn.tflite/.json (Flatten -> Dense 128 head, ~11.2 M parameters)
and paper-cnn-gap.tflite/.json (GlobalAveragePooling -> Dense 128, ~0.1 M).
The int8 conversion mirrors the project's: full-integer int8 in/out, batch
size fixed to 1, representative data of random [0, 1] images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

LABELS = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]


def build(head: str):
    import keras

    inputs = keras.Input((224, 224, 1), batch_size=1)
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x) if head == "flatten" else keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def to_int8(model) -> bytes:
    import tensorflow as tf

    def representative():
        rng = np.random.default_rng(0)
        for _ in range(50):
            yield [rng.random((1, 224, 224, 1), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, head in (("paper-cnn", "flatten"), ("paper-cnn-gap", "gap")):
        keras.utils.set_random_seed(args.seed)
        model = build(head)
        flat = to_int8(model)
        (args.out / f"{name}.tflite").write_bytes(flat)
        card = {
            "schema_version": 1,
            "name": f"{name}-random-weights",
            "description": "RANDOM weights, for speed and memory benchmarks only; predictions are meaningless.",
            "labels": LABELS,
            "malignant_label": LABELS[-1],
            "input": {"shape": [1, 224, 224, 1], "dtype": "int8"},
            "preprocessing": {"height": 224, "width": 224, "interpolation": "area", "crop_to_breast": False,
                              "clahe_clip_limit": None, "clahe_tile_grid": [8, 8]},
            "referral": {"threshold": 0.5, "method": "none (random weights)"},
            "parameters": int(model.count_params()),
            "keras_config": json.loads(model.to_json()),
            "sha256": hashlib.sha256(flat).hexdigest(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "intended_use": "Benchmarking only.",
        }
        (args.out / f"{name}.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
        print(f"{args.out / name}.tflite: {model.count_params():,} parameters, {len(flat):,} bytes")


if __name__ == "__main__":
    main()
