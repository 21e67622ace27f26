"""Conversion with its parity gate, evaluation of the int8 model, and the model card.

Order matters for honesty: the referral threshold is chosen on the
VALIDATION patients, then applied unchanged to the TEST patients; every
number in the card comes from the int8 TFLite model run the way the runtime
runs it (the float Keras figures are reported beside them, labelled).
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.evaluation import export
from convert.evaluation.export import ParityError
from convert.evaluation.metrics import evaluate_probabilities, sensitivity_specificity, threshold_for_sensitivity
from convert.training.train import RunData, TrainConfig
from edge_birads.card import decision_rule, new_card, write_card  # noqa: F401 (write_card: convert.cli imports it from here)

log = logging.getLogger("convert.evaluation.evaluate")

REFERRAL_RULE = (
    "largest threshold on the {label} probability whose sensitivity on the validation patients is >= {target:.0%} "
    "(refer when probability >= threshold); chosen on validation only, then applied unchanged to the test patients"
)


#: The paper CNN starts from random weights (convert.models.paper_cnn.build_paper_cnn).
PAPER_INITIALISATION = {
    "source": "random: Glorot-uniform kernels seeded from the configuration's seed (one offset per layer), zero biases; "
    "no pretrained weights",
}


@dataclass(frozen=True)
class Conversion:
    int8_path: Path
    float_path: Path
    parity: export.Parity
    op_versions: dict[str, int]
    tflite_214_problems: list[str]
    n_representative: int
    n_over_max_diff: int = 0
    max_diff: float = 0.1
    min_agreement: float = 0.95

    def to_dict(self) -> dict:
        return {
            "int8": str(self.int8_path),
            "float32": str(self.float_path),
            "parity": {
                **self.parity.to_dict(),
                "gate": {"min_decisive_agreement": self.min_agreement, "max_quantile_diff": self.max_diff},
                "n_images_over_max_diff": self.n_over_max_diff,
            },
            "op_versions": self.op_versions,
            "tflite_runtime_2_14_problems": self.tflite_214_problems,
            "n_representative": self.n_representative,
        }


def representative_images(data: RunData, n: int, seed: int) -> np.ndarray:
    """``n`` training images drawn at random (seeded): the calibration set."""
    train = np.array(data.split.train, np.int64)
    chosen = np.random.default_rng(seed).permutation(train)[:n]
    return data.images[np.sort(chosen)]


def held_out_indices(data: RunData) -> np.ndarray:
    """Validation + test images: never used to fit weights or calibrate."""
    return np.array(sorted(data.split.val + data.split.test), np.int64)


def convert_model(
    model,
    data: RunData,
    int8_path: str | Path,
    float_path: str | Path,
    n_representative: int = 200,
    min_agreement: float = 0.95,
    max_diff: float = 0.1,
    seed: int = 0,
    allow_new_ops: bool = False,
    diff_quantile: float = 0.99,
) -> Conversion:
    """Write the int8 and float32 TFLite files and check int8-vs-Keras parity.

    Raises ParityError (after writing the files, so they can be inspected)
    when agreement or the largest probability difference is out of bounds,
    or when an op is too new for tflite-runtime 2.14 and ``allow_new_ops`` is off.
    """
    int8_path, float_path = Path(int8_path), Path(float_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    float_path.parent.mkdir(parents=True, exist_ok=True)
    representative = representative_images(data, n_representative, seed)
    log.info("converting to int8 with %d representative training images", len(representative))
    int8 = export.to_tflite_int8(model, representative)
    int8_path.write_bytes(int8)
    float_path.write_bytes(export.to_tflite_float(model))
    versions = export.op_versions(int8)
    problems = export.tflite_214_problems(versions) + [
        f"float32: {p}" for p in export.tflite_214_problems(export.op_versions(float_path.read_bytes()))
    ]
    held = held_out_indices(data)
    x_held = data.images[held]
    reference = export.keras_predict(model, x_held)
    candidate = export.TfliteModel(int8).predict(x_held)
    result = export.parity(reference, candidate, diff_quantile=diff_quantile)
    n_over = result.n_over(reference, candidate, max_diff)
    conversion = Conversion(int8_path, float_path, result, versions, problems, len(representative), n_over, max_diff, min_agreement)
    log.info(
        "int8 %s (%.1f MB), ops %s; parity on %d held-out images: top-1 agreement %.3f (%.3f without %d near-ties), "
        "max |dp| %.4f (%d images over %.2f), %g quantile %.4f",
        int8_path, len(int8) / 1e6, versions, result.n_images, result.top1_agreement, result.decisive_agreement,
        result.n_near_ties, result.max_abs_prob_diff, n_over, max_diff, diff_quantile, result.quantile_abs_prob_diff,
    )
    if problems and not allow_new_ops:
        raise ParityError(f"ops too new for tflite-runtime 2.14: {', '.join(problems)}")
    export.parity_gate(result, min_agreement, max_diff)
    return conversion


def _per_source(probs, y, records, labels, malignant, threshold, seed) -> dict:
    out = {"pooled": evaluate_probabilities(probs, y, labels, malignant, threshold, seed=seed)}
    sources = sorted({r.source for r in records})
    for source in sources:
        mask = np.array([r.source == source for r in records])
        out[source] = evaluate_probabilities(probs[mask], y[mask], labels, malignant, threshold, seed=seed)
    return out


def evaluate_model(tflite_path: str | Path, data: RunData, referral_sensitivity: float = 0.9, keras_model=None, seed: int = 0) -> dict:
    """Threshold on validation, metrics on test, for the TFLite model (and Keras if given)."""
    model = export.TfliteModel(tflite_path)
    malignant = data.malignant_labels()
    if len(malignant) != 1:
        raise ValueError(
            f"the runtime's card names one malignant label but this model has {list(malignant)}; "
            "train on the three groups (paper:PATH folds the paper's classes) to build a card"
        )
    m_idx = data.labels.index(malignant[0])
    x_val, y_val, r_val = data.part("val")
    x_test, y_test, r_test = data.part("test")
    p_val = model.predict(x_val)
    p_test = model.predict(x_test)
    positive_val = y_val == m_idx
    threshold = threshold_for_sensitivity(positive_val, p_val[:, m_idx], referral_sensitivity)
    val_sens, val_spec = sensitivity_specificity(positive_val, p_val[:, m_idx], threshold)
    test_sens, test_spec = sensitivity_specificity(y_test == m_idx, p_test[:, m_idx], threshold)
    result = {
        "referral": {
            "threshold": threshold,
            "method": REFERRAL_RULE.format(label=malignant[0], target=referral_sensitivity),
            "target_sensitivity": referral_sensitivity,
            "validation_sensitivity": val_sens,
            "validation_specificity": val_spec,
            "validation_positives": int(positive_val.sum()),
            "test_sensitivity": test_sens,
            "test_specificity": test_spec,
        },
        "test": _per_source(p_test, y_test, r_test, data.labels, malignant, threshold, seed),
        "validation": {"pooled": evaluate_probabilities(p_val, y_val, data.labels, malignant, threshold, n_boot=0)},
    }
    if keras_model is not None:
        p_keras = export.keras_predict(keras_model, x_test)
        result["test_keras_float32"] = _per_source(p_keras, y_test, r_test, data.labels, malignant, threshold, seed)
    return result


def versions() -> dict:
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("tensorflow", "keras", "ai_edge_litert", "cv2"):
        try:
            imported = __import__(module)
            found[{"cv2": "opencv"}.get(module, module)] = getattr(imported, "__version__", "unknown")
        except ImportError:
            pass
    return found


def build_card(
    tflite_path: str | Path,
    data: RunData,
    config: TrainConfig,
    evaluation: dict,
    conversion: dict,
    architecture: str,
    command: str,
    name: str | None = None,
    training_seconds: float | None = None,
    keras_config: dict | None = None,
) -> dict:
    """The paper CNN's card (edge_birads.card.new_card: every section of the schema, plus what else was measured).

    ``keras_config`` (``json.loads(model.to_json())``) lets the benchmark rebuild the same network in
    TensorFlow as its float baseline without shipping float weights.
    """
    tflite_path = Path(tflite_path)
    malignant = data.malignant_labels()[0]
    synthetic = any(r.source == "synthetic" for r in data.records)
    split_doc = {
        "method": "by patient, stratified by (source, worst label of the patient); "
        f"{config.test_fraction:.0%} of patients to test, then {config.val_fraction:.1%} of the rest to validation",
        "seed": data.split.seed,
    }
    for part in ("train", "val", "test"):
        idx = getattr(data.split, part)
        chosen = [data.records[i] for i in idx]
        split_doc[part] = {
            "images": len(idx),
            "patients": len({r.patient_id for r in chosen}),
            "per_label": {label: sum(r.label == label for r in chosen) for label in data.labels},
            "per_source": {s: sum(r.source == s for r in chosen) for s in sorted({r.source for r in data.records})},
        }
    description = (
        f"The paper's lightweight CNN ({config.head} head, {config.loss} loss) trained on whole images "
        f"({', '.join(sorted({r.source for r in data.records}))}), quantized to full-integer int8."
    )
    if synthetic:
        description += " TRAINED ON SYNTHETIC IMAGES: a pipeline check, meaningless on mammograms."
    metrics = {
        "note": "int8 TFLite outputs on the internal patient-level TEST split (patients never seen in training "
        "or threshold choice); per source and pooled; AUC CI: percentile bootstrap over images, 1000 resamples",
        "test": evaluation["test"],
        "validation": evaluation["validation"],
    }
    if "test_keras_float32" in evaluation:
        metrics["test_keras_float32"] = evaluation["test_keras_float32"]
    return new_card(
        tflite_path,
        name=name or tflite_path.stem,
        description=description,
        labels=list(data.labels),
        malignant_label=malignant,
        preprocessing=data.spec.to_dict(),
        referral=evaluation["referral"],
        training={
            "command": command,
            "config": config.to_dict(),
            "seed": config.seed,
            "data": {
                **data.summary,
                "label_mapping": "normal -> BI-RADS 1, benign -> BI-RADS 2-3, malignant -> BI-RADS 4-5 (pathology)",
                "synthetic": synthetic,
            },
            "split": split_doc,
            "architecture": architecture,
            "loss": (
                f"focal loss gamma {config.focal_gamma} alpha {config.focal_alpha}" if config.loss == "focal" else "categorical cross-entropy"
            ),
            "optimizer": f"Adam lr {config.learning_rate}",
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "training_seconds": training_seconds,
        },
        metrics=metrics,
        cross_validation=None,
        initialisation=PAPER_INITIALISATION,
        versions=versions(),
        parity=conversion.get("parity"),
        conversion={
            "n_representative": conversion.get("n_representative"),
            "op_versions": conversion.get("op_versions"),
            "tflite_runtime_2_14_problems": conversion.get("tflite_runtime_2_14_problems"),
            "batch_size_fixed": 1,
        },
        keras_config=keras_config,
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_markdown(card: dict) -> str:
    """A short human-readable report of the card's test metrics (Table 2 form, per source)."""
    lines = [f"# {card['name']}", "", card["description"], "", card["intended_use"], ""]
    ref = card["referral"]
    lines += [
        f"Referral threshold {ref['threshold']:.4f} ({ref['method']}).",
        f"Decision: {decision_rule(card['malignant_label'], ref['threshold'])}.",
        f"Validation sensitivity {_fmt(ref['validation_sensitivity'])}, specificity {_fmt(ref['validation_specificity'])}; "
        f"test sensitivity {_fmt(ref['test_sensitivity'])}, specificity {_fmt(ref['test_specificity'])}.",
        "",
    ]
    for source, metrics in card["metrics"]["test"].items():
        mvr = metrics["malignant_vs_rest"]
        ci = mvr.get("auc_ci95")
        ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        lines += [
            f"## Test, {source}: {metrics['n_images']} images, accuracy {_fmt(metrics['accuracy'])}, "
            f"malignant-vs-rest AUC {_fmt(mvr['auc'])}{ci_text}",
            "",
            "| class | precision | recall/sensitivity | specificity | F1 | support |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, m in metrics["per_class"].items():
            lines.append(
                f"| {label} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['specificity'])} | {_fmt(m['f1'])} | {m['support']} |"
            )
        if "referral" in metrics:
            r = metrics["referral"]
            lines.append(f"\nReferral at the validation threshold: sensitivity {_fmt(r['sensitivity'])}, specificity {_fmt(r['specificity'])}.")
        lines.append("")
    par = card.get("parity") or {}
    if par:
        lines.append(
            f"Parity int8 vs float Keras on {par['n_images']} held-out images: top-1 agreement {par['top1_agreement']:.3f} "
            f"({par.get('decisive_agreement', par['top1_agreement']):.3f} without {par.get('n_near_ties', 0)} near-ties), "
            f"max probability difference {par['max_abs_prob_diff']:.4f} ({par.get('n_images_over_max_diff', 0)} images over "
            f"{(par.get('gate') or {}).get('max_quantile_diff', 0.1)}; {par.get('diff_quantile', 1.0):g} quantile "
            f"{par.get('quantile_abs_prob_diff', par['max_abs_prob_diff']):.4f})."
        )
    return "\n".join(lines) + "\n"
