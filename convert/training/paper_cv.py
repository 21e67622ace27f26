"""The paper's whole-image CNN as a recipe, and the fold step's shared parts (scoring, parity, resumable folds).

Why: the ablation table must compare like with like. Every recipe is scored
on the same patient folds (``convert.data.split.FoldProtocol``) with int8 outputs,
a validation-chosen referral threshold and per-source AUCs; the paper's
configurations (focal loss, cross-entropy, class weights, oversampling,
augmentation, GAP head) go through exactly the same folds, validation
patients, int8 conversion and metrics as the lesion FCN and the pretrained
recipe (``convert.training.recipes.run_cv``), so a row of one can be read against a
row of another fold by fold.

Each configuration trains as the paper did: whole image at its input size,
a fixed number of epochs (no epoch selection), Adam. Per fold the runner
writes ``fold{k}.npz`` (float Keras) and ``fold{k}_int8.npz`` (the int8
TFLite the runtime would run, threshold re-chosen on its own validation
outputs), so ``collect_cv`` and the ablation table read every row alike.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from convert.data.lesion_data import PreparedPool
from convert.data.sources import GROUP_LABELS, MALIGNANT_LABEL
from convert.data.split import FoldProtocol
from convert.evaluation.metrics import threshold_for_sensitivity
from convert.training.recipes import Fitted, KerasRecipe
from convert.training.train import TrainConfig as PaperConfig
from convert.training.train import make_batches, validation_callback
from convert.training.train_lesion import headline, pool_metrics
from edge_birads.preprocess import PreprocessSpec

# Representative images for int8 calibration, drawn from the fold's training patients.
REPRESENTATIVE = 200


def fold_images(pool: PreparedPool, indices: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) float32 in [0, 1]: what the runtime's prepare() returns for these images."""
    return (pool.images[indices].astype(np.float32) / 255.0)[..., None]


def fold_labels(pool: PreparedPool, indices: np.ndarray) -> np.ndarray:
    """Class index per image in the order BI-RADS 1, 2-3, 4-5 (the lesion pool's and the bundled card's)."""
    return np.array([pool.items[i].label for i in indices], np.int64)


def representative(pool: PreparedPool, train_idx: np.ndarray, seed: int) -> np.ndarray:
    """A fold's int8 calibration images: ``REPRESENTATIVE`` of its training images, drawn with the fold's seed."""
    rng = np.random.default_rng(seed)
    return fold_images(pool, train_idx[rng.choice(train_idx.size, min(REPRESENTATIVE, train_idx.size), replace=False)])


def score_fold(pool: PreparedPool, fold: int, val_idx, test_idx, predictors: dict, referral_sensitivity: float, out_dir: Path, log) -> None:
    """Each predictor (file suffix -> images -> probabilities) on a fold's validation and test patients.

    The referral threshold comes from the validation outputs only; each writes
    ``fold{k}{suffix}.npz`` (the layout ``collect_cv`` reads) and logs the fold's headline.
    """
    x_val, x_test = fold_images(pool, val_idx), fold_images(pool, test_idx)
    val_mal = fold_labels(pool, val_idx) == 2
    for suffix, predict in predictors.items():
        p_val, p_test = predict(x_val), predict(x_test)
        threshold = threshold_for_sensitivity(val_mal, p_val[:, 2], referral_sensitivity)
        np.savez(out_dir / f"fold{fold}{suffix}.npz", test_idx=test_idx, probs=p_test, threshold=threshold, val_idx=val_idx, val_probs=p_val)
        metrics = pool_metrics(pool, test_idx, p_test, p_test[:, 2] >= threshold)
        log(json.dumps({"fold": fold, "model": suffix.strip("_") or "float", "threshold": threshold, "test": headline(metrics)}))


class PaperRecipe(KerasRecipe):
    """The paper's CNN as a recipe: whole image at its input size, a fixed number of epochs (no epoch selection), Adam."""

    name = "paper-cnn"
    config_key = "paper_config"
    config_type = PaperConfig

    def spec(self, cfg: PaperConfig) -> PreprocessSpec:
        return cfg.preprocess_spec()

    def build(self, cfg: PaperConfig, seed: int):
        from convert.models.paper_cnn import build_paper_cnn, compile_model

        model = build_paper_cnn(3, cfg.image_size, head=cfg.head, seed=seed)
        compile_model(model, cfg.loss, cfg.learning_rate, cfg.focal_gamma, cfg.focal_alpha)
        return model

    def fit(self, cfg: PaperConfig, pool: PreparedPool, train_idx, val_idx, seed: int, log, prefix: Path) -> Fitted:
        model = self.build(cfg, seed)
        # Progress: loss, validation recall per class and malignant AUC per epoch (logged and kept in the history).
        epochs: list[dict] = []
        report = validation_callback(fold_images(pool, val_idx), fold_labels(pool, val_idx), GROUP_LABELS, (MALIGNANT_LABEL,), epochs)
        batches = make_batches(fold_images(pool, train_idx), fold_labels(pool, train_idx), 3, replace(cfg, seed=seed))
        model.fit(batches, epochs=cfg.epochs, verbose=0, callbacks=[report])
        return Fitted(model, {"epochs": epochs})


RECIPE = PaperRecipe()
run_fold = RECIPE.run_fold  # one fold of a paper configuration: (cfg, pool, protocol, fold, out_dir, log)


def run_folds(out_dir: Path, folds: FoldProtocol, only_folds: list[int] | None, log, run_one) -> None:
    """``run_one(fold)`` for every fold asked for whose int8 outputs are not written yet (so a run resumes)."""
    for fold in range(folds.folds):
        if only_folds is not None and fold not in only_folds:
            continue
        if (out_dir / f"fold{fold}_int8.npz").exists():
            log(f"fold {fold}: done already")
            continue
        run_one(fold)


def write_parity(out_dir: Path, folds: int) -> dict:
    """Float-vs-int8 parity of every finished fold on its test patients (parity_int8.json), from the saved outputs."""
    from convert.evaluation.export import parity

    result = {}
    for fold in range(folds):
        float_path, int8_path = out_dir / f"fold{fold}.npz", out_dir / f"fold{fold}_int8.npz"
        if float_path.exists() and int8_path.exists():
            result[str(fold)] = parity(np.load(float_path)["probs"], np.load(int8_path)["probs"]).to_dict()
    (out_dir / "parity_int8.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def describe_metrics(metrics: dict) -> str:
    """A few plain lines per source from ``collect_cv`` output (what ``python -m convert cv`` prints)."""
    if not metrics:
        return "no fold has finished"
    lines = [f"{metrics['folds_done']} fold(s), int8 models, every image scored by the fold that never saw its patient:"]
    for source, m in metrics["pooled_out_of_fold"].items():
        spread = metrics["per_fold_mean_sd"].get(f"{source}/auc_malignant_vs_rest")
        ci = m["auc_ci95"]
        text = f"- {source}: {m['n_images']} images ({m['n_malignant']} malignant); malignant AUC {m['auc_malignant_vs_rest']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        if spread and metrics["folds_done"] > 1:
            text += f", per fold {spread['mean']:.3f} ± {spread['sd']:.3f}"
        at70 = m.get("sensitivity_at_70_specificity")
        if at70 is not None:
            text += f"; sensitivity at 70% specificity {100 * at70:.1f}%"
        text += f"; referral flag {100 * m['referral_sensitivity']:.1f}% sensitivity / {100 * m['referral_specificity']:.1f}% specificity"
        lines.append(text)
    return "\n".join(lines)
