"""``python -m convert``: build, train, convert, evaluate, report, cross-validate, and the ablation.

Examples (from the repository root)::

    python -m convert build --config paper --out edge_birads/models/default --work runs/default
    python -m convert train --config paper --out runs/paper
    python -m convert convert --run runs/paper --out runs/paper/paper.tflite
    python -m convert evaluate --run runs/paper --model runs/paper/paper.tflite
    python -m convert build --config ci --out runs/ci/ci      # a tiny pipeline check (CI)
    python -m convert report --model edge_birads/models/default.tflite --data mias --run runs/default --out runs/report
    python -m convert cv --config paper-gap --out runs/cv-gap   # any row of convert.training.rows, through the one runner
    python -m convert ablation table --root RUNS --doc docs/ablation.md

Exit codes: 0 success, 1 failed parity / conversion check, 2 usage or data errors.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import click

from convert.evaluation.export import INT8_ACTIVATIONS

log = logging.getLogger("convert")


class UserError(click.ClickException):
    """A usage or data error: one line on stderr, exit code 2."""

    exit_code = 2


class Group(click.Group):
    """A click group whose commands' ``ValueError`` / ``FileNotFoundError`` become one-line user errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The pipeline's order (build first: it runs the next four), then any other in the order defined."""
        order = ("build", "train", "convert", "evaluate", "report", "cv", "ablation", "pretrained")
        return sorted(self.commands, key=lambda name: order.index(name) if name in order else len(order))

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        argv = list(args)
        ctx = super().make_context(info_name, argv.copy(), parent=parent, **extra)
        if parent is None:  # the command line as typed, for the run's records (config.json, the card)
            ctx.meta["convert.argv"] = argv
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None


def _command_line(ctx: click.Context) -> str:
    return "python -m convert " + " ".join(shlex.quote(a) for a in ctx.meta["convert.argv"])


def _folds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(f) for f in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated fold numbers, e.g. 0,1") from None


# ---------------------------------------------------------------- options shared by commands

def training_options(command):
    for option in reversed([
        click.option("--config", "config_name", default="paper", show_default=True,
                     help="a named configuration of convert.training.rows (paper, paper-ce, gap, ci, fcn-512x256-normal3-mined, mnv2-512, ...)"),
        click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="override a field of the configuration (patch.size=...)"),
        click.option("--data", help="paper CNN: auto | mias,cbis | synthetic | cbis-dicom | paper:PATH (default: the config's)"),
        click.option("--epochs", type=int, help="training epochs (default: the config's)"),
        click.option("--image-size", type=int, help="paper CNN: input size (default: the config's)"),
        click.option("--batch-size", type=int, help="default: the config's"),
        click.option("--subset", type=int, help="paper CNN: at most N images per source, whole patients (quick runs)"),
        click.option("--seed", type=int, help="training seed (the folds are the protocol's, seed 0)"),
        click.option("--threads", type=int, help="TensorFlow threads (default 2)"),
    ]):
        command = option(command)
    return command


def conversion_options(command):
    for option in reversed([
        click.option("--representative", type=int, default=200, show_default=True, help="training images used to calibrate int8"),
        click.option("--min-agreement", type=float, default=0.95, show_default=True, help="minimum int8-vs-float top-1 agreement"),
        click.option("--max-diff", type=float, default=0.1, show_default=True,
                     help="limit on the per-image largest |probability difference| at --diff-quantile"),
        click.option("--diff-quantile", type=float, default=0.99, show_default=True,
                     help="quantile of images the --max-diff limit applies to (1.0 = every image)"),
        click.option("--allow-new-ops", is_flag=True, help="accept ops tflite-runtime 2.14 cannot run"),
    ]):
        command = option(command)
    return command


def _configuration(config_name: str, settings, **options):
    """(recipe name, configuration) of a row, with ``--set`` settings and the explicit training options on top."""
    from dataclasses import fields, replace

    from convert.training.recipes import config_for
    from convert.training.rows import ROWS

    cfg = config_for(config_name, settings)
    given = {key: value for key, value in options.items() if value is not None}
    known = {f.name for f in fields(cfg)}
    for key in given:
        if key not in known:
            raise UserError(f"--{key.replace('_', '-')} does not apply to {config_name!r} ({ROWS[config_name].recipe}); use --set")
    return ROWS[config_name].recipe, replace(cfg, **given)


def _paper_configuration(config_name: str, settings, **options):
    recipe, cfg = _configuration(config_name, settings, **options)
    if recipe != "paper-cnn":
        raise UserError(f"{config_name!r} is a {recipe} row; this step runs the paper CNN's hold-out pipeline (try: build or cv)")
    return cfg


# ---------------------------------------------------------------- the group

@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train, convert to int8 (parity-gated), evaluate and cross-validate the models.

    Run from a source checkout with the [train] extra. Research use only, not a diagnostic device.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


@cli.command(short_help="Train a paper-CNN configuration (hold-out split).")
@training_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (model.keras, history.json, split.json)")
@click.pass_context
def train(ctx, config_name, settings, out, **options) -> None:
    """Train a paper-CNN configuration on a hold-out split into a run directory."""
    from convert.training.train import train as train_run

    train_run(_paper_configuration(config_name, settings, **options), out, command=_command_line(ctx))
    log.info("run written to %s", out)


def _load_run(run_dir: Path):
    from convert.models.paper_cnn import load_model
    from convert.training.train import TrainConfig, configure_tensorflow, load_run_data

    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    configure_tensorflow(config.threads, config.seed)
    return config, load_model(str(run_dir / "model.keras")), load_run_data(run_dir)


def float_path_for(int8_path: Path, run_dir: Path) -> Path:
    """The float32 twin lives in the run directory, never beside a bundled model."""
    return run_dir / f"{int8_path.stem}_float32.tflite"


def _convert_or_exit(ctx, model, data, int8_path: Path, work: Path, seed: int, options: dict):
    from convert.evaluation.evaluate import ParityError, convert_model

    try:
        return convert_model(
            model, data, int8_path, float_path_for(int8_path, work), options["representative"], options["min_agreement"],
            options["max_diff"], seed=seed, allow_new_ops=options["allow_new_ops"], diff_quantile=options["diff_quantile"],
        )
    except ParityError as exc:
        log.error("%s", exc)
        ctx.exit(1)


@cli.command("convert", short_help="int8 + float32 TFLite of a run, with the parity gate.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="run directory written by train")
@click.option("--out", help="int8 .tflite path (default RUN/model_int8.tflite); the float32 one goes to RUN/<name>_float32.tflite")
@conversion_options
@click.pass_context
def convert_command(ctx, run_dir, out, **options) -> None:
    """int8 and float32 TFLite of a run's model, with the parity check (exit 1 when poor)."""
    run_dir = Path(run_dir)
    config, model, data = _load_run(run_dir)
    out = Path(out) if out else run_dir / "model_int8.tflite"
    conversion = _convert_or_exit(ctx, model, data, out, run_dir, config.seed, options)
    record = {**conversion.to_dict(), "command": _command_line(ctx)}
    (run_dir / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")


@cli.command(short_help="Metrics and model card of a .tflite on a run's test patients.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="run directory written by train")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help=".tflite to evaluate; its card is written beside it")
@click.option("--no-keras", is_flag=True, help="skip the float Keras figures")
@click.pass_context
def evaluate(ctx, run_dir, model, no_keras) -> None:
    """Metrics of a .tflite on the run's test patients, and its model card."""
    from convert.evaluation.evaluate import build_card, evaluate_model, summary_markdown, write_card
    from convert.models.paper_cnn import describe

    run_dir = Path(run_dir)
    config, keras_model, data = _load_run(run_dir)
    conversion_file = run_dir / "conversion.json"
    conversion = json.loads(conversion_file.read_text()) if conversion_file.is_file() else {}
    history = json.loads((run_dir / "history.json").read_text())
    training_command = json.loads((run_dir / "config.json").read_text()).get("command", "")
    evaluation = evaluate_model(model, data, config.referral_sensitivity, None if no_keras else keras_model, seed=config.seed)
    card = build_card(
        model, data, config, evaluation, conversion, describe(keras_model), training_command,
        training_seconds=history.get("training_seconds"), keras_config=json.loads(keras_model.to_json()),
    )
    # Separate steps: say which commands made the weights, the .tflite and this card.
    card["training"]["provenance"] = {
        "weights": training_command,
        "tflite": conversion.get("command", "not recorded (converted before commands were recorded)"),
        "card": _command_line(ctx),
    }
    path = write_card(card, model)
    (run_dir / "report.md").write_text(summary_markdown(card))
    log.info("card written to %s; report in %s", path, run_dir / "report.md")
    click.echo(summary_markdown(card))


@cli.command(short_help="Train, int8, parity, evaluate and card in one go.")
@training_options
@click.option("--out", required=True, help="model path without suffix: writes OUT.tflite and OUT.json")
@click.option("--work", help="run directory for weights, histories, float32 TFLite (default runs/<name>)")
@click.option("--fold", type=int, default=0, show_default=True, help="cross-validated recipes: the fold whose model is shipped")
@conversion_options
@click.pass_context
def build(ctx, config_name, settings, out, work, fold, **options) -> None:
    """Train, convert to int8, check parity, evaluate and write the card, in one go.

    The paper CNN trains on a hold-out split; the lesion FCN and the pretrained
    recipe cross-validate (resumable) and ship fold --fold's int8 model, its
    test patients the card's.
    """
    conversion = {k: options.pop(k) for k in ("representative", "min_agreement", "max_diff", "diff_quantile", "allow_new_ops")}
    recipe, cfg = _configuration(config_name, settings, **options)
    out = Path(out)
    int8_path = out.with_suffix(".tflite") if out.suffix != ".tflite" else out
    work = Path(work) if work else Path("runs") / int8_path.stem
    command = _command_line(ctx)
    if recipe == "lesion-fcn":
        from convert.training.train_lesion import export_fold, int8_cv, run_cv

        run_cv(cfg, work)
        int8_cv(cfg, work)
        click.echo(json.dumps(export_fold(cfg, work, fold, int8_path.with_suffix(""), command), indent=1))
        return
    if recipe == "pretrained":
        from convert.training import pretrained
        from convert.training.recipes import run_cv

        run_cv("pretrained", cfg, work)
        card = pretrained.export_fold(cfg, work, fold, int8_path, config_name, command)
        click.echo(json.dumps({"model": str(int8_path), "sha256": card["sha256"], "threshold": card["referral"]["threshold"]}, indent=1))
        return
    from convert.evaluation.evaluate import build_card, evaluate_model, summary_markdown, write_card
    from convert.models.paper_cnn import describe
    from convert.training.train import train as train_run

    started = time.perf_counter()
    model, data = train_run(cfg, work, command=command)
    converted = _convert_or_exit(ctx, model, data, int8_path, work, cfg.seed, conversion)
    (work / "conversion.json").write_text(json.dumps(converted.to_dict(), indent=1) + "\n")
    history = json.loads((work / "history.json").read_text())
    evaluation = evaluate_model(int8_path, data, cfg.referral_sensitivity, model, seed=cfg.seed)
    card = build_card(
        int8_path, data, cfg, evaluation, converted.to_dict(), describe(model), command,
        training_seconds=history.get("training_seconds"), keras_config=json.loads(model.to_json()),
    )
    card["training"]["build_seconds"] = round(time.perf_counter() - started, 1)
    path = write_card(card, int8_path)
    report = summary_markdown(card)
    (work / "report.md").write_text(report)
    click.echo(report)
    log.info("built %s and %s in %.0f s (work files in %s)", int8_path, path, time.perf_counter() - started, work)


@cli.command(short_help="Evaluation report (Markdown, JSON, PNGs) on any labelled set.")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help=".tflite with its card beside it")
@click.option("--data", required=True, help="mias | cbis | cbis-dicom | paper:PATH | paper4:PATH | synthetic (comma-separated)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), help="run directory: report only its test patients and plot its training curves")
@click.option("--all", "all_images", is_flag=True, help="with --run: report every image, training ones included")
def report(model, data, out, run_dir, all_images) -> None:
    """Evaluation report (Markdown, JSON, PNGs) of a .tflite on any labelled set."""
    from convert.evaluation.report import make_report

    result = make_report(model, data, out, run_dir, all_images)
    click.echo((Path(out) / "report.md").read_text())
    log.info("report of %d images written to %s", result["data"]["images"], out)


@cli.command(short_help="k-fold cross-validation by patient of any configuration.")
@training_options
@click.option("--folds", type=int, default=5, show_default=True, help="number of patient-level folds (5: the ablation's)")
@click.option("--only", help="comma-separated fold numbers to run now (default all; finished folds are kept, so runs resume)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for the per-fold predictions, int8 models, log.jsonl and metrics*.json")
def cv(config_name, settings, folds, only, out, **options) -> None:
    """k-fold cross-validation by patient of any configuration (the ablation's folds, int8-scored)."""
    from convert.data.split import FoldProtocol
    from convert.training.paper_cv import describe_metrics
    from convert.training.recipes import run_cv
    from convert.training.rows import ROWS

    if ROWS.get(config_name) is not None and ROWS[config_name].members:
        raise UserError(f"{config_name!r} combines other rows: python -m convert ablation run --configs {config_name}")
    recipe, cfg = _configuration(config_name, settings, **options)
    metrics = run_cv(recipe, cfg, Path(out), FoldProtocol(folds=folds), _folds(only))
    click.echo(describe_metrics(metrics))


# ---------------------------------------------------------------- the ablation

@cli.group(cls=Group, short_help="The ablation's rows: run, collect, card, table, pooling.")
def ablation() -> None:
    """The ablation: named rows x patient-level cross-validated, int8-scored metrics (docs/ablation.md)."""


def _row_names(configs: str | None) -> list[str]:
    from convert.experiments.lesion_ablation import check_rows
    from convert.training.rows import rows_of

    try:
        return check_rows(configs.split(",")) if configs else list(rows_of("ablation"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--configs") from None


@ablation.command("run", short_help="Train what is missing of each row (resumable).")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="folder holding one run folder per row (ROOT/NAME)")
@click.option("--configs", help="comma-separated rows (default: every row of the table)")
@click.option("--only", help="comma-separated folds to run now (default: all; finished folds are kept)")
def ablation_run(root, configs, only) -> None:
    """Train what is missing of each row (resumable; ensembles combine their members)."""
    from convert.experiments.lesion_ablation import run

    names = _row_names(configs)
    run(names, Path(root), _folds(only))


@ablation.command("collect", short_help="Re-derive finished rows' metrics (no training).")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="folder holding one run folder per row")
@click.option("--configs", help="comma-separated rows (default: every row of the table)")
def ablation_collect(root, configs) -> None:
    """Re-derive finished rows' metrics from their saved predictions (no training)."""
    from convert.experiments.lesion_ablation import collect

    for name in _row_names(configs):
        if (Path(root) / name).is_dir():
            collect(name, Path(root) / name)


@ablation.command("card")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="folder holding one run folder per row")
@click.option("--configs", required=True, help="one paper-CNN row, the recipe the card's model was trained with")
@click.option("--card", "card_path", required=True, type=click.Path(exists=True, dir_okay=False), help="the model card (JSON) to add to")
def ablation_card(root, configs, card_path) -> None:
    """Add a row's cross-validated figures to a model card."""
    from convert.experiments.lesion_ablation import add_to_card

    add_to_card(Path(card_path), configs, Path(root))
    click.echo(f"{card_path}: metrics.recipe_cross_validation from {Path(root) / configs}")


@ablation.command("table")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="folder holding one run folder per row")
@click.option("--doc", type=click.Path(exists=True, dir_okay=False), help="also write the table between the ablation-table markers of this page")
def ablation_table(root, doc) -> None:
    """Print the Markdown table of the finished rows."""
    from convert.experiments.lesion_ablation import table, write_between_markers

    text = table(Path(root))
    if doc is not None:
        write_between_markers(Path(doc), text)
    click.echo(text, nl=False)


@ablation.command("pooling")
@click.option("--config", "config_name", default="fcn-512x256-normal3-mined", show_default=True, help="a lesion-FCN row")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="override a field of the configuration")
@click.option("--out", required=True, type=click.Path(exists=True, file_okay=False), help="the row's run folder (its fold weights)")
def ablation_pooling(config_name, settings, out) -> None:
    """A lesion-FCN row's fold models under other whole-image poolings."""
    from convert.training.train_lesion import pooling_ablation

    recipe, cfg = _configuration(config_name, settings)
    if recipe != "lesion-fcn":
        raise UserError(f"{config_name!r} is a {recipe} row; pooling compares the lesion FCN's poolings")
    click.echo(json.dumps(pooling_ablation(cfg, Path(out)), indent=1))


# ---------------------------------------------------------------- the pretrained trunk's rows

@cli.group(cls=Group, short_help="The pretrained trunk's rows: export, archive, experiments.")
def pretrained() -> None:
    """The ImageNet-initialised rows (convert/training/pretrained.py; cross-validate them with `cv --config ROW`)."""


def _pretrained_row(config_name: str, settings=()):
    recipe, cfg = _configuration(config_name, settings)
    if recipe != "pretrained":
        raise UserError(f"{config_name!r} is a {recipe} row, not a pretrained one")
    return cfg


RESULTS_OPTION = click.option("--results", type=click.Path(file_okay=False), default=None,
                              help="where rows are archived (default: docs/results)")


def _results(results: str | None) -> Path:
    from convert.training.pretrained import RESULTS

    return Path(results) if results else RESULTS


@pretrained.command("time", short_help="Time a frozen and a fine-tune epoch (to plan a run).")
@click.option("--config", "config_name", default="mnv2-512", show_default=True, help="a pretrained row")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="override a field of the configuration")
def pretrained_time(config_name, settings) -> None:
    """Time batches of a frozen and of a fine-tune epoch on fold 0 (to plan a run)."""
    from convert.training.pretrained import time_epochs

    time_epochs(_pretrained_row(config_name, settings))


@pretrained.command("export", short_help="Ship a fold's model: int8, lesion map, card.")
@click.option("--config", "config_name", required=True, help="the pretrained row the run was trained with")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="override a field of the configuration")
@click.option("--out", required=True, type=click.Path(exists=True, file_okay=False), help="the row's run folder (its fold weights)")
@click.option("--fold", type=int, default=0, show_default=True, help="the fold whose model is shipped (its test patients are the card's)")
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="where the .tflite goes (its card beside it)")
@RESULTS_OPTION
@click.pass_context
def pretrained_export(ctx, config_name, settings, out, fold, model, results) -> None:
    """One fold's model as a shippable int8 TFLite with its lesion map and card (parity-gated)."""
    from convert.training.pretrained import export_fold

    card = export_fold(_pretrained_row(config_name, settings), Path(out), fold, Path(model), config_name, _command_line(ctx), _results(results))
    click.echo(json.dumps({"model": str(model), "sha256": card["sha256"], "threshold": card["referral"]["threshold"],
                           "test": {s: v["malignant_vs_rest"]["auc"] for s, v in card["metrics"]["test"].items() if s != "pooled"},
                           "lesion_map_hits": card["metrics"]["lesion_map_hits"], "parity": card["parity"]}, indent=1))


@pretrained.command("archive", short_help="Copy a run's small outputs into the archive.")
@click.option("--config", "config_name", required=True, help="the row")
@click.option("--out", required=True, type=click.Path(exists=True, file_okay=False), help="the row's run folder")
@RESULTS_OPTION
def pretrained_archive(config_name, out, results) -> None:
    """Copy a run's small outputs (per-fold predictions, histories, metrics; no weights) into RESULTS/ROW."""
    from convert.training.pretrained import archive

    _pretrained_row(config_name)
    click.echo("\n".join(archive(Path(out), _results(results) / config_name)))


@pretrained.command("collect", short_help="Re-derive an archived row's metrics.")
@click.option("--config", "config_name", required=True, help="the row")
@RESULTS_OPTION
def pretrained_collect(config_name, results) -> None:
    """Re-derive an archived row's metrics from its archived predictions."""
    from convert.training.paper_cv import describe_metrics
    from convert.training.pretrained import collect

    _pretrained_row(config_name)
    click.echo(describe_metrics(collect(_results(results) / config_name)))


@pretrained.command("table", short_help="The pretrained rows' table from the archive.")
@click.option("--doc", type=click.Path(exists=True, dir_okay=False), help="also write it between the pretrained-table markers of this page")
@RESULTS_OPTION
def pretrained_table(doc, results) -> None:
    """Print the pretrained rows' table from the archive."""
    from convert.experiments.lesion_ablation import write_between_markers
    from convert.training.pretrained import TABLE_END, TABLE_START, table

    text = table(_results(results))
    if doc is not None:
        write_between_markers(Path(doc), text, TABLE_START, TABLE_END)
    click.echo(text, nl=False)


@pretrained.command("reconvert", short_help="A row's folds converted again: flip TTA, int8 activations.")
@click.option("--source", required=True, type=click.Path(exists=True, file_okay=False), help="a fine-tuned row's run folder (its fold weights)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the new row's run folder")
@click.option("--flip", is_flag=True, help="average the image and its left-right mirror inside the graph")
@click.option("--activations", type=click.Choice(INT8_ACTIVATIONS), default=None,
              help="int8 activations: calibrated ranges (full-integer) or dynamic, per image (default: the source row's)")
def pretrained_reconvert(source, out, flip, activations) -> None:
    """A row's fold models converted again and scored as int8 on the same folds (no retraining)."""
    from convert.experiments.pretrained_experiments import reconvert_row
    from convert.training.paper_cv import describe_metrics

    if not flip and activations is None:
        raise click.ClickException("nothing to change: give --flip, --activations or both")
    click.echo(describe_metrics(reconvert_row(Path(source), Path(out), flip=flip, activations=activations)))


@pretrained.command("frozen-lr", short_help="Frozen features + logistic regression (the floor).")
@click.option("--config", "config_name", default="frozen-lr", show_default=True, help="the row whose settings (size, crop) the features use")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the new row's run folder")
def pretrained_frozen_lr(config_name, out) -> None:
    """The floor: frozen ImageNet features + logistic regression through the ablation's folds."""
    from convert.experiments.pretrained_experiments import frozen_lr_row
    from convert.training.paper_cv import describe_metrics

    click.echo(describe_metrics(frozen_lr_row(Path(out), _pretrained_row(config_name))))


@pretrained.command("average", short_help="Mean of rows' standardised out-of-fold logits.")
@click.option("--members", required=True, help="comma-separated run folders whose int8 scores are averaged")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the new row's run folder")
def pretrained_average(members, out) -> None:
    """The mean of rows' out-of-fold logits, each standardised on its validation patients (same folds)."""
    from convert.experiments.pretrained_experiments import average_row
    from convert.training.paper_cv import describe_metrics

    click.echo(describe_metrics(average_row([Path(m) for m in members.split(",")], Path(out))))


@pretrained.command("int8-layers", short_help="Where int8 departs from float, per tensor.")
@click.option("--source", required=True, type=click.Path(exists=True, file_okay=False), help="a fine-tuned row's run folder (its fold weights)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="where int8_layers.json goes")
def pretrained_int8_layers(source, out) -> None:
    """Where int8 departs from float, tensor by tensor (fold 0's model and its ImageNet start)."""
    from convert.experiments.pretrained_experiments import int8_layers_row

    int8_layers_row(Path(source), Path(out))


@pretrained.command("int8-table", short_help="The int8-layers probe's table.")
@click.option("--doc", type=click.Path(exists=True, dir_okay=False), help="also write it between the int8-layers markers of this page")
@RESULTS_OPTION
def pretrained_int8_table(doc, results) -> None:
    """Print the archived int8-layers probe (RESULTS/int8-layers) as a table."""
    from convert.experiments.lesion_ablation import write_between_markers
    from convert.experiments.pretrained_experiments import INT8_TABLE_END, INT8_TABLE_START, int8_layers_table

    text = int8_layers_table(_results(results) / "int8-layers" / "int8_layers.json")
    if doc is not None:
        write_between_markers(Path(doc), text, INT8_TABLE_START, INT8_TABLE_END)
    click.echo(text, nl=False)


def run_click(argv: list[str]) -> int:
    """Run the command line on ``argv`` and return its exit code (a usage error raises SystemExit(2), as argparse did)."""
    try:
        code = cli.main(args=list(argv), prog_name="python -m convert", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0  # ctx.exit(1) (failed parity) comes back as its code


def main(argv: list[str] | None = None) -> int:
    """``python -m convert ARGS``: the exit code of the command."""
    return run_click(sys.argv[1:] if argv is None else argv)
