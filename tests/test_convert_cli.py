"""``python -m convert``: one click command line for every step, with help, and one-line user errors."""

from __future__ import annotations

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
  build     Train, int8, parity, evaluate and card in one go.
  train     Train a paper-CNN configuration (hold-out split).
  convert   int8 + float32 TFLite of a run, with the parity gate.
  evaluate  Metrics and model card of a .tflite on a run's test patients.
  report    Evaluation report (Markdown, JSON, PNGs) on any labelled set.
  cv        k-fold cross-validation by patient of any configuration.
  ablation  The ablation's rows: run, collect, card, table, pooling.
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
        "ablation run", "ablation collect", "ablation card", "ablation table", "ablation pooling",
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
