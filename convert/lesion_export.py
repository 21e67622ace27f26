"""Full-integer int8 TFLite export of the lesion whole-image model, with a parity check.

The whole-image model is the FCN plus a pooling head, converted by the one
converter (convert.export.to_tflite_int8: batch size 1 fixed, which keeps the
graph to plain CONV/DEPTHWISE/POOL/FULLY_CONNECTED/SOFTMAX ops that
tflite-runtime 2.14 can load). Input and output are int8, calibrated with
representative images from the training patients; parity is measured on
held-out patients, and the int8 model's own outputs, run by the runtime's
code, are what the model card's metrics describe.
"""

from __future__ import annotations

import numpy as np

from convert.evaluate import versions
from edge_birads import DISCLAIMER
from edge_birads.interpreter import batch_probabilities, make_interpreter, model_tensors, tensor_spec


def representative_images(pool, indices, count: int, seed: int) -> np.ndarray:
    """``count`` training images (float [0, 1], (H, W, 1)) for int8 calibration, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices)
    pick = indices if indices.size <= count else rng.choice(indices, size=count, replace=False)
    return pool.images[np.sort(pick)].astype(np.float32)[..., None] / 255.0


def whole_image_keras(fcn, pool, head: tuple[np.ndarray, np.ndarray], smooth: int):
    """The exportable model: fixed [1, H, W, 1] input, FCN, pooling, calibrated head, softmax."""
    from convert.lesion_model import build_whole_image_model

    model = build_whole_image_model(fcn, pool.spec.height, pool.spec.width, smooth=smooth, batch_size=1)
    model.get_layer("head").set_weights([head[0].astype(np.float32), head[1].astype(np.float32)])
    return model


def run_int8(flatbuffer: bytes, pool, indices) -> np.ndarray:
    """Probabilities (N, 3) of pool images through the runtime's own batch function, dequantized and not
    renormalised (the lesion rows' archived figures were computed so; an int8 softmax sums to 1 within a step)."""
    images = (pool.images[i].astype(np.float32)[..., None] / 255.0 for i in indices)
    return batch_probabilities(make_interpreter(flatbuffer)[0], images, renormalised=False)


def keras_probs(model, pool, indices, batch: int = 1) -> np.ndarray:
    return np.stack([np.asarray(model(pool.images[i : i + 1].astype(np.float32)[..., None] / 255.0, training=False))[0] for i in indices])


def split_summary(pool, indices) -> dict:
    chosen = [pool.items[i] for i in indices]
    return {
        "images": len(chosen),
        "patients": len({(it.source, it.patient_id) for it in chosen}),
        "per_source_label": {
            source: {label: sum(1 for it in chosen if it.source == source and it.label == k) for k, label in enumerate(("BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"))}
            for source in sorted({it.source for it in pool.items})
        },
    }


def build_card(
    tflite_path,
    *,
    name: str,
    pool,
    config: dict,
    split: dict,
    referral: dict,
    test_metrics: dict,
    cv_metrics: dict | None,
    parity_result: dict,
    architecture: str,
    command: str,
    best_epoch: int,
) -> dict:
    """The model card (the fields of card_example.json) for a lesion-FCN export."""
    from pathlib import Path

    from edge_birads.card import CARD_SCHEMA_VERSION, decision_rule, sha256_of

    tflite_path = Path(tflite_path)
    tensors = model_tensors(make_interpreter(tflite_path)[0])
    quant = {"input": tensor_spec(tensors.input), "output": tensor_spec(tensors.probabilities)}
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "description": (
            "Lesion FCN: a 38k-parameter fully convolutional network trained on lesion patches (mini-MIAS lesion "
            "centres/radii, CBIS-DDSM mass boxes) against normal-tissue patches and mined false positives, applied to "
            "the whole preprocessed image; per-location log-odds are soft-max-pooled (2x2 mean, global max) and a "
            "2->3 calibrated head gives the 3 labels. Full-integer int8."
        ),
        "labels": ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"],
        "malignant_label": "BI-RADS 4-5",
        "input": quant["input"],
        "output": quant["output"],
        "preprocessing": pool.spec.to_dict(),
        "referral": {**referral, "decision_rule": decision_rule("BI-RADS 4-5", referral["threshold"])},
        "training": {
            "command": command,
            "config": config,
            "seed": config.get("seed"),
            "best_epoch": best_epoch,
            "data": {
                "sources": {"mini-mias": "242 images, 121 patients (../shared/data/mini-mias)", "cbis-ddsm-mass": "1231 images, 691 patients (../shared/data/cbis-ddsm-mass)"},
                "label_mapping": "normal -> BI-RADS 1, benign -> BI-RADS 2-3, malignant -> BI-RADS 4-5 (pathology)",
                "annotations": "mini-MIAS lesion centres and radii (origin bottom-left, row = 1023 - y); CBIS-DDSM mass boxes; "
                "mapped through the breast crop and resize of edge_birads.preprocess.prepare",
            },
            "split": split,
            "architecture": architecture,
            "loss": "per-location 3-way cross-entropy (normal / benign / malignant), benign and malignant locations "
            "equally weighted, normal locations weighted normal_weight_ratio times a lesion class",
            "optimizer": f"AdamW lr {config.get('learning_rate')} cosine decay, weight decay {config.get('weight_decay')}",
            "epochs": config.get("epochs"),
        },
        "metrics": {
            "note": "int8 TFLite outputs. 'test': this exact model on its held-out test patients (fold 0 of a 5-fold "
            "patient-level split: never seen in training, epoch choice, head calibration or threshold choice). "
            "'cross_validation': 5 models of the same recipe, each on its own held-out fold, pooled out-of-fold, "
            "with per-fold mean and sd. Per source; CIs are 95% patient-level bootstrap (2000 resamples). "
            "mini-MIAS: malignant vs rest (normal + benign); CBIS-DDSM: malignant vs benign (no normals).",
            "test": test_metrics,
            "cross_validation": cv_metrics,
        },
        "parity": parity_result,
        "conversion": {"batch_size_fixed": 1, "n_representative": 100, "op_versions": parity_result.get("op_versions"),
                       "tflite_runtime_2_14_problems": parity_result.get("tflite_runtime_2_14_problems")},
        "sha256": sha256_of(tflite_path),
        "size_bytes": tflite_path.stat().st_size,
        "versions": versions(),
        "intended_use": DISCLAIMER,
    }

