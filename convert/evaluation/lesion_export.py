"""Full-integer int8 TFLite export of the lesion whole-image model, with a parity check.

The whole-image model is the FCN plus a pooling head, converted by the one
converter (convert.evaluation.export.to_tflite_int8: batch size 1 fixed, which keeps the
graph to plain CONV/DEPTHWISE/POOL/FULLY_CONNECTED/SOFTMAX ops that
tflite-runtime 2.14 can load). Input and output are int8, calibrated with
representative images from the training patients; parity is measured on
held-out patients, and the int8 model's own outputs, run by the runtime's
code, are what the model card's metrics describe.
"""

from __future__ import annotations

import numpy as np

from convert.evaluation.evaluate import versions
from edge_birads.interpreter import batch_probabilities, make_interpreter


def representative_images(pool, indices, count: int, seed: int) -> np.ndarray:
    """``count`` training images (float [0, 1], (H, W, 1)) for int8 calibration, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices)
    pick = indices if indices.size <= count else rng.choice(indices, size=count, replace=False)
    return pool.images[np.sort(pick)].astype(np.float32)[..., None] / 255.0


def whole_image_keras(fcn, pool, head: tuple[np.ndarray, np.ndarray], smooth: int):
    """The exportable model: fixed [1, H, W, 1] input, FCN, pooling, calibrated head, softmax."""
    from convert.models.lesion_model import build_whole_image_model

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


def data_summary(pool) -> dict:
    """Images and patients of the pool, per source: counted from the data, never typed."""
    sources = sorted({it.source for it in pool.items})
    return {
        "images": len(pool.items),
        "patients": len({(it.source, it.patient_id) for it in pool.items}),
        "sources": {
            source: {"images": sum(it.source == source for it in pool.items),
                     "patients": len({it.patient_id for it in pool.items if it.source == source})}
            for source in sources
        },
        "label_mapping": "normal -> BI-RADS 1, benign -> BI-RADS 2-3, malignant -> BI-RADS 4-5 (pathology)",
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
    """The model card of a lesion-FCN export (edge_birads.card.new_card: every section of the schema)."""
    from edge_birads.card import new_card

    labels = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]
    cross_validation = None if cv_metrics is None else {
        "note": "5 models of the same recipe, each on its own held-out fold, pooled out-of-fold, with per-fold mean and sd; "
        "int8 outputs",
        "folds": cv_metrics.get("folds_done", config.get("folds")),
        "out_of_fold": cv_metrics,
    }
    return new_card(
        tflite_path,
        name=name,
        description=(
            "Lesion FCN: a 38k-parameter fully convolutional network trained on lesion patches (mini-MIAS lesion "
            "centres/radii, CBIS-DDSM mass boxes) against normal-tissue patches and mined false positives, applied to "
            "the whole preprocessed image; per-location log-odds are soft-max-pooled (2x2 mean, global max) and a "
            "2->3 calibrated head gives the 3 labels. Full-integer int8."
        ),
        labels=labels,
        malignant_label=labels[2],
        preprocessing=pool.spec.to_dict(),
        referral=referral,
        training={
            "command": command,
            "config": config,
            "seed": config.get("seed"),
            "best_epoch": best_epoch,
            "data": {
                **data_summary(pool),
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
        metrics={
            "note": "int8 TFLite outputs. 'test': this exact model on its held-out test patients (never seen in training, "
            "epoch choice, head calibration or threshold choice). 'recipe_cross_validation': models of the same recipe, "
            "each on its own held-out fold. Per source; CIs are 95% patient-level bootstrap (2000 resamples). "
            "mini-MIAS: malignant vs rest (normal + benign); CBIS-DDSM: malignant vs benign (no normals).",
            "test": test_metrics,
        },
        cross_validation=cross_validation,
        initialisation={"source": "random: Keras default initialisers, seeded from the configuration's seed; no pretrained weights"},
        versions=versions(),
        parity=parity_result,
        conversion={"batch_size_fixed": 1, "n_representative": 100, "op_versions": parity_result.get("op_versions"),
                    "tflite_runtime_2_14_problems": parity_result.get("tflite_runtime_2_14_problems")},
    )
