"""Train and cross-validate the lesion FCN; build its whole-image model.

Why: the malignant class is what the paper's whole-image network missed.
Here the FCN learns from lesion annotations (patches), the whole-image model
max-pools its maps, and every figure is measured on patients the model never
saw: k-fold by patient within each source (mini-MIAS and CBIS-DDSM differ in
scanner, resolution and stretch, and CBIS has no normals, so pooled figures
would reward telling the sources apart).

    # everything: 5-fold CV, int8 conversion + evaluation of every fold, fold 0's model shipped with its card
    python -m convert build --config fcn-512x256-normal3-mined --out RUN_DIR/model/lesion --work RUN_DIR [--set fcn_width=32]
    # a row of the ablation through the one cross-validation runner (convert.training.recipes.run_cv; this module's RECIPE)
    python -m convert cv --config fcn-512x256-normal3-mined --out RUN_DIR [--only 0,1]
    python -m convert ablation pooling --config fcn-512x256-normal3-mined --out RUN_DIR   # other whole-image poolings, same FCNs

Within every training run, 12.5% of the training patients (the paper's
proportion) are held out as validation: they choose the epoch, calibrate the
2 -> 3 head and set the referral threshold. Test folds are touched once.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from convert.data.lesion_data import LABELS, PatchConfig, PreparedPool, breast_of, build_patch_batch, epoch_centres, load_pool
from convert.data.split import FoldProtocol, fold_split, patient_folds, validation_split
from convert.evaluation.metrics import (
    bootstrap_auc_ci,
    bootstrap_indices,
    roc_auc,
    sensitivity_at_specificity,
    threshold_for_sensitivity,
)
from convert.training.recipes import Fitted, KerasRecipe
from edge_birads.preprocess import PreprocessSpec

MIAS = "mini-mias"
CBIS = "cbis-ddsm-mass"
# Preprocessed pools (~0.2-0.4 GB per spec) live outside the repository.
DEFAULT_CACHE = Path(os.environ.get("EDGE_BIRADS_CACHE", Path.home() / ".cache" / "edge-birads" / "lesion"))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written next to its results."""

    height: int = 512
    width: int = 512
    crop_to_breast: bool = True
    clahe_clip_limit: float | None = None
    fcn_width: int = 16
    dropout: float = 0.2
    smooth: int = 2
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    class_balance: bool = True
    referral_sensitivity: float = 0.9
    validation_fraction: float = 0.125
    folds: int = 5
    seed: int = 0
    select_on: str = "mean_auc"  # "mean_auc" of the two sources' validation AUCs, or "last"
    normal_weight_ratio: float = 1.0  # normal locations' total weight / a lesion class's total weight
    mine_from: int = 0  # epoch (1-based) from which hard negatives are mined; 0 = never
    mine_top_k: int = 3  # hard negatives per training image and mining pass
    patch: PatchConfig = field(default_factory=PatchConfig)

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(height=self.height, width=self.width, crop_to_breast=self.crop_to_breast, clahe_clip_limit=self.clahe_clip_limit)

    def protocol(self) -> FoldProtocol:
        """The folds of the FCN's own cross-validation (``run_cv``, ``int8_cv``, ``export_fold``): its seed also seeds training."""
        return FoldProtocol(self.folds, self.seed, self.validation_fraction, self.referral_sensitivity)


def setup_tensorflow(seed: int, threads: int = 2):
    """Seeded, thread-capped TensorFlow (the machine's 2 cores are shared)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process (tests, a second call): keep its threads
        pass
    keras.utils.set_random_seed(seed)
    return tf, keras


# ---------------------------------------------------------------- metrics

# Patient-level bootstrap resamples behind every confidence interval of the lesion and paper CVs.
BOOTSTRAP = 2000

def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """``convert.evaluation.metrics.roc_auc`` in (scores, labels) order, NaN when a class is absent so per-fold means can skip it."""
    value = roc_auc(positive, scores)
    return float("nan") if value is None else value


def bootstrap_rate(flags, patients, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Patient-level bootstrap 95% CI of a proportion (sensitivity or specificity)."""
    flags = np.asarray(flags, float)
    if flags.size == 0:
        return float("nan"), float("nan")
    values = [flags[idx].mean() for idx in bootstrap_indices(flags.size, n, seed, groups=patients)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def source_metrics(probs: np.ndarray, labels: np.ndarray, patients: np.ndarray, flags: np.ndarray, seed: int = 0) -> dict:
    """Malignant-vs-rest AUC with CI, referral sensitivity/specificity with CIs, per-class recall.

    ``probs`` is (N, 3) class probabilities, or (N, 1) when a model gives only
    a malignancy score (an ensemble): then the per-class figures are omitted.
    """
    malignant = labels == 2
    score = probs[:, -1]
    out = {"n_images": int(labels.size), "n_malignant": int(malignant.sum()), "n_patients": int(np.unique(patients).size)}
    out["auc_malignant_vs_rest"] = auc(score, malignant)
    out["auc_ci95"] = bootstrap_auc_ci(malignant, score, n_boot=BOOTSTRAP, seed=seed, groups=patients)
    out["sensitivity_at_70_specificity"] = sensitivity_at_specificity(malignant, score, 0.70)
    out["referral_sensitivity"] = float(flags[malignant].mean()) if malignant.any() else float("nan")
    out["referral_sensitivity_ci95"] = bootstrap_rate(flags[malignant], patients[malignant], seed=seed)
    out["referral_specificity"] = float((~flags[~malignant]).mean()) if (~malignant).any() else float("nan")
    out["referral_specificity_ci95"] = bootstrap_rate(~flags[~malignant], patients[~malignant], seed=seed)
    if probs.shape[1] != len(LABELS):
        return out
    predicted = probs.argmax(axis=1)
    out["recall_per_class"] = {LABELS[c]: float((predicted[labels == c] == c).mean()) for c in range(3) if (labels == c).any()}
    if (labels == 0).any() and (labels > 0).any():
        out["auc_abnormal_vs_normal"] = auc(1.0 - probs[:, 0], labels > 0)
    return out


# ---------------------------------------------------------------- training

def class_weighted(y: np.ndarray, w: np.ndarray, balance: bool, normal_ratio: float = 1.0) -> np.ndarray:
    """Per-location weights: benign and malignant carry equal total weight, normal ``normal_ratio`` times that.

    A whole-image max over ~500 locations needs a very low per-location false
    positive rate, so normal tissue may deserve more than an equal share.
    """
    if not balance:
        return w
    out = w.copy()
    totals = [float(w[y == c].sum()) for c in range(3)]
    lesion = [t for t in totals[1:] if t > 0]
    unit = sum(lesion) / len(lesion) if lesion else 1.0
    for c, total in enumerate(totals):
        if total > 0:
            out[y == c] *= (unit * (normal_ratio if c == 0 else 1.0)) / total
    return out


def mined_pairs(fcn, pool: PreparedPool, indices, cfg: TrainConfig, rng: np.random.Generator, batch: int = 16):
    """Hard-negative centres from the current FCN's maps over the training images."""
    from convert.data.lesion_data import hard_negative_centres

    pairs = []
    indices = np.asarray([i for i in indices if not pool.items[i].unlocated_finding])
    for start in range(0, indices.size, batch):
        chunk = indices[start : start + batch]
        maps = np.asarray(fcn(pool.images[chunk].astype(np.float32)[..., None] / 255.0, training=False))
        for index, m in zip(chunk, maps):
            pairs.extend((int(index), c) for c in hard_negative_centres(m, pool.lesions[index], cfg.patch, cfg.mine_top_k, rng))
    return pairs


def make_loss(keras):
    ops = keras.ops

    def location_loss(y_true, y_pred):
        """Weighted per-location 3-way cross-entropy over [0, benign, malignant] log-odds."""
        cls = ops.cast(y_true[..., 0], "int32")
        weight = y_true[..., 1]
        logits = ops.concatenate([ops.zeros_like(y_pred[..., :1]), y_pred], axis=-1)
        ce = keras.losses.sparse_categorical_crossentropy(cls, logits, from_logits=True)
        return ops.sum(ce * weight) / (ops.sum(weight) + 1e-6)

    return location_loss


def image_scores(fcn, pool: PreparedPool, indices, smooth: int, batch: int = 16) -> np.ndarray:
    """Pooled (benign, malignant) log-odds per image: (N, 2)."""
    import keras

    from convert.models.lesion_model import pooled_scores

    inputs = keras.Input(shape=(pool.spec.height, pool.spec.width, 1))
    model = keras.Model(inputs, pooled_scores(fcn(inputs), smooth))
    out = []
    indices = np.asarray(indices)
    for start in range(0, indices.size, batch):
        chunk = indices[start : start + batch]
        x = pool.images[chunk].astype(np.float32)[..., None] / 255.0
        out.append(np.asarray(model(x, training=False)))
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def rest_logodds(scores: np.ndarray) -> np.ndarray:
    """Malignant vs (normal or benign) log-odds from the identity head: b - log(1 + e^a)."""
    return scores[:, 1] - np.logaddexp(0.0, scores[:, 0])


def validation_auc(scores: np.ndarray, pool: PreparedPool, indices) -> dict:
    labels = np.array([pool.items[i].label for i in indices])
    sources = np.array([pool.items[i].source for i in indices])
    s = rest_logodds(scores)
    out = {}
    for source in pool.sources:
        m = sources == source
        out[source] = auc(s[m], labels[m] == 2)
    values = [v for v in out.values() if not np.isnan(v)]
    out["mean"] = float(np.mean(values)) if values else float("nan")
    return out


def train_fcn(pool: PreparedPool, train_idx, val_idx, cfg: TrainConfig, log=print):
    """Train the FCN on patches of ``train_idx``; choose the epoch on whole images of ``val_idx``."""
    tf, keras = setup_tensorflow(cfg.seed)
    from convert.models.lesion_model import build_fcn

    fcn = build_fcn(cfg.fcn_width, cfg.dropout)
    rng = np.random.default_rng(cfg.seed)
    steps_guess = None
    history = []
    best = (-np.inf, None, -1)
    optimizer = None
    mined: list = []
    for epoch in range(cfg.epochs):
        t0 = time.time()
        if cfg.mine_from and epoch + 1 >= cfg.mine_from:
            mined = mined_pairs(fcn, pool, train_idx, cfg, rng)
        pairs = epoch_centres(pool, train_idx, cfg.patch, rng) + mined
        order = rng.permutation(len(pairs))
        x, y, w = build_patch_batch(pool, [pairs[i] for i in order], cfg.patch, rng)
        w = class_weighted(y, w, cfg.class_balance, cfg.normal_weight_ratio)
        target = np.stack([y.astype(np.float32), w], axis=-1)
        if optimizer is None:
            per_epoch = len(pairs) * (1.0 + (cfg.mine_top_k * 0.1 if cfg.mine_from else 0.0))
            steps_guess = int(np.ceil(per_epoch / cfg.batch_size)) * cfg.epochs
            schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps_guess, alpha=0.02)
            optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
            fcn.compile(optimizer=optimizer, loss=make_loss(keras))
        fit = fcn.fit(x, target, batch_size=cfg.batch_size, epochs=1, verbose=0, shuffle=False)
        loss = float(fit.history["loss"][-1])
        entry = {"epoch": epoch + 1, "loss": loss, "patches": len(pairs), "mined": len(mined), "seconds_train": round(time.time() - t0, 1)}
        if len(val_idx):
            scores = image_scores(fcn, pool, val_idx, cfg.smooth)
            entry["val_auc"] = validation_auc(scores, pool, val_idx)
            criterion = entry["val_auc"]["mean"] if cfg.select_on == "mean_auc" else epoch
            if criterion >= best[0]:
                best = (criterion, fcn.get_weights(), epoch + 1)
        entry["seconds"] = round(time.time() - t0, 1)
        history.append(entry)
        log(json.dumps(entry))
    if best[1] is not None:
        fcn.set_weights(best[1])
    return fcn, history, best[2]


def fit_head(scores: np.ndarray, labels: np.ndarray, c: float = 1.0, iterations: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression of the 3 labels on the 2 pooled scores (the Dense head's weights).

    Objective as scikit-learn's LogisticRegression(C=c): summed log-loss plus
    ||W||^2 / (2c), intercepts unpenalised; solved here by gradient descent
    with backtracking (9 parameters) so training needs no scikit-learn.
    Fitted on validation images: the FCN has seen the training images'
    lesions, so their scores are over-confident. Classes absent from
    ``labels`` keep the identity head's logits.
    """
    kernel = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)
    bias = np.zeros(3, dtype=np.float64)
    present = np.unique(labels)
    if present.size < 2:
        return kernel.astype(np.float32), bias.astype(np.float32)
    x = np.asarray(scores, dtype=np.float64)
    onehot = (np.asarray(labels)[:, None] == present[None, :]).astype(np.float64)
    w = np.zeros((x.shape[1], present.size))
    b = np.zeros(present.size)

    def objective(w, b):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -(onehot * logp).sum() + (w * w).sum() / (2.0 * c), np.exp(logp)

    value, p = objective(w, b)
    step = 1.0
    for _ in range(iterations):
        grad_w = x.T @ (p - onehot) + w / c
        grad_b = (p - onehot).sum(axis=0)
        if max(np.abs(grad_w).max(), np.abs(grad_b).max()) < 1e-7:
            break
        while step > 1e-12:
            new_w, new_b = w - step * grad_w, b - step * grad_b
            new_value, new_p = objective(new_w, new_b)
            if new_value <= value - 0.5 * step * ((grad_w**2).sum() + (grad_b**2).sum()):
                w, b, value, p = new_w, new_b, new_value, new_p
                step *= 2.0
                break
            step *= 0.5
    if present.size == 2:  # only the difference of two logits matters; keep it, centred like a binary fit
        w = w - w.mean(axis=1, keepdims=True)
        b = b - b.mean()
    for column, cls in enumerate(present):
        kernel[:, cls] = w[:, column]
        bias[cls] = b[column]
    return kernel.astype(np.float32), bias.astype(np.float32)


def head_probs(scores: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = scores @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_calibrated(pool: PreparedPool, train_idx, val_idx, cfg: TrainConfig, log=print) -> dict:
    """The FCN trained on ``train_idx``; its epoch and its 2 -> 3 head chosen on the whole images of ``val_idx``."""
    fcn, history, best_epoch = train_fcn(pool, train_idx, val_idx, cfg, log)
    val_scores = image_scores(fcn, pool, val_idx, cfg.smooth)
    val_labels = np.array([pool.items[i].label for i in val_idx])
    kernel, bias = fit_head(val_scores, val_labels)
    return {"fcn": fcn, "history": history, "best_epoch": best_epoch, "head": (kernel, bias), "val_probs": head_probs(val_scores, kernel, bias)}


def train_and_calibrate(pool: PreparedPool, train_all: np.ndarray, cfg: TrainConfig, log=print) -> dict:
    """One full training run: FCN, head and threshold from a patient-level validation split."""
    train_idx, val_idx = validation_split(pool, train_all, cfg.validation_fraction, cfg.seed)
    run = fit_calibrated(pool, train_idx, val_idx, cfg, log)
    val_labels = np.array([pool.items[i].label for i in val_idx])
    threshold = threshold_for_sensitivity(val_labels == 2, run["val_probs"][:, 2], cfg.referral_sensitivity)
    return {**run, "threshold": threshold, "train_idx": train_idx, "val_idx": val_idx}


class LesionRecipe(KerasRecipe):
    """The lesion FCN as a recipe: patch-trained FCN, whole-image max pooling, a 2 -> 3 head fitted on validation images."""

    name = "lesion-fcn"
    config_key = "lesion_config"
    config_type = TrainConfig

    def spec(self, cfg: TrainConfig) -> PreprocessSpec:
        return cfg.spec()

    def build(self, cfg: TrainConfig, seed: int, fcn=None):
        """The whole-image model (identity head) around ``fcn``, a new FCN when None."""
        from convert.models.lesion_model import build_fcn, build_whole_image_model

        return build_whole_image_model(fcn or build_fcn(cfg.fcn_width, cfg.dropout), cfg.height, cfg.width, smooth=cfg.smooth)

    def fit(self, cfg: TrainConfig, pool: PreparedPool, train_idx, val_idx, seed: int, log, prefix: Path) -> Fitted:
        run = fit_calibrated(pool, train_idx, val_idx, replace(cfg, seed=seed), log)
        run["fcn"].save_weights(f"{prefix}.weights.h5")  # the FCN alone: what pooling_ablation reads
        model = self.build(cfg, seed, run["fcn"])
        model.get_layer("head").set_weights([w.astype(np.float32) for w in run["head"]])
        return Fitted(model, {"history": run["history"], "best_epoch": run["best_epoch"]})

    def calibration(self, pool: PreparedPool, train_idx, seed: int) -> np.ndarray:
        from convert.evaluation.lesion_export import representative_images

        return representative_images(pool, train_idx, 100, seed)  # as int8_cv calibrated the FCN rows


RECIPE = LesionRecipe()


def pool_metrics(pool: PreparedPool, indices, probs, flags, seed: int = 0) -> dict:
    labels = np.array([pool.items[i].label for i in indices])
    sources = np.array([pool.items[i].source for i in indices])
    patients = np.array([f"{pool.items[i].source}/{pool.items[i].patient_id}" for i in indices])
    out = {}
    for source in pool.sources:
        m = sources == source
        if m.any():
            out[source] = source_metrics(probs[m], labels[m], patients[m], flags[m], seed)
    return out


@contextmanager
def run_log(out_dir: Path):
    """A ``log(message)`` that prints a line and appends it to OUT_DIR/log.jsonl.

    Why: a cross-validation runs for hours on shared cores; the file keeps
    the record when the terminal is gone, and resumed runs append to it.
    """
    with open(out_dir / "log.jsonl", "a") as handle:

        def log(message: str) -> None:
            print(message, flush=True)
            handle.write(message + "\n")
            handle.flush()

        yield log


def headline(metrics: dict) -> dict:
    """The AUC and referral figures of ``pool_metrics`` output, per source: what a fold's log line shows."""
    return {source: {k: v for k, v in m.items() if k.startswith(("auc", "referral"))} for source, m in metrics.items()}


def run_cv(cfg: TrainConfig, out_dir: Path, only_folds: list[int] | None = None) -> dict:
    """k-fold by patient: out-of-fold probabilities for every image, then per-source metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    folds = patient_folds(pool, cfg.folds, cfg.seed)
    with run_log(out_dir) as log:
        for fold in range(cfg.folds):
            if only_folds is None or fold in only_folds:
                cv_fold(cfg, pool, folds, fold, out_dir, log)
    return collect_cv(pool, out_dir, cfg.protocol())


def cv_fold(cfg: TrainConfig, pool: PreparedPool, folds: np.ndarray, fold: int, out_dir: Path, log) -> None:
    """Train, calibrate and score one fold (skipped when its predictions exist: runs resume)."""
    path = out_dir / f"fold{fold}.npz"
    if path.exists():
        log(f"fold {fold}: done already ({path})")
        return
    test_idx = np.nonzero(folds == fold)[0]
    train_all = np.nonzero(folds != fold)[0]
    log(f"fold {fold}: train+val {train_all.size} images, test {test_idx.size}")
    run = train_and_calibrate(pool, train_all, replace(cfg, seed=cfg.seed + fold), log)
    scores = image_scores(run["fcn"], pool, test_idx, cfg.smooth)
    probs = head_probs(scores, *run["head"])
    run["fcn"].save_weights(str(out_dir / f"fold{fold}.weights.h5"))
    np.savez(
        path, test_idx=test_idx, scores=scores, probs=probs, threshold=run["threshold"], best_epoch=run["best_epoch"],
        kernel=run["head"][0], bias=run["head"][1],
    )
    (out_dir / f"fold{fold}_history.json").write_text(json.dumps(run["history"], indent=1))
    fold_metrics = pool_metrics(pool, test_idx, probs, probs[:, 2] >= run["threshold"])
    log(json.dumps({"fold": fold, "best_epoch": run["best_epoch"], "threshold": run["threshold"], "test": headline(fold_metrics)}))


def collect_cv(pool: PreparedPool, out_dir: Path, cfg: TrainConfig, suffix: str = "") -> dict:
    """Pool the out-of-fold predictions of finished folds into per-source metrics (+ per-fold spread).

    ``suffix`` "_int8" collects the int8 TFLite models' predictions instead of the float ones.
    """
    indices, probs, flags, per_fold = [], [], [], []
    for fold in range(cfg.folds):
        path = out_dir / f"fold{fold}{suffix}.npz"
        if not path.exists():
            continue
        data = np.load(path)
        idx, p = data["test_idx"], data["probs"]
        f = p[:, -1] >= float(data["threshold"])
        indices.append(idx)
        probs.append(p)
        flags.append(f)
        per_fold.append(pool_metrics(pool, idx, p, f))
    if not indices:
        return {}
    indices, probs, flags = np.concatenate(indices), np.concatenate(probs), np.concatenate(flags)
    result = {"pooled_out_of_fold": pool_metrics(pool, indices, probs, flags), "folds_done": len(per_fold)}
    result["mias_malignant_by_finding"] = by_finding(pool, indices, probs, flags)
    result["per_breast"] = breast_summary(pool, indices, probs)
    spread = {}
    for source in pool.sources:
        for key in ("auc_malignant_vs_rest", "referral_sensitivity", "referral_specificity"):
            values = [m[source][key] for m in per_fold if source in m and not np.isnan(m[source][key])]
            if values:
                spread[f"{source}/{key}"] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    result["per_fold_mean_sd"] = spread
    (out_dir / f"metrics{suffix}.json").write_text(json.dumps(result, indent=1))
    return result


def breast_summary(pool: PreparedPool, indices, probs: np.ndarray, seed: int = 0) -> dict:
    """Per source, malignant-vs-rest AUC per breast: the mean score of a breast's views against its worst label.

    Why: a reader decides per breast from both views (CC and MLO); the
    bootstrap resamples patients, as for images.
    """
    items = [pool.items[i] for i in indices]
    score = np.asarray(probs)[:, -1]
    out = {}
    for source in pool.sources:
        groups: dict[str, list[int]] = {}
        for k, item in enumerate(items):
            if item.source == source:
                groups.setdefault(breast_of(item), []).append(k)
        if not groups:
            continue
        keys = sorted(groups)
        scores = np.array([score[groups[b]].mean() for b in keys])
        malignant = np.array([max(items[k].label for k in groups[b]) == 2 for b in keys])
        patients = np.array([b.rsplit("/", 1)[0] for b in keys])
        out[source] = {
            "n_breasts": len(keys),
            "n_breasts_two_views": int(sum(len(groups[b]) >= 2 for b in keys)),
            "n_malignant": int(malignant.sum()),
            "auc_malignant_vs_rest": auc(scores, malignant),
            "auc_ci95": bootstrap_auc_ci(malignant, scores, n_boot=BOOTSTRAP, seed=seed, groups=patients),
        }
    return out


def by_finding(pool: PreparedPool, indices, probs: np.ndarray, flags: np.ndarray) -> dict:
    """mini-MIAS malignant images per abnormality class: referral sensitivity and AUC against the normal images.

    Why: MIAS malignancies include asymmetries, distortions and calcification
    clusters, which a mass-trained patch network may not see at this resolution.
    """
    items = [pool.items[i] for i in indices]
    normal = np.array([it.source == MIAS and it.label == 0 for it in items])
    out = {}
    for finding in sorted({it.finding for it in items if it.source == MIAS and it.label == 2}):
        chosen = np.array([it.source == MIAS and it.label == 2 and it.finding == finding for it in items])
        keep = chosen | normal
        out[finding] = {
            "n": int(chosen.sum()),
            "referral_sensitivity": float(flags[chosen].mean()),
            "auc_vs_normals": auc(probs[keep, -1], chosen[keep]),
        }
    return out


def int8_cv(cfg: TrainConfig, out_dir: Path) -> dict:
    """Convert every finished fold's model to int8 and evaluate THAT on its test patients.

    The referral threshold is re-chosen on the int8 model's validation outputs,
    since the int8 model is what the runtime runs.
    """
    setup_tensorflow(cfg.seed)
    from convert.evaluation import export
    from convert.evaluation.lesion_export import keras_probs, representative_images, run_int8, whole_image_keras
    from convert.models.lesion_model import build_fcn

    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    parity_path = out_dir / "parity_int8.json"
    parities = json.loads(parity_path.read_text()) if parity_path.exists() else {}
    for fold in range(cfg.folds):
        weights = out_dir / f"fold{fold}.weights.h5"
        if not weights.exists() or (out_dir / f"fold{fold}_int8.npz").exists():
            continue
        saved = np.load(out_dir / f"fold{fold}.npz")
        train_idx, val_idx, test_idx = fold_split(pool, cfg.protocol(), fold)
        if not np.array_equal(test_idx, saved["test_idx"]):
            raise RuntimeError(f"fold {fold}: split differs from the saved run (config changed?)")
        fcn = build_fcn(cfg.fcn_width, cfg.dropout)
        fcn.load_weights(str(weights))
        model = whole_image_keras(fcn, pool, (saved["kernel"], saved["bias"]), cfg.smooth)
        flatbuffer = export.to_tflite_int8(model, representative_images(pool, train_idx, 100, cfg.seed + fold))
        (out_dir / f"fold{fold}.tflite").write_bytes(flatbuffer)
        val_probs = run_int8(flatbuffer, pool, val_idx)
        val_labels = np.array([pool.items[i].label for i in val_idx])
        threshold = threshold_for_sensitivity(val_labels == 2, val_probs[:, 2], cfg.referral_sensitivity)
        probs = run_int8(flatbuffer, pool, test_idx)
        parities[str(fold)] = {
            **export.parity(keras_probs(model, pool, test_idx), probs).to_dict(),
            "op_versions": export.op_versions(flatbuffer),
            "tflite_runtime_2_14_problems": export.tflite_214_problems(export.op_versions(flatbuffer)),
        }
        val_flags = val_probs[:, 2] >= threshold
        val_malignant = val_labels == 2
        np.savez(out_dir / f"fold{fold}_int8.npz", test_idx=test_idx, probs=probs, threshold=threshold, val_idx=val_idx, val_probs=val_probs,
                 val_sensitivity=val_flags[val_malignant].mean(), val_specificity=(~val_flags[~val_malignant]).mean())
        print(json.dumps({"fold": fold, "int8_threshold": threshold, "parity": parities[str(fold)]}), flush=True)
        parity_path.write_text(json.dumps(parities, indent=1))
    return collect_cv(pool, out_dir, cfg.protocol(), "_int8")


def train_final(cfg: TrainConfig, out_dir: Path) -> dict:
    """Train on every patient (validation split kept for epoch, head and threshold); save weights and head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    with run_log(out_dir) as log:
        run = train_and_calibrate(pool, np.arange(len(pool.items)), cfg, log)
    run["fcn"].save_weights(str(out_dir / "final.weights.h5"))
    np.savez(out_dir / "final.npz", train_idx=run["train_idx"], val_idx=run["val_idx"], kernel=run["head"][0], bias=run["head"][1],
             threshold=run["threshold"], best_epoch=run["best_epoch"])
    (out_dir / "final_history.json").write_text(json.dumps(run["history"], indent=1))
    return {"best_epoch": run["best_epoch"], "threshold": run["threshold"]}


def export_fold(cfg: TrainConfig, run_dir: Path, fold: int, out_path: Path, command: str) -> dict:
    """Write fold ``fold``'s int8 model as ``out_path``.tflite with its card (test = that fold's patients)."""
    import shutil

    from convert.evaluation.export import ParityError, parity_gate
    from convert.evaluation.lesion_export import build_card, split_summary
    from edge_birads.card import write_card

    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    int8 = np.load(run_dir / f"fold{fold}_int8.npz")
    float_run = np.load(run_dir / f"fold{fold}.npz")
    train_idx, val_idx, test_idx = fold_split(pool, cfg.protocol(), fold)
    probs = int8["probs"]
    flags = probs[:, 2] >= float(int8["threshold"])
    test_metrics = pool_metrics(pool, test_idx, probs, flags)
    parities = json.loads((run_dir / "parity_int8.json").read_text())
    gate = parities[str(fold)]
    if gate.get("tflite_runtime_2_14_problems"):
        raise SystemExit(f"fold {fold}: ops tflite-runtime 2.14 cannot run: {gate['tflite_runtime_2_14_problems']}")
    try:
        parity_gate(gate, where=f"fold {fold}: ")
    except ParityError as exc:
        raise SystemExit(str(exc)) from None
    cv_path = run_dir / "metrics_int8.json"
    cv_metrics = json.loads(cv_path.read_text()) if cv_path.exists() else None
    tflite = out_path.with_suffix(".tflite")
    tflite.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / f"fold{fold}.tflite", tflite)
    card = build_card(
        tflite,
        name=out_path.name,
        pool=pool,
        config=asdict(cfg),
        split={"method": f"{cfg.folds}-fold by patient, stratified by (source, worst label of the patient), seed {cfg.seed}; "
               f"this model: fold {fold} is test, {cfg.validation_fraction:.1%} of the other patients validation",
               "train": split_summary(pool, train_idx), "val": split_summary(pool, val_idx), "test": split_summary(pool, test_idx)},
        referral={"threshold": float(int8["threshold"]),
                  "method": f"highest threshold with >= {cfg.referral_sensitivity:.0%} sensitivity for BI-RADS 4-5 on the int8 model's "
                  "validation images (both sources pooled); never chosen on test",
                  "validation_sensitivity": float(int8["val_sensitivity"]), "validation_specificity": float(int8["val_specificity"])},
        test_metrics=test_metrics,
        cv_metrics=cv_metrics,
        parity_result={**parities[str(fold)], "images": "this model's test patients"},
        architecture="stem conv5x5/2 (16) + maxpool, 5 depthwise-separable blocks (32, 64, 64, 128, 128) with 2 more maxpools "
                     "(stride 16, receptive field ~123 px), 1x1 conv to 2 log-odds maps; 2x2 mean + global max; dense 2->3; softmax",
        command=command,
        best_epoch=int(float_run["best_epoch"]),
    )
    card_path = write_card(card, tflite)
    return {"tflite": str(tflite), "card": str(card_path), "test": test_metrics}


POOLINGS = {
    "max": lambda m: m.reshape(-1, 2).max(axis=0),
    "mean2x2-max": lambda m: smooth_max(m, 2),
    "mean3x3-max": lambda m: smooth_max(m, 3),
    "top5-mean": lambda m: np.sort(m.reshape(-1, 2), axis=0)[-5:].mean(axis=0),
    "global-mean": lambda m: m.reshape(-1, 2).mean(axis=0),
}


def smooth_max(maps: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (valid), then max: what AveragePooling2D(k, 1) + GlobalMaxPooling2D compute."""
    h, w = maps.shape[:2]
    acc = sum(maps[i : h - k + 1 + i, j : w - k + 1 + j] for i in range(k) for j in range(k)) / (k * k)
    return acc.reshape(-1, 2).max(axis=0)


def pooling_ablation(cfg: TrainConfig, out_dir: Path) -> dict:
    """Out-of-fold AUCs of each saved fold FCN under other whole-image poolings (identity head, float).

    Only the pooling changes: the FCN weights are the folds' own, each scored
    on its own test patients, so no pooling sees patients its FCN was trained on.
    """
    setup_tensorflow(cfg.seed)
    from convert.models.lesion_model import build_fcn

    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    collected: dict[str, list] = {name: [] for name in POOLINGS}
    indices = []
    for fold in range(cfg.folds):
        weights = out_dir / f"fold{fold}.weights.h5"
        if not weights.exists():
            continue
        fcn = build_fcn(cfg.fcn_width, cfg.dropout)
        fcn.load_weights(str(weights))
        test_idx = np.load(out_dir / f"fold{fold}.npz")["test_idx"]
        indices.append(test_idx)
        for start in range(0, test_idx.size, 16):
            chunk = test_idx[start : start + 16]
            maps = np.asarray(fcn(pool.images[chunk].astype(np.float32)[..., None] / 255.0, training=False))
            for m in maps:
                for name, fn in POOLINGS.items():
                    collected[name].append(fn(m))
    indices = np.concatenate(indices)
    labels = np.array([pool.items[i].label for i in indices])
    sources = np.array([pool.items[i].source for i in indices])
    patients = np.array([f"{pool.items[i].source}/{pool.items[i].patient_id}" for i in indices])
    result = {}
    for name, values in collected.items():
        score = rest_logodds(np.array(values))
        result[name] = {}
        for source in pool.sources:
            m = sources == source
            result[name][source] = {"auc": auc(score[m], labels[m] == 2), "ci95": bootstrap_auc_ci(labels[m] == 2, score[m], n_boot=BOOTSTRAP, groups=patients[m])}
    (out_dir / "pooling_ablation.json").write_text(json.dumps(result, indent=1))
    return result
