"""The ablation: the paper's CNN and the lesion FCN, named configurations x patient-level cross-validated metrics.

    python -m convert.lesion_ablation run --root RUNS [--configs NAME,...] [--folds 0,1,2,3,4]
    python -m convert.lesion_ablation collect --root RUNS
    python -m convert.lesion_ablation card --root RUNS --configs paper-focal \
        --card edge_birads/models/default.json   # the recipe's CV figures into the bundled model's card
    python -m convert.lesion_ablation table --root RUNS --doc docs/ablation.md

``collect`` re-derives every finished row's metrics from its saved per-fold
predictions (no training: for when a metric is added or changed).
``run`` trains what is missing (finished folds are kept, so it resumes), then
converts each fold's model to int8 and evaluates that; ensemble rows combine
their members' finished folds (no training). ``table`` prints the Markdown
table of whatever has finished, saying how many folds each row has, and with
``--doc`` also writes it between the markers of that page.
Each configuration lives in ROOT/NAME (the same layout as
``python -m convert.train_lesion cv``). The paper's configurations
(``convert.paper_cv``) run through the same folds, validation patients and
int8 scoring as the FCN rows, so the rows compare like with like.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from convert.train_lesion import CBIS, MIAS, TrainConfig, int8_cv, run_cv

# The paper's whole-image CNN: row name -> (convert.train config, what it tests).
PAPER_ABLATIONS: dict[str, tuple[str, str]] = {
    "paper-focal": ("paper", "the paper's CNN and recipe as bundled: 224x224 whole image, focal loss (gamma 2, alpha 0.25), Adam, 20 epochs"),
    "paper-ce": ("paper-ce", "the paper's baseline: as above with plain cross-entropy"),
    "paper-weighted": ("paper-weighted", "focal loss with balanced class weights"),
    "paper-oversample": ("paper-oversample", "focal loss, minority classes oversampled to the majority count, rotation +-20 degrees"),
    "paper-aug": ("paper-aug", "the abstract's augmentation: focal loss, rotation +-20 degrees, CLAHE (clip 2.0) in preprocessing"),
    "paper-gap": ("gap", "beyond the paper: global-average-pooling head instead of Flatten + Dense (11 M -> 0.1 M parameters), "
                  "breast crop before resizing, class weights, rotation +-20 degrees"),
}

# The lesion FCN: row name -> (convert.train_lesion TrainConfig overrides, what it tests)
ABLATIONS: dict[str, tuple[dict, str]] = {
    "fcn-512x512-balanced": (
        {"height": 512, "width": 512, "normal_weight_ratio": 1.0, "mine_from": 0},
        "square 512x512 breast crop (anatomy stretched ~2x horizontally), normal/benign/malignant locations equally weighted, no mining",
    ),
    "fcn-512x256-normal3-mined": (
        {"height": 512, "width": 256, "normal_weight_ratio": 3.0, "mine_from": 3},
        "512x256 (H x W) crop, roughly isotropic for both sources, half the compute; normal locations weighted 3x; "
        "hard negatives (top-3 false-positive locations per training image) mined from epoch 3",
    ),
    "fcn-512x256-normal3-mined-w32": (
        {"height": 512, "width": 256, "normal_weight_ratio": 3.0, "mine_from": 3, "fcn_width": 32},
        "as above with twice the channels (32-64-128-128-256-256; ~4x the multiply-adds): is the FCN capacity-bound?",
    ),
}
# Out-of-fold ensembles of finished rows (convert.ensemble_cv): row name -> (member rows, what it tests)
ENSEMBLES: dict[str, tuple[tuple[str, ...], str]] = {
    "ensemble-paper-focal+fcn": (
        ("paper-focal", "fcn-512x256-normal3-mined"),
        "mean of the two int8 models' validation-standardised malignancy logits, no retraining (a measurement, not a loadable model)",
    ),
}

SHIPPED = "fcn-512x256-normal3-mined"


def config_for(name: str) -> TrainConfig:
    overrides, _ = ABLATIONS[name]
    return replace(TrainConfig(), **overrides)


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
    rows = {name: what for name, (_, what) in PAPER_ABLATIONS.items()} | {name: what for name, (_, what) in ABLATIONS.items()}
    rows |= {name: what for name, (_, what) in ENSEMBLES.items()}
    for name, what in rows.items():
        cells = row_for(name, root)
        if cells is None:
            cells = [name, "not run"] + ["-"] * (len(header) - 2)
        lines.append("| " + " | ".join(cells) + " |")
        notes.append(f"- `{name}`: {what}.")
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.lesion_ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "collect", "card", "table"])
    parser.add_argument("--card", type=Path, help="card: the model card (JSON) whose recipe is the --configs row")
    parser.add_argument("--doc", type=Path, help="table: also write the table between the ablation-table markers of this Markdown file")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--configs", default=",".join(list(PAPER_ABLATIONS) + list(ABLATIONS) + list(ENSEMBLES)))
    parser.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 conversion and evaluation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "run":
        only = None if args.folds is None else [int(f) for f in args.folds.split(",")]
        for name in args.configs.split(","):
            if name in PAPER_ABLATIONS:
                from convert.paper_cv import run_paper_cv
                from convert.train import get_config

                run_paper_cv(get_config(PAPER_ABLATIONS[name][0]), args.root / name, TrainConfig(), only)
                continue
            if name in ENSEMBLES:
                run_ensemble(name, args.root)
                continue
            if name not in ABLATIONS:
                parser.error(f"unknown configuration {name!r}; choose from {', '.join(list(PAPER_ABLATIONS) + list(ABLATIONS) + list(ENSEMBLES))}")
            cfg = config_for(name)
            run_cv(cfg, args.root / name, only)
            if not args.no_int8:
                int8_cv(cfg, args.root / name)
    if args.command == "collect":
        for name in args.configs.split(","):
            if (args.root / name).is_dir():
                collect(name, args.root / name)
    if args.command == "card":
        if args.card is None or args.configs not in PAPER_ABLATIONS:
            parser.error("card needs --card PATH and one paper configuration in --configs")
        try:
            add_to_card(args.card, args.configs, args.root)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.card}: metrics.recipe_cross_validation from {args.root / args.configs}")
        return 0
    text = table(args.root)
    if args.doc is not None:
        write_between_markers(args.doc, text)
    print(text, end="")
    return 0


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
        "command": f"python -m convert.lesion_ablation run --root RUNS --configs {name}",
        "per_source": per_source,
    }


def add_to_card(card_path: Path, name: str, root: Path) -> None:
    """Write ``recipe_section`` into the card's metrics, after checking the card was trained with that recipe."""
    card = json.loads(card_path.read_text())
    recipe = card.get("training", {}).get("config", {})
    recipe = recipe.get("name") if isinstance(recipe, dict) else recipe
    if recipe != PAPER_ABLATIONS[name][0]:
        raise ValueError(f"{card_path} was trained with config {recipe!r}, not {PAPER_ABLATIONS[name][0]!r} (row {name})")
    card.setdefault("metrics", {})["recipe_cross_validation"] = recipe_section(name, root)
    card_path.write_text(json.dumps(card, indent=1) + "\n")


def row_pool(name: str):
    """(preprocessed pool, fold config) of a paper or FCN row: the images its models take, and its folds."""
    from convert.lesion_data import load_pool
    from convert.train_lesion import DEFAULT_CACHE

    if name in PAPER_ABLATIONS:
        from convert.train import get_config

        folds, spec = TrainConfig(), get_config(PAPER_ABLATIONS[name][0]).preprocess_spec()
    else:
        folds = config_for(name)
        spec = folds.spec()
    return load_pool(spec, DEFAULT_CACHE), folds


def run_ensemble(name: str, root: Path) -> dict:
    """Combine the finished folds of an ensemble's member rows (no training)."""
    from convert.ensemble_cv import ensemble_cv

    members = {}
    for member in ENSEMBLES[name][0]:
        pool, folds = row_pool(member)
        members[member] = (root / member, pool, folds)
    return ensemble_cv(members, root / name)


def collect(name: str, run: Path) -> None:
    """Metrics of a finished (or partly finished) row from its fold*.npz predictions."""
    from convert.train_lesion import collect_cv

    if name in ENSEMBLES:
        run_ensemble(name, run.parent)
        return
    pool, folds = row_pool(name)
    if name in PAPER_ABLATIONS:
        from convert.paper_cv import write_parity

        write_parity(run, folds.folds)
    for suffix in ("", "_int8"):
        collect_cv(pool, run, folds, suffix=suffix)


if __name__ == "__main__":
    sys.exit(main())
