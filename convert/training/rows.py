"""Named configurations: one registry of rows, each a recipe, its overrides and what it tests.

A row is what ``python -m convert build|train|cv --config NAME`` and
``python -m convert ablation run --configs NAME`` take. ``table`` says which
table of docs/ablation.md shows it ("ablation": ``convert.experiments.lesion_ablation.table``;
"pretrained": ``convert.training.pretrained.table``; None: a named configuration only,
for hold-out builds). An ensemble row has ``members`` (other rows whose
finished folds it combines, no training) instead of overrides.

    config_for("fcn-512x256-normal3-mined", ["fcn_width=32"])   # convert.training.recipes
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    recipe: str  # a key of convert.training.recipes.RECIPES ("ensemble": members combined)
    overrides: dict = field(default_factory=dict)  # fields of the recipe's configuration
    description: str = ""
    table: str | None = None
    members: tuple[str, ...] = ()


# The paper's whole-image CNN (convert.training.paper_cv + convert.training.train). Its configuration's ``name`` is what a card's
# training.config.name records; "paper" and "paper-focal", "gap" and "paper-gap" are one configuration under its preset
# name (python -m convert build --config paper, as the bundled model was built) and its ablation row's name.
PAPER = {"name": "paper"}
GAP = {"name": "gap", "head": "gap", "class_weights": True, "rotation_degrees": 20.0, "crop_to_breast": True}

ROWS: dict[str, Row] = {
    # ---- presets of the hold-out build (python -m convert build|train --config NAME)
    "paper": Row("paper-cnn", PAPER, "Section 5 of the paper: whole image, 224x224, focal loss, Adam, 20 epochs, batch 32"),
    "gap": Row("paper-cnn", GAP, "beyond the paper: global-average-pooling head, breast crop, class weights, rotation"),
    "ci": Row("paper-cnn", {"name": "ci", "image_size": 64, "epochs": 2, "subset": 160, "batch_size": 16},
              "a pipeline check that finishes in well under a minute on 2 cores (CI)"),
    # ---- docs/ablation.md's table, in its order: the paper's CNN ...
    "paper-focal": Row("paper-cnn", PAPER, "the paper's CNN and recipe as bundled: 224x224 whole image, focal loss (gamma 2, alpha 0.25), "
                       "Adam, 20 epochs", "ablation"),
    "paper-ce": Row("paper-cnn", {"name": "paper-ce", "loss": "crossentropy"}, "the paper's baseline: as above with plain cross-entropy",
                    "ablation"),
    "paper-weighted": Row("paper-cnn", {"name": "paper-weighted", "class_weights": True}, "focal loss with balanced class weights", "ablation"),
    "paper-oversample": Row("paper-cnn", {"name": "paper-oversample", "oversample": True, "rotation_degrees": 20.0},
                            "focal loss, minority classes oversampled to the majority count, rotation +-20 degrees", "ablation"),
    "paper-aug": Row("paper-cnn", {"name": "paper-aug", "rotation_degrees": 20.0, "clahe_clip_limit": 2.0},
                     "the abstract's augmentation: focal loss, rotation +-20 degrees, CLAHE (clip 2.0) in preprocessing", "ablation"),
    "paper-gap": Row("paper-cnn", GAP, "beyond the paper: global-average-pooling head instead of Flatten + Dense (11 M -> 0.1 M parameters), "
                     "breast crop before resizing, class weights, rotation +-20 degrees", "ablation"),
    # ... the lesion FCN (convert.training.train_lesion) ...
    "fcn-512x512-balanced": Row(
        "lesion-fcn", {"height": 512, "width": 512, "normal_weight_ratio": 1.0, "mine_from": 0},
        "square 512x512 breast crop (anatomy stretched ~2x horizontally), normal/benign/malignant locations equally weighted, no mining",
        "ablation",
    ),
    "fcn-512x256-normal3-mined": Row(
        "lesion-fcn", {"height": 512, "width": 256, "normal_weight_ratio": 3.0, "mine_from": 3},
        "512x256 (H x W) crop, roughly isotropic for both sources, half the compute; normal locations weighted 3x; "
        "hard negatives (top-3 false-positive locations per training image) mined from epoch 3",
        "ablation",
    ),
    "fcn-512x256-normal3-mined-w32": Row(
        "lesion-fcn", {"height": 512, "width": 256, "normal_weight_ratio": 3.0, "mine_from": 3, "fcn_width": 32},
        "as above with twice the channels (32-64-128-128-256-256; ~4x the multiply-adds): is the FCN capacity-bound?",
        "ablation",
    ),
    # ... and out-of-fold ensembles of finished rows (convert.experiments.ensemble_cv)
    "ensemble-paper-focal+fcn": Row(
        "ensemble", description="mean of the two int8 models' validation-standardised malignancy logits, no retraining "
        "(a measurement, not a loadable model)", table="ablation", members=("paper-focal", "fcn-512x256-normal3-mined"),
    ),
}

def rows_of(table: str) -> dict[str, Row]:
    """The rows one table shows, in its order."""
    return {name: row for name, row in ROWS.items() if row.table == table}


def _pretrained_rows() -> dict[str, Row]:
    """The pretrained recipe's rows, from its own table (convert.training.pretrained.ROWS: name -> (overrides, what it tests))."""
    from convert.training import pretrained

    rows = {name: Row("pretrained", overrides, what, "pretrained") for name, (overrides, what) in pretrained.ROWS.items()}
    if set(rows) & set(ROWS):
        raise RuntimeError(f"row names used twice: {sorted(set(rows) & set(ROWS))}")
    return rows


ROWS.update(_pretrained_rows())
