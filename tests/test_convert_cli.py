"""``python -m convert``: one click command line for every step, with help, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from convert.cli import cli, main

REPO = Path(__file__).resolve().parent.parent

HELP = """\
Usage: python -m convert [OPTIONS] COMMAND [ARGS]...

  Train, convert to int8 (parity-gated), evaluate and cross-validate the models.

  Run from a source checkout with the [train] extra. Research use only, not a
  diagnostic device.

Options:
  -h, --help  Show this message and exit.

Commands:
  build       Train, int8, parity, evaluate and card in one go.
  train       Train a paper-CNN configuration (hold-out split).
  convert     int8 + float32 TFLite of a run, with the parity gate.
  evaluate    Metrics and model card of a .tflite on a run's test patients.
  report      Evaluation report (Markdown, JSON, PNGs) on any labelled set.
  cv          k-fold cross-validation by patient of any configuration.
  ablation    The ablation's rows: run, collect, card, table, pooling.
  pretrained  The pretrained trunk's rows: export, archive, experiments.
"""

PRETRAINED_COMMANDS = """\
Commands:
  time         Time a frozen and a fine-tune epoch (to plan a run).
  export       Ship a fold's model: int8, lesion map, card.
  archive      Copy a run's small outputs into the archive.
  collect      Re-derive an archived row's metrics.
  table        The pretrained rows' table from the archive.
  reconvert    A row's folds converted again: flip TTA, int8 activations.
  frozen-lr    Frozen features + logistic regression (the floor).
  average      Mean of rows' standardised out-of-fold logits.
  int8-layers  Where int8 departs from float, per tensor.
  int8-table   The int8-layers probe's table.
"""

ABLATION_COMMANDS = """\
Commands:
  run      Train what is missing of each row (resumable).
  collect  Re-derive finished rows' metrics (no training).
  card     Add a row's cross-validated figures to a model card.
  table    Print the Markdown table of the finished rows.
  pooling  A lesion-FCN row's fold models under other whole-image poolings.
"""


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="python -m convert", terminal_width=80)


def test_help_lists_every_step_in_order():
    result = invoke("--help")
    assert result.exit_code == 0
    assert result.output == HELP
    assert invoke("ablation", "--help").output.endswith(ABLATION_COMMANDS)


def test_every_command_and_option_has_help():
    def walk(group: click.Group, path: tuple[str, ...]):
        for name, command in group.commands.items():
            yield path + (name,), command
            if isinstance(command, click.Group):
                yield from walk(command, path + (name,))

    commands = list(walk(cli, ()))
    assert {" ".join(p) for p, _ in commands} == {
        "build", "train", "convert", "evaluate", "report", "cv", "ablation",
        "ablation run", "ablation collect", "ablation card", "ablation table", "ablation pooling", "pretrained",
        *(f"pretrained {name}" for name in ("time", "export", "archive", "collect", "table", "reconvert", "frozen-lr", "average",
                                            "int8-layers", "int8-table")),
    }
    for path, command in commands:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        assert result.output.startswith(f"Usage: python -m convert {' '.join(path)} [OPTIONS]"), path
        assert command.help and " ".join(command.help.split("\n\n")[0].split()) in " ".join(result.output.split()), path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.name)


def test_a_bad_setting_is_one_line_and_exit_code_2(tmp_path):
    result = invoke("cv", "--config", "paper", "--set", "epochs=many", "--out", str(tmp_path / "cv"))
    assert (result.exit_code, result.output) == (2, "Error: epochs=many: not a valid int\n")
    assert not (tmp_path / "cv").exists()  # refused before anything ran
    result = invoke("cv", "--config", "mnv2-512", "--image-size", "64", "--out", str(tmp_path / "cv"))
    assert (result.exit_code, result.output) == (2, "Error: --image-size does not apply to 'mnv2-512' (pretrained); use --set\n")


def test_an_unknown_row_is_a_usage_error(tmp_path):
    result = invoke("ablation", "run", "--root", str(tmp_path), "--configs", "no-such-row")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith("Error: Invalid value for --configs: unknown configuration 'no-such-row'; choose from paper-focal,")


def test_main_returns_the_exit_code_and_python_m_convert_runs_it():
    assert main(["--help"]) == 0
    done = subprocess.run([sys.executable, "-m", "convert", "train", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("Usage: python -m convert train [OPTIONS]")


def test_build_of_a_lesion_fcn_row_cross_validates_and_ships_a_fold_the_runtime_loads(tmp_path, monkeypatch):
    """``build --config FCN-ROW``: the FCN's cross-validation, int8 per fold, fold 0's model + card (synthetic breasts)."""
    import json

    import pytest

    pytest.importorskip("tensorflow")
    from test_lesion_model import synthetic_lesion_pool

    from convert.training import train_lesion
    from edge_birads.classifier import Classifier

    pool = synthetic_lesion_pool()
    monkeypatch.setattr(train_lesion, "load_pool", lambda spec, cache: pool)
    settings = ["height=128", "width=128", "fcn_width=8", "epochs=1", "batch_size=16", "folds=3", "validation_fraction=0.25",
                "patch.size=48", "patch.per_lesion_mias=24", "patch.normal_per_mias_normal=16", "patch.normal_per_mias_lesion=6"]
    args = ["build", "--config", "fcn-512x256-normal3-mined", "--out", str(tmp_path / "model" / "lesion"), "--work", str(tmp_path / "run")]
    result = invoke(*args, *[f"--set={s}" for s in settings])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "run").glob("fold*_int8.npz")) == ["fold0_int8.npz", "fold1_int8.npz", "fold2_int8.npz"]
    card = json.loads((tmp_path / "model" / "lesion.json").read_text())
    assert card["training"]["command"].startswith("python -m convert build --config fcn-512x256-normal3-mined")
    assert card["training"]["config"]["normal_weight_ratio"] == 3.0 and card["training"]["config"]["height"] == 128
    classifier = Classifier(tmp_path / "model" / "lesion.tflite")
    assert classifier.card.name == "lesion"


def test_the_pretrained_group_lists_its_steps_and_refuses_another_recipes_row_in_one_line():
    result = invoke("pretrained", "--help")
    assert result.exit_code == 0 and result.output.endswith(PRETRAINED_COMMANDS)
    refused = invoke("pretrained", "collect", "--config", "paper")
    assert refused.exit_code == 2
    assert refused.output == "Error: 'paper' is a paper-cnn row, not a pretrained one\n"


def test_pretrained_collect_re_derives_an_archived_row_through_the_command_line(shared_data):
    from convert.training.pretrained import RESULTS

    result = invoke("pretrained", "collect", "--config", "frozen-lr-whole")
    assert result.exit_code == 0, result.output
    metrics = json.loads((RESULTS / "frozen-lr-whole" / "metrics_int8.json").read_text())
    cbis = metrics["pooled_out_of_fold"]["cbis-ddsm-mass"]["auc_malignant_vs_rest"]
    assert f"malignant AUC {cbis:.3f}" in result.output and result.output.startswith("5 fold(s), int8 models")
