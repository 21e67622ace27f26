"""The ``edge-birads`` command line.

User mistakes (a bad model path, no usable input) are ``click`` errors with a
one-line message; a bad image is reported on its own line and the run goes on.
Exit codes, the same for every command: 0 all files done, 1 any file failed, no
image found or the model could not be loaded, 2 usage errors, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from edge_birads import DISCLAIMER, __version__
from edge_birads.breasts import per_breast as per_breast_results
from edge_birads.breasts import view_of
from edge_birads.cli_shared import EXIT_INTERRUPTED, ModelLoadError, NoImagesError, decode_limit_options, limits_from
from edge_birads.errors import ModelError
from edge_birads.heatmap import HeatmapWriter
from edge_birads.interrupts import interrupts_deferred
from edge_birads.limits import DEFAULT_LIMITS
from edge_birads.output import FORMATS, TableWriter, csv_header, csv_line, jsonl_line, rule_summary
from edge_birads.progress import Progress


def load_classifier(model: str | None, threads: int, limits=None, load_interpreter: bool = True):
    from edge_birads.classifier import Classifier

    try:
        return Classifier(model, threads=threads, limits=limits or DEFAULT_LIMITS, load_interpreter=load_interpreter)
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
@decode_limit_options()
@click.option("--heatmap", "heatmap_dir", type=click.Path(file_okay=False), default=None,
              help="Also write one PNG per image into this folder: the image with the model's lesion map overlaid "
              "(needs a model with a lesion map).")
@click.option("--per-breast", is_flag=True,
              help="Also report each breast whose views (CC, MLO) were given: the mean of their suspicion scores against the "
              "same threshold. Views pair by DICOM patient, study date and laterality, or by names ending _CC / _MLO.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Worker processes, each with its own interpreter; results stay in input order.  "
              "[default: one per CPU core when a folder is given (at most one per 4 files), else 1]")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786|local:N",
              help="Classify on a Dask cluster (the [cluster] extra): the address of its scheduler, or local:N for N "
              "worker processes on this machine. Files must be at the same path on every worker. See docs/cluster.md.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Files per cluster task (with --scheduler).")
def classify(
    paths: tuple[str, ...], recursive: bool, fmt: str, model: str | None, threads: int,
    max_pixels: int, max_file_mb: float, time_limit: float, heatmap_dir: str | None, per_breast: bool, jobs: int | None,
    scheduler: str | None, batch_size: int,
) -> None:
    """Classify mammogram images (PNG, JPEG, TIFF, PGM, BMP, DICOM) or folders of them.

    Prints one result per file. A file that cannot be read gets a one-line
    error and the others go on; the exit code is then 1.
    """
    from edge_birads.inputs import iter_input_files, no_images_message
    from edge_birads.parallel import default_jobs

    if per_breast and fmt == "csv":
        raise click.UsageError("--per-breast is not available with --format csv (a breast's row has other columns): use jsonl or table")
    if scheduler is not None:
        from edge_birads.cluster import parse_scheduler

        try:
            parse_scheduler(scheduler)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--scheduler'") from None
        for given, name in ((jobs, "--jobs"), (heatmap_dir, "--heatmap")):
            if given is not None:
                raise click.UsageError(f"{name} cannot be used with --scheduler (the cluster's workers do the work)")
    progress = Progress(sys.stderr, sys.stderr.isatty(), unit="files")
    files: list = []
    seen = failed = 0
    classified, views = [], []
    try:
        files = list(iter_input_files(list(paths), recursive=recursive))
        if not files:
            raise NoImagesError(no_images_message(paths, recursive))
        limits = limits_from(max_pixels, max_file_mb, time_limit)
        jobs = min(jobs or default_jobs(paths, len(files)), len(files))
        # Classified in this process: the interpreter is created once the first image is decoded (Classifier.load), so
        # a one-file run peaks at the larger of decoding and inference, not their sum. Elsewhere it checks the model now.
        classifier = load_classifier(model, threads, limits, load_interpreter=scheduler is not None or jobs > 1)
        card = classifier.card
        heatmaps = None
        if heatmap_dir is not None:
            if not classifier.has_lesion_map:
                raise click.ClickException(f"model {card.name} has no lesion map: --heatmap needs a model that outputs one")
            heatmaps = HeatmapWriter(Path(heatmap_dir), card)
        table = TableWriter(click.echo, card.labels, card.malignant_label) if fmt == "table" else None
        progress.update("classifying", 0, len(files))
        if scheduler is not None:
            stream = _cluster_results(classifier, files, scheduler, batch_size)
        else:
            stream = _results(classifier, files, jobs, heatmaps is not None)
        for path, (result, lesion_map) in zip(files, stream):  # the stream keeps input order
            # A deferred interpreter exists once the first file is decoded (or failed): the model is checked before
            # any record is printed, so a model refused here leaves stdout empty whichever file came first.
            classifier.load()
            if lesion_map is not None:
                heatmaps.write(result, lesion_map)
            with interrupts_deferred():  # a record is printed and counted together, or neither: Ctrl-C waits for the pair
                progress.clear()
                if not result.ok:
                    click.echo(f"error: {result.file}: {result.error}", err=True)
                if table is not None:
                    table.write(result)
                elif fmt == "jsonl":
                    click.echo(jsonl_line(result))
                else:
                    if not seen:  # the header with the first record, after the model is checked
                        click.echo(csv_header(card.labels))
                    click.echo(csv_line(result, card.labels))
                seen, failed = seen + 1, failed + (not result.ok)
            if per_breast:
                classified.append(result)
                views.append(view_of(path))
            progress.update("classifying", seen, len(files))
        if per_breast:
            write_breasts(per_breast_results(classified, views), fmt)
    except ModelError as exc:  # a deferred interpreter that cannot run the model as its card says
        progress.clear()
        raise ModelLoadError(str(exc)) from None
    except KeyboardInterrupt:
        progress.clear()
        click.echo(
            f"interrupted: {seen} of {len(files)} files done ({seen - failed} classified, {failed} failed, "
            f"their results above are complete); {len(files) - seen} not read.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    summary = f"{seen - failed} of {seen} files classified; {rule_summary(card.rule, card.malignant_label)}. {DISCLAIMER}"
    if fmt == "table":
        click.echo(summary)
    else:
        click.echo(summary, err=True)
    if failed:
        sys.exit(1)


def write_breasts(breasts, fmt: str) -> None:
    """The per-breast records after the per-image ones: JSON lines, or a short section under the table."""
    if fmt == "jsonl":
        for breast in breasts:
            click.echo(json.dumps(breast.to_dict(), ensure_ascii=False))
        return
    click.echo("")
    click.echo("PER BREAST (mean suspicion score of its views):" if breasts else "PER BREAST: no breast with two classified views given.")
    for breast in breasts:
        click.echo(breast.describe())


def _results(classifier, files: list, jobs: int, want_map: bool):
    """(Result, LesionMap | None) per file, in input order: in this process, or in ``jobs`` worker processes."""
    if jobs <= 1:
        for path in files:
            yield classifier.explain_file(path) if want_map else (classifier.classify_file(path), None)
        return
    from edge_birads.parallel import ProcessClassifier, WorkerSettings

    settings = WorkerSettings(str(classifier.model_path), classifier.threads, classifier.limits, want_map)
    yield from ProcessClassifier(settings, jobs).run(files, classifier.failure)


def _cluster_results(classifier, files: list, scheduler: str, batch_size: int):
    """(Result, None) per file, in input order, from a Dask cluster; the client (and a local cluster) closed after."""
    from edge_birads.cluster import ClusterSettings, classify_on_cluster, connect

    settings = ClusterSettings(str(classifier.model_path.resolve()), classifier.sha256, classifier.threads, classifier.limits, batch_size)
    try:
        client, cluster = connect(scheduler)
    except ModelError as exc:
        raise ModelLoadError(str(exc)) from None
    except OSError as exc:  # the scheduler cannot be reached (distributed raises OSError subclasses on timeout)
        raise click.ClickException(f"cannot connect to the Dask scheduler at {scheduler}: {' '.join(str(exc).split())}") from None
    try:
        try:
            for result in classify_on_cluster(client, files, settings, classifier.failure):
                yield result, None
        except ModelError as exc:
            raise ModelLoadError(str(exc)) from None
    finally:
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # teardown chatter (a comm closing) after the results
        client.close()
        if cluster is not None:
            cluster.close()


@cli.command()
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="The int8 .tflite model (card beside it). Default: the bundled model.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), default=None, help="Folder of images (read recursively). Default: the two sample mammograms installed with edge-birads.")
@click.option("--n", type=click.IntRange(1), default=100, show_default=True, help="Timed images per engine (the images repeat).")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed images per engine after the first.")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="Interpreter threads (the float baseline's too).")
@click.option("--float-model", type=click.Path(exists=True, dir_okay=False), default=None, help="A float32 .tflite of the same network (from convert).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.option("--dicom", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A DICOM to time beside the PNG and a 3000x5000 JPEG. Default: a CBIS-DDSM DICOM from the `mammograms` package, if installed.")
@click.option("--cold-repeats", type=click.IntRange(1), default=5, show_default=True, help="Whole `classify FILE` processes per input (median).")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Measure classify --jobs 1..JOBS over one folder.  [default: one per CPU core]")
@click.option("--scaling-images", type=click.IntRange(0), default=64, show_default=True, help="Images in that folder (links to --images, repeated); 0 skips it.")
def bench(model, images_dir, n, warmup, threads, float_model, fmt, dicom, cold_repeats, jobs, scaling_images) -> None:
    """Time and measure the int8 model against float32 TFLite and the Keras baseline.

    Each engine runs in its own fresh process: per-image decode, preprocessing,
    inference and total time (p50/p95/max), peak RSS and cold start, beside the
    paper's 0.12 s / 127 MB / 450 MB. Then the int8 model per input kind (PNG,
    DICOM, a 3000x5000 JPEG: steady state, whole `classify FILE` process, its
    peak RSS) and classify --jobs 1..N images/s over one folder.
    """
    from edge_birads.bench import bench_command

    bench_command(model, images_dir, n, warmup, threads, float_model, fmt, dicom, cold_repeats, jobs, scaling_images)


@cli.command()
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="A .tflite model with its card beside it. Default: the bundled model.")
def info(model: str | None) -> None:
    """Show the model card: data, split, test metrics, referral threshold."""
    from edge_birads.card import load_card
    from edge_birads.card_summary import summarize
    from edge_birads.classifier import default_model_path

    try:
        card = load_card(model or default_model_path())
    except ModelError as exc:
        raise ModelLoadError(str(exc)) from None
    click.echo(summarize(card))


@cli.command()
@click.argument("inbox", required=False, type=click.Path(file_okay=False))
@click.option("--ae-title", default=None, help="Our AE title (the senders' called AE).  [default: EDGEBIRADS]")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port to listen on.  [default: 11112]")
@click.option("--bind", default=None, help="Address to listen on, e.g. 127.0.0.1.  [default: 0.0.0.0, every interface]")
@click.option(
    "--allow-calling",
    "allowed_calling",
    multiple=True,
    help="Accept associations only from this calling AE title (repeat for several). Default: any.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="INI file: a [receive] section (ae_title, port, bind, allowed_calling_ae_titles); the inbox defaults to [watch]'s.",
)
def receive(inbox, config_file, **options) -> None:
    """Receive mammograms over DICOM (C-STORE SCP) into the watch daemon's INBOX, until SIGTERM/SIGINT.

    Answers C-ECHO; accepts Digital Mammography X-Ray (for presentation and for
    processing), Digital X-Ray, Computed Radiography and Secondary Capture
    images whose Modality is MG, and refuses other SOP classes at association
    negotiation. Each instance is written as INBOX/<SOP Instance UID>.dcm
    (temporary dot-name, fsync, rename) before the sender is told it is
    stored. Exit codes: 0 stopped by a signal, 1 start-up problem, 2 usage or
    config error. Research use only, not a diagnostic device.
    """
    from edge_birads.receive import ReceiveConfigError, build_receive_config, require_node_extra, run_receive

    try:
        require_node_extra()
        config = build_receive_config({"inbox": inbox, **options}, config_file)
    except ReceiveConfigError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(run_receive(config))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edge-birads")


from edge_birads.watch.cli import watch  # the daemon lives in edge_birads/watch/

cli.add_command(watch)
