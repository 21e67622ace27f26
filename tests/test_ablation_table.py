"""The ablation table reads finished cross-validation runs, paper and FCN rows alike."""

from __future__ import annotations

import json

from convert.cli import main as convert_main
from convert.experiments.lesion_ablation import ABLATIONS, PAPER_ABLATIONS, table


def write_metrics(run, folds_done: int, mias_auc: float, cbis_auc: float) -> None:
    run.mkdir(parents=True)
    pooled = {
        "mini-mias": {"auc_malignant_vs_rest": mias_auc, "auc_ci95": [mias_auc - 0.1, mias_auc + 0.1], "sensitivity_at_70_specificity": 0.5,
                      "n_images": 242, "n_malignant": 39, "referral_sensitivity": 0.9, "referral_specificity": 0.25},
        "cbis-ddsm-mass": {"auc_malignant_vs_rest": cbis_auc, "auc_ci95": [cbis_auc - 0.05, cbis_auc + 0.05], "n_images": 1231, "n_malignant": 600,
                           "referral_sensitivity": 0.95, "referral_specificity": 0.1},
    }
    spread = {"mini-mias/auc_malignant_vs_rest": {"mean": mias_auc + 0.01, "sd": 0.07}, "cbis-ddsm-mass/auc_malignant_vs_rest": {"mean": cbis_auc, "sd": 0.03}}
    (run / "metrics_int8.json").write_text(json.dumps({"pooled_out_of_fold": pooled, "per_fold_mean_sd": spread, "folds_done": folds_done}))


def test_table_has_a_row_per_configuration_and_says_what_has_not_run(tmp_path):
    write_metrics(tmp_path / "paper-focal", 5, 0.55, 0.61)
    write_metrics(tmp_path / "fcn-512x256-normal3-mined", 1, 0.64, 0.59)
    lines = table(tmp_path).splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and " | " in line}
    assert set(PAPER_ABLATIONS) | set(ABLATIONS) <= set(rows)
    assert rows["paper-focal"] == "| paper-focal | 5 (int8) | 0.55 [0.45, 0.65] | 0.56 ± 0.07 | 0.50 | 0.90 / 0.25 | 0.61 [0.56, 0.66] | 0.61 ± 0.03 | 0.95 / 0.10 |"
    # one fold has no spread to report
    assert rows["fcn-512x256-normal3-mined"].split(" | ")[3] == "-"
    assert rows["paper-ce"] == "| paper-ce | not run | - | - | - | - | - | - | - |"


def test_unknown_configuration_is_a_usage_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        convert_main(["ablation", "run", "--root", str(tmp_path), "--configs", "no-such-config"])
    assert exit_info.value.code == 2
    assert "unknown configuration 'no-such-config'" in capsys.readouterr().err


def test_card_gets_the_recipe_cross_validation_and_info_shows_it(tmp_path):
    from edge_birads.card import parse_card
    from edge_birads.card_summary import summarize
    from edge_birads.classifier import default_model_path

    write_metrics(tmp_path / "paper-focal", 5, 0.55, 0.61)
    card_path = tmp_path / "card.json"
    card_path.write_text(default_model_path().with_suffix(".json").read_text())
    assert convert_main(["ablation", "card", "--root", str(tmp_path), "--configs", "paper-focal", "--card", str(card_path)]) == 0
    data = json.loads(card_path.read_text())
    section = data["metrics"]["recipe_cross_validation"]
    assert section["folds"] == 5 and section["per_source"]["mini-mias"]["auc_per_fold_mean"] == 0.56
    text = summarize(parse_card(data))
    assert "| mini-mias | 242 (39) | 0.550 (0.450-0.650) | 0.560 ± 0.070 | 50.0% | 90.0% | 25.0% |" in text
    assert "package): `python -m convert ablation run --root RUNS --configs paper-focal`." in text


def test_card_refuses_a_row_of_another_recipe(tmp_path, capsys):
    from edge_birads.classifier import default_model_path

    write_metrics(tmp_path / "paper-gap", 5, 0.6, 0.6)
    card_path = tmp_path / "card.json"
    before = default_model_path().with_suffix(".json").read_text()
    card_path.write_text(before)
    assert convert_main(["ablation", "card", "--root", str(tmp_path), "--configs", "paper-gap", "--card", str(card_path)]) == 2
    assert "was trained with config 'paper', not 'gap' (row paper-gap)" in capsys.readouterr().err
    assert card_path.read_text() == before


def test_table_is_written_between_the_markers_of_a_page(tmp_path):
    write_metrics(tmp_path / "paper-focal", 5, 0.55, 0.61)
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- ablation-table:start -->\nold table\n<!-- ablation-table:end -->\nafter\n")
    assert convert_main(["ablation", "table", "--root", str(tmp_path), "--doc", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("intro\n<!-- ablation-table:start -->\n| configuration |") and text.endswith("<!-- ablation-table:end -->\nafter\n")
    assert "old table" not in text and "| paper-focal | 5 (int8) |" in text
