"""Rows of the pretrained ablation that need no retraining: a row's models converted again (flip TTA in the graph,
another int8 activation quantization), and the frozen-feature logistic regression.

    python -m convert pretrained reconvert --source RUNS/mnv2-512 --out RUNS/mnv2-512-flip --flip
    python -m convert pretrained reconvert --source RUNS/mnv2-512-whole-lrinit --out RUNS/mnv2-512-whole-lrinit-dyn --activations dynamic
    python -m convert pretrained frozen-lr --out RUNS/frozen-lr
    python -m convert pretrained average --members RUNS/mnv2-512,RUNS/frozen-lr --out RUNS/mnv2-512+frozen-lr
    python -m convert pretrained int8-layers --source RUNS/mnv2-512-whole-lrinit --out RUNS/int8-layers
    python -m convert pretrained int8-table --doc docs/ablation.md   # from docs/results/int8-layers

Each writes the ablation's per-fold layout (``fold{k}_int8.npz``: test and
validation outputs, threshold chosen on the validation patients), so
``convert.training.pretrained archive / collect / table`` treat them as any row.
They call the recipe's pipeline (``convert.training.pretrained``); nothing here trains
the network.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from convert.data.lesion_data import load_pool
from convert.data.split import FoldProtocol, fold_split
from convert.evaluation.metrics import threshold_for_sensitivity
from convert.experiments.ensemble_cv import combine
from convert.training.paper_cv import fold_images, representative, score_fold
from convert.training.pretrained import (
    PretrainedConfig,
    build_model,
    classifier,
    fit_logistic,
    fold_model,
    from_sources,
    frozen_features,
    run_config,
)
from convert.training.train_lesion import DEFAULT_CACHE, collect_cv


def with_flip_tta(model):
    """One graph that averages the probabilities of the image and its left-right mirror."""
    import keras
    from keras import layers

    image = keras.Input(model.input_shape[1:], name="image")
    mirrored = layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="mirror")(image)
    out = layers.Average(name="flip_tta")([model(image), model(mirrored)])
    return keras.Model(image, out, name=model.name + "_flip_tta")


def reconvert_row(source: Path, out: Path, flip: bool = False, activations: str | None = None, folds: FoldProtocol | None = None) -> dict:
    """Every finished fold of ``source`` (same weights) converted again and scored as int8; resumable.

    ``flip`` puts flip test-time augmentation in the graph; ``activations`` overrides the source's int8
    activation quantization (``convert.evaluation.export.INT8_ACTIVATIONS``).
    """
    from convert.evaluation.export import TfliteModel, keras_predict, to_tflite_int8
    from convert.training.paper_cv import write_parity

    folds = folds or FoldProtocol()
    source_cfg = run_config(source)
    cfg = replace(source_cfg, int8_activations=activations or source_cfg.int8_activations)
    changes = (["flip TTA in the graph"] if flip else []) + ([f"int8 activations {cfg.int8_activations}"] if activations else [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"pretrained_config": asdict(cfg), "folds": asdict(folds),
                                                 "experiment": f"{' and '.join(changes) or 'converted again'}: {source.name}'s fold models"}, indent=1))
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    for fold in range(folds.folds):
        weights = source / f"fold{fold}.weights.h5"
        if not weights.exists() or (out / f"fold{fold}_int8.npz").exists():
            continue
        train_idx, val_idx, test_idx = fold_split(pool, folds, fold)
        seed = cfg.seed + fold
        model = fold_model(cfg, source, fold)
        graph = with_flip_tta(model) if flip else model
        images = representative(pool, train_idx, seed) if cfg.int8_activations == "calibrated" else None
        runner = TfliteModel(to_tflite_int8(graph, images, cfg.int8_activations))
        predictors = {"": lambda x: keras_predict(graph, x, batch_size=8), "_int8": runner.predict}
        score_fold(pool, fold, val_idx, test_idx, predictors, folds.referral_sensitivity, out, print)
        history = json.loads((source / f"fold{fold}_history.json").read_text())
        (out / f"fold{fold}_history.json").write_text(json.dumps({"training_seconds": history.get("training_seconds"),
                                                                  "note": "the source row's training; converting adds none"}))
        print(json.dumps({"fold": fold, "row": out.name, "done": True}), flush=True)
    write_parity(out, folds.folds)
    collect_cv(pool, out, folds)
    return collect_cv(pool, out, folds, suffix="_int8")


# ------------------------------------------------------------------ the frozen-feature floor

def frozen_lr_row(out: Path, cfg: PretrainedConfig | None = None, folds: FoldProtocol | None = None) -> dict:
    """Frozen features + logistic regression through the ablation's folds (a score-only row)."""
    cfg, folds = cfg or PretrainedConfig(), folds or FoldProtocol()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"pretrained_config": asdict(cfg), "folds": asdict(folds),
                                                 "experiment": "frozen ImageNet block-13 features (mean, max, top-5% mean) + L2 logistic regression, "
                                                               "C from {0.001, 0.01, 0.1, 1} by a patient-grouped inner CV"}, indent=1))
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    x = frozen_features(cfg, pool)
    y = np.array([it.label == 2 for it in pool.items])
    patients = np.array([f"{it.source}/{it.patient_id}" for it in pool.items])
    for fold in range(folds.folds):
        train_idx, val_idx, test_idx = fold_split(pool, folds, fold)
        train_idx = from_sources(pool, train_idx, cfg.train_sources)
        model, c = fit_logistic(x[train_idx], y[train_idx], patients[train_idx])
        p_val, p_test = model.predict_proba(x[val_idx])[:, 1], model.predict_proba(x[test_idx])[:, 1]
        threshold = threshold_for_sensitivity(y[val_idx], p_val, folds.referral_sensitivity)
        np.savez(out / f"fold{fold}_int8.npz", test_idx=test_idx, probs=p_test[:, None], threshold=threshold, val_idx=val_idx,
                 val_probs=p_val[:, None], c=c)
        print(json.dumps({"fold": fold, "row": out.name, "C": c}), flush=True)
    return collect_cv(pool, out, folds, suffix="_int8")


def average_row(members: list[Path], out: Path, folds: FoldProtocol | None = None) -> dict:
    """Mean of the members' validation-standardised logits (``convert.experiments.ensemble_cv.combine``), per finished fold."""
    folds = folds or FoldProtocol()
    cfg = run_config(members[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"pretrained_config": asdict(cfg), "folds": asdict(folds), "members": [m.name for m in members],
                                                 "experiment": "mean of validation-standardised logits (no retraining)"}, indent=1))
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    for fold in range(folds.folds):
        paths = [m / f"fold{fold}_int8.npz" for m in members]
        if not all(p.exists() for p in paths):
            continue
        saved = [np.load(p) for p in paths]
        if any(not np.array_equal(s["test_idx"], saved[0]["test_idx"]) or not np.array_equal(s["val_idx"], saved[0]["val_idx"]) for s in saved):
            raise ValueError(f"fold {fold}: members hold other patients")
        val, test = combine([s["val_probs"][:, -1] for s in saved], [s["probs"][:, -1] for s in saved])
        val_mal = np.array([pool.items[i].label == 2 for i in saved[0]["val_idx"]])
        threshold = threshold_for_sensitivity(val_mal, val, folds.referral_sensitivity)
        np.savez(out / f"fold{fold}_int8.npz", test_idx=saved[0]["test_idx"], probs=test[:, None], threshold=threshold,
                 val_idx=saved[0]["val_idx"], val_probs=val[:, None])
        for name in (f"fold{fold}_history.json",):
            if (members[0] / name).exists():
                shutil.copyfile(members[0] / name, out / name)
    return collect_cv(pool, out, folds, suffix="_int8")


# The trunk's tensors int8_layer_errors follows: the stem, then the output of blocks 1, 3, 6, 8, 10 and 13.
LAYERS = ("grey_to_imagenet", "features_0_relu6", "features_1_conv_2", "features_3_add", "features_6_add", "features_8_add",
          "features_10_add", "features_13_add")


def int8_layer_errors(model, pool, train_idx: np.ndarray, images_idx: np.ndarray, seed: int, names=LAYERS) -> list[dict]:
    """Where full-integer int8 departs from float: each named tensor of ``model`` as an output of one int8 model.

    Per tensor: its int8 scale, the float values' spread and range, and the mean absolute int8-minus-float
    difference relative to that spread, on the images ``images_idx``. Calibrated as the recipe's export is.
    """
    import keras

    from convert.evaluation.export import to_tflite_int8
    from edge_birads.interpreter import make_interpreter, read_output, set_input, tensor_quantization

    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    images = fold_images(pool, images_idx)
    reference = probe.predict(images, batch_size=8, verbose=0)  # one float pass, every tensor
    interpreter, _ = make_interpreter(to_tflite_int8(probe, representative(pool, train_idx, seed)))
    source = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    by_shape = {}
    for detail in outputs:  # TFLite names its outputs its own way: match them by shape, then by error
        by_shape.setdefault(tuple(detail["shape"][1:]), []).append(detail)
    got = {d["index"]: [] for d in outputs}
    for image in images:
        set_input(interpreter, source, image)
        interpreter.invoke()
        for d in outputs:
            got[d["index"]].append(read_output(interpreter, d))
    rows = []
    for name, expected in zip(names, reference):
        candidates = by_shape[tuple(expected.shape[1:])]
        errors = [float(np.abs(np.concatenate(got[d["index"]]) - expected).mean() / expected.std()) for d in candidates]
        best = int(np.argmin(errors))  # same-shaped outputs: the one that follows this tensor
        rows.append({"tensor": name, "int8_scale": tensor_quantization(candidates[best])[0], "float_std": float(expected.std()),
                     "float_min": float(expected.min()), "float_max": float(expected.max()), "relative_error": errors[best]})
    return rows


def int8_layers_row(source: Path, out: Path, fold: int = 0, n_images: int = 32) -> list[dict]:
    """int8_layer_errors for a run's fold model and for the ImageNet trunk it started from, on that fold's test patients."""
    cfg = run_config(source)
    folds = FoldProtocol()
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    train_idx, _, test_idx = fold_split(pool, folds, fold)
    seed = cfg.seed + fold
    trained = fold_model(cfg, source, fold)
    result = []
    for label, model in (("fine-tuned", trained), ("imagenet", classifier(build_model(cfg, pretrained=True)))):
        for row in int8_layer_errors(model, pool, train_idx, test_idx[:n_images], seed):
            result.append({"model": label, **row})
            print(json.dumps(result[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_layers.json").write_text(json.dumps({"source": source.name, "fold": fold, "n_images": n_images, "layers": result}, indent=1) + "\n")
    return result


INT8_TABLE_START, INT8_TABLE_END = "<!-- int8-layers:start -->", "<!-- int8-layers:end -->"


def int8_layers_table(path: Path) -> str:
    """The archived int8_layers.json as a markdown table: relative int8 error per tensor, fine-tuned beside ImageNet."""
    record = json.loads(path.read_text())
    by_model: dict[str, dict[str, dict]] = {}
    for row in record["layers"]:
        by_model.setdefault(row["model"], {})[row["tensor"]] = row
    models = list(by_model)
    lines = ["| tensor | float std | float range | int8 scale | " + " | ".join(f"relative error, {m}" for m in models) + " |",
             "|---|---|---|---|" + "---|" * len(models)]
    first = by_model[models[0]]
    for tensor, row in first.items():
        errors = " | ".join(f"{by_model[m][tensor]['relative_error']:.3f}" for m in models)
        lines.append(f"| `{tensor}` | {row['float_std']:.3f} | [{row['float_min']:.2f}, {row['float_max']:.2f}] | {row['int8_scale']:.4f} | {errors} |")
    lines.append("")
    lines.append(f"Mean |int8 - float| / float standard deviation, on the first {record['n_images']} test images of fold "
                 f"{record['fold']} of `{record['source']}` (`{path.relative_to(path.parents[3]).as_posix()}`); the float "
                 f"columns are the {models[0]} model's.")
    return "\n".join(lines) + "\n"
