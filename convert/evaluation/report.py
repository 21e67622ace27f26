"""Evaluation report of a TFLite model on any labelled set: Markdown + JSON + PNGs.

The paper's Table 2 form per class, its Figure 1 (confusion matrix) and
Figures 2-3 (training/validation curves, when a run directory is given),
plus the malignant-vs-rest ROC with a bootstrap 95% interval. The model is
run as the runtime runs it (int8 LiteRT), at the threshold its card states:
the operating point is never re-chosen on the images being reported.

When ``run_dir`` is given, only that run's TEST patients are evaluated
(``--all`` overrides, and the report then says it includes training images).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from convert.data.sources import GROUP_LABELS, PAPER_TO_GROUP, Record, data_counts, load_images, load_sources
from convert.evaluation import export
from convert.evaluation.metrics import evaluate_probabilities
from edge_birads import DISCLAIMER
from edge_birads.card import load_card

log = logging.getLogger("convert.evaluation.report")


def _records_for(card_labels: tuple[str, ...], records: list[Record]) -> list[Record]:
    """Fold the paper's four classes into the groups when the model speaks groups."""
    if set(card_labels) == set(GROUP_LABELS):
        return [r if r.label in GROUP_LABELS else Record(r.path, r.patient_id, PAPER_TO_GROUP[r.label], r.source) for r in records]
    return records


def roc_points(y_binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (for plotting)."""
    y = np.asarray(y_binary, bool)
    thresholds = np.unique(np.asarray(scores))[::-1]
    tpr = [0.0] + [float(((scores >= t) & y).sum() / max(1, y.sum())) for t in thresholds]
    fpr = [0.0] + [float(((scores >= t) & ~y).sum() / max(1, (~y).sum())) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def _plots(out_dir: Path, labels, matrix, fpr, tpr, auc, threshold_point, history: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    written.append("confusion_matrix.png")

    if fpr is not None:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr, label=f"AUC {auc:.3f}" if auc is not None else "ROC")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        if threshold_point is not None:
            ax.plot([threshold_point[0]], [threshold_point[1]], "ro", label="card threshold")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("Malignant vs rest")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / "roc.png", dpi=120)
        plt.close(fig)
        written.append("roc.png")

    if history:
        curves = history.get("keras_history", {})
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key in zip(axes, ("accuracy", "loss")):
            for prefix, style in (("", "-"), ("val_", "--")):
                if prefix + key in curves:
                    ax.plot(range(1, len(curves[prefix + key]) + 1), curves[prefix + key], style, label=(prefix or "train_") + key)
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "training_curves.png", dpi=120)
        plt.close(fig)
        written.append("training_curves.png")
    return written


def make_report(model_path: str | Path, data_spec: str, out_dir: str | Path, run_dir: str | Path | None = None, all_images: bool = False, threads: int = 2) -> dict:
    """Evaluate ``model_path`` on ``data_spec`` and write report.md, report.json and PNGs to ``out_dir``."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = load_card(model_path)
    records = _records_for(card.labels, load_sources(data_spec, synthetic_dir=out_dir / "synthetic-images"))
    scope = f"all images of {data_spec}"
    history = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not all_images:
            split = json.loads((run_dir / "split.json").read_text())
            test_paths = {image["path"] for image in split["images"] if image["part"] == "test"}
            records = [r for r in records if r.path in test_paths]
            scope = f"the test patients of {run_dir} within {data_spec}"
        history_file = run_dir / "history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else None
    unknown = sorted({r.label for r in records} - set(card.labels))
    if unknown:
        raise ValueError(f"labels {unknown} of the data are not among the model's {list(card.labels)}")
    if not records:
        raise ValueError(f"no images to evaluate ({scope})")
    images, kept = load_images(records, card.preprocessing)
    probs = export.TfliteModel(model_path, threads=threads).predict(images)
    y = np.array([card.labels.index(r.label) for r in kept])
    labels = list(card.labels)
    result = {
        "model": str(model_path),
        "model_sha256": card.sha256,
        "scope": scope,
        "data": data_counts(kept),
        "pooled": evaluate_probabilities(probs, y, labels, (card.malignant_label,), card.referral_threshold),
    }
    for source in sorted({r.source for r in kept}):
        mask = np.array([r.source == source for r in kept])
        result[source] = evaluate_probabilities(probs[mask], y[mask], labels, (card.malignant_label,), card.referral_threshold)
    positive = y == card.malignant_index
    score = probs[:, card.malignant_index]
    pooled = result["pooled"]
    curve = roc_points(positive, score) if positive.any() and (~positive).any() else (None, None)
    point = None
    if pooled.get("referral") and pooled["referral"]["sensitivity"] is not None and pooled["referral"]["specificity"] is not None:
        point = (1 - pooled["referral"]["specificity"], pooled["referral"]["sensitivity"])
    result["figures"] = _plots(out_dir, labels, pooled["confusion_matrix"], curve[0], curve[1], pooled["malignant_vs_rest"]["auc"], point, history)
    (out_dir / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "report.md").write_text(report_markdown(result, card.referral_threshold))
    return result


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_markdown(result: dict, threshold: float) -> str:
    lines = [
        f"# Evaluation of {Path(result['model']).name}",
        "",
        f"Scope: {result['scope']} ({result['data']['images']} images, {result['data']['patients']} patients).",
        f"Referral threshold {threshold:.4f} from the model card (chosen on its validation split, not here).",
        DISCLAIMER,
        "",
    ]
    for key, metrics in result.items():
        if not isinstance(metrics, dict) or "per_class" not in metrics:
            continue
        mvr = metrics["malignant_vs_rest"]
        ci = mvr.get("auc_ci95")
        lines += [
            f"## {key}: {metrics['n_images']} images",
            "",
            f"Malignant vs rest: AUC {_f(mvr['auc'])}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            + f", {mvr['positives']} positives / {mvr['negatives']} negatives.",
        ]
        if metrics.get("referral"):
            lines.append(
                f"Referral at the card threshold: sensitivity {_f(metrics['referral']['sensitivity'])}, "
                f"specificity {_f(metrics['referral']['specificity'])}."
            )
        lines += ["", "| class | precision | recall | sensitivity | specificity | F1 | support |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, m in metrics["per_class"].items():
            lines.append(
                f"| {label} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['sensitivity'])} | {_f(m['specificity'])} | {_f(m['f1'])} | {m['support']} |"
            )
        lines.append("")
    lines += [f"![{name}]({name})" for name in result.get("figures", [])]
    return "\n".join(lines) + "\n"
