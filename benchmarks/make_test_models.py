"""Build the paper's network (and a GAP-head variant) with RANDOM weights, as int8 TFLite + card.

For speed and memory measurements only: latency and RSS do not depend on the
weight values, so these stand in for the trained model while it is being
trained, and let the GAP-head variant (issue 6) be measured before it exists.
Their predictions are meaningless; the cards say so. Needs TensorFlow ([train]).

    python benchmarks/make_test_models.py --out /tmp/bench-models

writes paper-cnn.tflite/.json (Flatten -> Dense 128 head, ~11.2 M parameters)
and paper-cnn-gap.tflite/.json (GlobalAveragePooling -> Dense 128, ~0.1 M).
The network and the int8 conversion are convert/'s own (convert.models.paper_cnn,
convert.evaluation.export): full-integer int8 in/out, batch size fixed to 1; the
representative data are random [0, 1] images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # convert/ is run from the checkout

LABELS = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]


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
    from convert.evaluation.export import to_tflite_int8
    from convert.models.paper_cnn import build_paper_cnn

    representative = np.random.default_rng(args.seed).random((50, 224, 224, 1), dtype=np.float32)
    for name, head in (("paper-cnn", "flatten"), ("paper-cnn-gap", "gap")):
        keras.utils.set_random_seed(args.seed)
        model = build_paper_cnn(len(LABELS), head=head, seed=args.seed)
        flat = to_tflite_int8(model, representative)
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
