"""The ablation: every row of the one registry (convert.training.rows) x patient-level cross-validated, int8-scored metrics.

    python -m convert ablation run --root RUNS [--configs NAME,...] [--only 0,1,2,3,4]
    python -m convert ablation collect --root RUNS
    python -m convert ablation card --root RUNS --configs paper-focal \
        --card edge_birads/models/default.json   # the recipe's CV figures into the bundled model's card
    python -m convert ablation table --root RUNS --doc docs/ablation.md
    python -m convert ablation pooling --config fcn-512x256-normal3-mined --out RUNS/fcn-512x256-normal3-mined

``collect`` re-derives every finished row's metrics from its saved per-fold
predictions (no training: for when a metric is added or changed).
``run`` trains what is missing through the one cross-validation runner
(``convert.training.recipes.run_cv``: finished folds are kept, so it resumes), each
fold's model converted to int8 and scored as int8; ensemble rows combine
their members' finished folds (no training). ``table`` prints the Markdown
table of whatever has finished, saying how many folds each row has, and with
``--doc`` also writes it between the markers of that page.
Each row lives in ROOT/NAME. Every recipe runs through the same folds
(``convert.data.split.FoldProtocol``), validation patients and int8 scoring, so
the rows compare like with like. Run through ``python -m convert ablation ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

from convert.data.split import FoldProtocol
from convert.training.recipes import config_for, get_recipe, run_cv
from convert.training.rows import ROWS, rows_of
from convert.training.train_lesion import CBIS, MIAS

# Views of the one registry (convert.training.rows.ROWS) by recipe: the rows of this table.
PAPER_ABLATIONS = {name: row for name, row in rows_of("ablation").items() if row.recipe == "paper-cnn"}
ABLATIONS = {name: row for name, row in rows_of("ablation").items() if row.recipe == "lesion-fcn"}
ENSEMBLES = {name: row for name, row in rows_of("ablation").items() if row.members}


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


def row_for(name: str, root: Path) -> list[str] | None:
    run = root / name
    for suffix, kind in (("_int8", "int8"), ("", "float")):
        path = run / f"metrics{suffix}.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            break
    else:
        return None
    pooled, spread = metrics["pooled_out_of_fold"], metrics["per_fold_mean_sd"]
    cells = [name, f"{metrics['folds_done']} ({kind})"]
    for source in (MIAS, CBIS):
        m = pooled.get(source, {})
        ci = m.get("auc_ci95", (None, None))
        s = spread.get(f"{source}/auc_malignant_vs_rest", {})
        cells.append(f"{fmt(m.get('auc_malignant_vs_rest'))} [{fmt(ci[0])}, {fmt(ci[1])}]")
        cells.append(f"{fmt(s.get('mean'))} ± {fmt(s.get('sd'))}" if metrics["folds_done"] > 1 else "-")
        if source == MIAS:
            cells.append(fmt(m.get("sensitivity_at_70_specificity")))
        cells.append(f"{fmt(m.get('referral_sensitivity'))} / {fmt(m.get('referral_specificity'))}")
    return cells


def table(root: Path) -> str:
    header = [
        "configuration", "folds (model)",
        "MIAS AUC mal-vs-rest [95% CI]", "MIAS AUC per-fold mean ± sd", "MIAS sens at 70% spec (ROC)", "MIAS referral sens / spec",
        "CBIS AUC mal-vs-benign [95% CI]", "CBIS AUC per-fold mean ± sd", "CBIS referral sens / spec",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name, what in ((name, row.description) for name, row in rows_of("ablation").items()):
        cells = row_for(name, root)
        if cells is None:
            cells = [name, "not run"] + ["-"] * (len(header) - 2)
        lines.append("| " + " | ".join(cells) + " |")
        notes.append(f"- `{name}`: {what}.")
    return "\n".join(lines + [""] + notes) + "\n"


def run(names: list[str], root: Path, only_folds: list[int] | None = None, protocol: FoldProtocol = FoldProtocol()) -> None:
    """Train what is missing of each named row through the one runner (resumable); ensemble rows combine their members."""
    for name in names:
        if name in ENSEMBLES:
            run_ensemble(name, root)
        else:
            run_cv(ROWS[name].recipe, config_for(name), root / name, protocol, only_folds)


def check_rows(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise ValueError(f"unknown configuration {unknown[0]!r}; choose from {', '.join(rows_of('ablation'))}")
    return names


START, END = "<!-- ablation-table:start -->", "<!-- ablation-table:end -->"


def write_between_markers(doc: Path, text: str, start: str = START, end: str = END) -> None:
    """Replace what lies between a pair of table markers of ``doc`` (so the page's table is generated, not typed)."""
    page = doc.read_text()
    if start not in page or end not in page:
        raise SystemExit(f"{doc}: no {start} ... {end} markers")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}{end}{tail}")


def recipe_section(name: str, root: Path) -> dict:
    """A card section: the recipe's k-fold, int8, out-of-fold figures per source (mean, spread, CI)."""
    path = root / name / "metrics_int8.json"
    if not path.exists():
        raise ValueError(f"{path} is missing: run the row first")
    metrics = json.loads(path.read_text())
    per_source = {}
    for source, m in metrics["pooled_out_of_fold"].items():
        spread = metrics["per_fold_mean_sd"].get(f"{source}/auc_malignant_vs_rest", {})
        per_source[source] = {
            "n_images": m["n_images"],
            "n_malignant": m["n_malignant"],
            "auc_malignant_vs_rest": m["auc_malignant_vs_rest"],
            "auc_ci95": m["auc_ci95"],
            "auc_per_fold_mean": spread.get("mean"),
            "auc_per_fold_sd": spread.get("sd"),
            "sensitivity_at_70_specificity": m.get("sensitivity_at_70_specificity"),
            "referral_sensitivity": m["referral_sensitivity"],
            "referral_specificity": m["referral_specificity"],
        }
    return {
        "note": (
            f"the same recipe ({name}) trained {metrics['folds_done']} times, once per patient-level fold (stratified by source and "
            "the patient's worst label, seed 0); every image scored once by the int8 model of the fold that never saw its patient; "
            "threshold chosen on each fold's validation patients for >= 90% sensitivity; AUC CI: patient-level bootstrap, 2000 "
            "resamples; sensitivity at 70% specificity read off the out-of-fold ROC curve (not an operating point). "
            "mini-MIAS: malignant vs normal + benign; CBIS-DDSM masses: malignant vs benign (no normals)."
        ),
        "folds": metrics["folds_done"],
        "command": f"python -m convert ablation run --root RUNS --configs {name}",
        "per_source": per_source,
    }


def add_to_card(card_path: Path, name: str, root: Path) -> None:
    """Write ``recipe_section`` into the card's metrics, after checking the card was trained with that recipe."""
    card = json.loads(card_path.read_text())
    recipe = card.get("training", {}).get("config", {})
    recipe = recipe.get("name") if isinstance(recipe, dict) else recipe
    if name not in PAPER_ABLATIONS:
        raise ValueError(f"{name!r} is not a paper-CNN row of the ablation; choose from {', '.join(PAPER_ABLATIONS)}")
    expected = config_for(name).name
    if recipe != expected:
        raise ValueError(f"{card_path} was trained with config {recipe!r}, not {expected!r} (row {name})")
    card.setdefault("metrics", {})["recipe_cross_validation"] = recipe_section(name, root)
    card_path.write_text(json.dumps(card, indent=1) + "\n")


def row_pool(name: str):
    """(preprocessed pool, fold protocol) of a row: the images its models take, and its folds."""
    from convert.data.lesion_data import load_pool
    from convert.training.train_lesion import DEFAULT_CACHE

    return load_pool(get_recipe(ROWS[name].recipe).spec(config_for(name)), DEFAULT_CACHE), FoldProtocol()


def run_ensemble(name: str, root: Path) -> dict:
    """Combine the finished folds of an ensemble's member rows (no training)."""
    from convert.experiments.ensemble_cv import ensemble_cv

    members = {}
    for member in ENSEMBLES[name].members:
        pool, folds = row_pool(member)
        members[member] = (root / member, pool, folds)
    return ensemble_cv(members, root / name)


def collect(name: str, run: Path) -> None:
    """Metrics of a finished (or partly finished) row from its fold*.npz predictions."""
    from convert.training.train_lesion import collect_cv

    if name in ENSEMBLES:
        run_ensemble(name, run.parent)
        return
    pool, folds = row_pool(name)
    if ROWS[name].recipe != "lesion-fcn":  # FCN rows run by int8_cv keep its parity file (with op versions), not re-derivable
        from convert.training.paper_cv import write_parity

        write_parity(run, folds.folds)
    for suffix in ("", "_int8"):
        collect_cv(pool, run, folds, suffix=suffix)
