"""The ``edge-birads`` command line.

User mistakes (a bad model path, no usable input) are ``click`` errors with a
one-line message; a bad image is reported on its own line and the run goes on.
Exit codes: 0 all files classified, 1 any file failed or the model could not
be loaded, 2 usage errors.
"""

from __future__ import annotations

import sys

import click

from edge_birads import DISCLAIMER, __version__
from edge_birads.errors import ModelError
from edge_birads.output import FORMATS, TableWriter, csv_header, csv_line, jsonl_line


class ModelLoadError(click.ClickException):
    """A model that cannot be loaded: exit code 1 with a one-line message."""

    exit_code = 1


def load_classifier(model: str | None, threads: int):
    from edge_birads.classifier import Classifier

    try:
        return Classifier(model, threads=threads)
    except ModelError as exc:
        raise ModelLoadError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-birads")
def cli() -> None:
    """BI-RADS group triage of mammograms with an int8 TFLite CNN.

    Research use only, not a diagnostic device: a clinician decides.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of folder arguments.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="A .tflite model with its card (.json) beside it. Default: the bundled model.")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="Interpreter threads.")
def classify(paths: tuple[str, ...], recursive: bool, fmt: str, model: str | None, threads: int) -> None:
    """Classify mammogram images (PNG, JPEG, TIFF, PGM, BMP, DICOM) or folders of them.

    Prints one result per file. A file that cannot be read gets a one-line
    error and the others go on; the exit code is then 1.
    """
    from edge_birads.inputs import iter_input_files

    classifier = load_classifier(model, threads)
    table = TableWriter(click.echo, classifier.card.malignant_label) if fmt == "table" else None
    if fmt == "csv":
        click.echo(csv_header())
    seen = failed = 0
    for path in iter_input_files(list(paths), recursive=recursive):
        result = classifier.classify_file(path)
        seen += 1
        if not result.ok:
            failed += 1
            click.echo(f"error: {result.file}: {result.error}", err=True)
        if table is not None:
            table.write(result)
        elif fmt == "jsonl":
            click.echo(jsonl_line(result))
        else:
            click.echo(csv_line(result))
    if seen == 0:
        click.echo("error: no image files found in " + ", ".join(paths), err=True)
        sys.exit(1)
    summary = (
        f"{seen - failed} of {seen} files classified; referral threshold "
        f"{classifier.card.referral_threshold:.3f} on P({classifier.card.malignant_label}). {DISCLAIMER}"
    )
    if fmt == "table":
        click.echo(summary)
    else:
        click.echo(summary, err=True)
    if failed:
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edge-birads")
