"""``python -m convert``: train, convert, evaluate, build (all four in one go).

Examples (from the repository root)::

    python -m convert build --config paper --out edge_birads/models/default --work runs/default
    python -m convert train --config paper --out runs/paper
    python -m convert convert --run runs/paper --out runs/paper/paper.tflite
    python -m convert evaluate --run runs/paper --model runs/paper/paper.tflite
    python -m convert build --config ci --out runs/ci/ci      # a tiny pipeline check (CI)
    python -m convert report --model edge_birads/models/default.tflite --data mias --run runs/default --out runs/report
    python -m convert cv --config gap --folds 5 --out runs/cv-gap   # = the ablation's paper-gap row

Exit codes: 0 success, 1 failed parity / conversion check, 2 usage or data errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

log = logging.getLogger("convert")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="paper", help="training recipe (paper, paper-ce, paper-aug, paper-weighted, paper-oversample, gap, ci)")
    parser.add_argument("--data", help="auto | mias,cbis | synthetic | cbis-dicom | paper:PATH (default: the config's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--subset", type=int, help="at most N images per source, whole patients (quick runs)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="TensorFlow threads (default 2)")


def _add_conversion_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--representative", type=int, default=200, help="training images used to calibrate int8 (default 200)")
    parser.add_argument("--min-agreement", type=float, default=0.95, help="minimum int8-vs-float top-1 agreement (default 0.95)")
    parser.add_argument("--max-diff", type=float, default=0.1, help="limit on the per-image largest |probability difference| at --diff-quantile (default 0.1)")
    parser.add_argument("--diff-quantile", type=float, default=0.99, help="quantile of images the --max-diff limit applies to (default 0.99; 1.0 = every image)")
    parser.add_argument("--allow-new-ops", action="store_true", help="accept ops tflite-runtime 2.14 cannot run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a configuration into a run directory")
    _add_training_options(p)
    p.add_argument("--out", required=True, help="run directory (model.keras, history.json, split.json)")

    p = sub.add_parser("convert", help="int8 + float32 TFLite of a run's model, with the parity check")
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--out", help="int8 .tflite path (default RUN/model_int8.tflite); the float32 one goes to RUN/<name>_float32.tflite")
    _add_conversion_options(p)

    p = sub.add_parser("evaluate", help="metrics of a .tflite on the run's test patients, and its model card")
    p.add_argument("--run", required=True)
    p.add_argument("--model", required=True, help=".tflite to evaluate; its card is written beside it")
    p.add_argument("--no-keras", action="store_true", help="skip the float Keras figures")

    p = sub.add_parser("build", help="train -> convert -> parity -> evaluate -> card, in one go")
    _add_training_options(p)
    p.add_argument("--out", required=True, help="model path without suffix: writes OUT.tflite and OUT.json")
    p.add_argument("--work", help="run directory for the Keras model, history, float32 TFLite (default runs/<name>)")
    _add_conversion_options(p)

    p = sub.add_parser("report", help="evaluation report (Markdown, JSON, PNGs) of a .tflite on any labelled set")
    p.add_argument("--model", required=True, help=".tflite with its card beside it")
    p.add_argument("--data", required=True, help="mias | cbis | cbis-dicom | paper:PATH | paper4:PATH | synthetic (comma-separated)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--run", help="run directory: report only its test patients and plot its training curves")
    p.add_argument("--all", action="store_true", help="with --run: report every image, training ones included")

    p = sub.add_parser(
        "cv", help="k-fold cross-validation by patient of a configuration on mini-MIAS + CBIS-DDSM (the ablation's folds, int8-scored)"
    )
    p.add_argument("--config", default="paper", help="training recipe (paper, paper-ce, paper-aug, paper-weighted, paper-oversample, gap, ci)")
    p.add_argument("--folds", type=int, default=5, help="number of patient-level folds (default 5, as the ablation)")
    p.add_argument("--only", help="comma-separated fold numbers to run now (default all; finished folds are kept, so runs resume)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help="training seed (the folds themselves are always the ablation's, seed 0)")
    p.add_argument("--threads", type=int, help="TensorFlow threads (default 2)")
    p.add_argument("--out", required=True, help="folder for the per-fold predictions, int8 models, log.jsonl and metrics*.json")

    p = sub.add_parser("lesion", help="the lesion FCN (patch-trained, whole-image max pooling): python -m convert lesion --help")
    p.add_argument("lesion_args", nargs=argparse.REMAINDER, help="arguments of python -m convert.train_lesion")
    return parser.parse_args(argv)


def _config_from(args: argparse.Namespace):
    from convert.train import get_config

    return get_config(
        args.config, data=args.data, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
        subset=args.subset, seed=args.seed, threads=args.threads,
    )


def _command_line(argv: list[str] | None) -> str:
    return "python -m convert " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def cmd_train(args, argv) -> int:
    from convert.train import train

    train(_config_from(args), args.out, command=_command_line(argv))
    log.info("run written to %s", args.out)
    return 0


def _load_run(run_dir: Path):
    from convert.models import load_model
    from convert.train import TrainConfig, configure_tensorflow, load_run_data

    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    configure_tensorflow(config.threads, config.seed)
    return config, load_model(str(run_dir / "model.keras")), load_run_data(run_dir)


def float_path_for(int8_path: Path, run_dir: Path) -> Path:
    """The float32 twin lives in the run directory, never beside a bundled model."""
    return run_dir / f"{int8_path.stem}_float32.tflite"


def cmd_convert(args, argv) -> int:
    from convert.evaluate import ParityError, convert_model

    run_dir = Path(args.run)
    config, model, data = _load_run(run_dir)
    out = Path(args.out) if args.out else run_dir / "model_int8.tflite"
    try:
        conversion = convert_model(
            model, data, out, float_path_for(out, run_dir), args.representative, args.min_agreement, args.max_diff,
            seed=config.seed, allow_new_ops=args.allow_new_ops, diff_quantile=args.diff_quantile,
        )
    except ParityError as exc:
        log.error("%s", exc)
        return 1
    record = {**conversion.to_dict(), "command": _command_line(argv)}
    (run_dir / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


def cmd_evaluate(args, argv) -> int:
    from convert.evaluate import build_card, evaluate_model, summary_markdown, write_card
    from convert.models import describe

    run_dir = Path(args.run)
    config, model, data = _load_run(run_dir)
    conversion_file = run_dir / "conversion.json"
    conversion = json.loads(conversion_file.read_text()) if conversion_file.is_file() else {}
    history = json.loads((run_dir / "history.json").read_text())
    training_command = json.loads((run_dir / "config.json").read_text()).get("command", "")
    evaluation = evaluate_model(args.model, data, config.referral_sensitivity, None if args.no_keras else model, seed=config.seed)
    card = build_card(
        args.model, data, config, evaluation, conversion, describe(model), training_command,
        training_seconds=history.get("training_seconds"), keras_config=json.loads(model.to_json()),
    )
    # Separate steps: say which commands made the weights, the .tflite and this card.
    card["training"]["provenance"] = {
        "weights": training_command,
        "tflite": conversion.get("command", "not recorded (converted before commands were recorded)"),
        "card": _command_line(argv),
    }
    path = write_card(card, args.model)
    (run_dir / "report.md").write_text(summary_markdown(card))
    log.info("card written to %s; report in %s", path, run_dir / "report.md")
    print(summary_markdown(card))
    return 0


def cmd_build(args, argv) -> int:
    from convert.evaluate import ParityError, build_card, convert_model, evaluate_model, summary_markdown, write_card
    from convert.models import describe
    from convert.train import train

    started = time.perf_counter()
    config = _config_from(args)
    out = Path(args.out)
    int8_path = out.with_suffix(".tflite") if out.suffix != ".tflite" else out
    work = Path(args.work) if args.work else Path("runs") / int8_path.stem
    command = _command_line(argv)
    model, data = train(config, work, command=command)
    try:
        conversion = convert_model(
            model, data, int8_path, float_path_for(int8_path, work), args.representative,
            args.min_agreement, args.max_diff, seed=config.seed, allow_new_ops=args.allow_new_ops,
            diff_quantile=args.diff_quantile,
        )
    except ParityError as exc:
        log.error("%s", exc)
        return 1
    (work / "conversion.json").write_text(json.dumps(conversion.to_dict(), indent=1) + "\n")
    history = json.loads((work / "history.json").read_text())
    evaluation = evaluate_model(int8_path, data, config.referral_sensitivity, model, seed=config.seed)
    card = build_card(
        int8_path, data, config, evaluation, conversion.to_dict(), describe(model), command,
        training_seconds=history.get("training_seconds"), keras_config=json.loads(model.to_json()),
    )
    card["training"]["build_seconds"] = round(time.perf_counter() - started, 1)
    path = write_card(card, int8_path)
    report = summary_markdown(card)
    (work / "report.md").write_text(report)
    print(report)
    log.info("built %s and %s in %.0f s (work files in %s)", int8_path, path, time.perf_counter() - started, work)
    return 0


def cmd_report(args, argv) -> int:
    from convert.report import make_report

    result = make_report(args.model, args.data, args.out, args.run, args.all)
    print((Path(args.out) / "report.md").read_text())
    log.info("report of %d images written to %s", result["data"]["images"], args.out)
    return 0


def cmd_cv(args, argv) -> int:
    from convert.paper_cv import describe_metrics, run_paper_cv
    from convert.train import get_config
    from convert.train_lesion import TrainConfig

    config = get_config(
        args.config, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, seed=args.seed, threads=args.threads
    )
    only = None if args.only is None else [int(f) for f in args.only.split(",")]
    metrics = run_paper_cv(config, Path(args.out), TrainConfig(folds=args.folds), only)
    print(describe_metrics(metrics))
    return 0


def cmd_lesion(args, argv) -> int:
    from convert.train_lesion import main as lesion_main

    return lesion_main(args.lesion_args)


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    args = parse_args(argv)
    handlers = {
        "train": cmd_train, "convert": cmd_convert, "evaluate": cmd_evaluate, "build": cmd_build,
        "report": cmd_report, "cv": cmd_cv, "lesion": cmd_lesion,
    }
    try:
        return handlers[args.command](args, argv)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
