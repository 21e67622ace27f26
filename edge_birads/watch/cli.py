"""The ``edge-birads watch`` command: options in, exit code out; the work is in :mod:`edge_birads.watch.daemon`."""

from __future__ import annotations

import sys

import click

from edge_birads.cli_shared import decode_limit_options


@click.command("watch")
@click.argument("inbox", required=False, type=click.Path(file_okay=False))
@click.option(
    "--results",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for result JSON files (required here or in --config).",
)
@click.option(
    "--done",
    type=click.Path(file_okay=False),
    default=None,
    help="Where classified inputs are moved. Default: 'done' beside INBOX.",
)
@click.option(
    "--failed",
    type=click.Path(file_okay=False),
    default=None,
    help="Where unreadable inputs are moved with a .reason.json. Default: 'failed' beside INBOX.",
)
@click.option(
    "--state", type=click.Path(file_okay=False), default=None, help="Daemon state (content index). Default: RESULTS/.edge-birads."
)
@click.option("--status-file", type=click.Path(dir_okay=False), default=None, help="Heartbeat JSON. Default: STATE/status.json.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="INI file with a [watch] section (same names as these options); options given here win.",
)
@click.option(
    "--poll/--inotify",
    "poll",
    default=None,
    help="List the inbox periodically instead of inotify events (network shares).  [default: inotify]",
)
@click.option(
    "--stable-seconds",
    type=float,
    default=None,
    help="A file is complete when unchanged this long (or closed after writing).  [default: 3]",
)
@click.option(
    "--scan-interval", type=float, default=None, help="Seconds between inbox listings.  [default: 2 with --poll, 30 with inotify]"
)
@click.option(
    "--close-write/--no-close-write",
    "close_write",
    default=None,
    help="Treat a close-after-write or rename into the inbox as complete.  [default: on]",
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False),
    default=None,
    help="A .tflite model with its card (.json) beside it. Default: the bundled model.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Interpreter threads.  [default: 1]")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes, each with its own interpreter, classifying the bytes the daemon read and hashed "
    "(as classify --jobs); claims, records and moves stay in the daemon.  [default: 1]",
)
@decode_limit_options(config_file=True)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 1000),
    default=None,
    help="Quarantine a file after the daemon died this many times on it.  [default: 3]",
)
@click.option("--heartbeat-seconds", type=float, default=None, help="Rewrite the status file at least this often.  [default: 10]")
@click.option(
    "--heatmap",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write a PNG per classified image into this folder (config: heatmap), as classify --heatmap: the image "
    "with the model's lesion map and the filed result. Named after its result: RESULTS/x.dcm.json -> HEATMAP/x.dcm.heatmap.png "
    "(may be the results folder itself). Needs a model with a lesion map.  [default: none]",
)
@click.option(
    "--sr-outbox",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a DICOM Structured Report per classified DICOM into this outbox. Default: STATE/outbox with --send-to.",
)
@click.option(
    "--send-to",
    default=None,
    metavar="AE@HOST:PORT",
    help="Send the reports by C-STORE to this DICOM node (e.g. a PACS), retrying while it is down. [send] destination.",
)
@click.option("--send-as", default=None, metavar="AE", help="Our calling AE title when sending.  [default: EDGEBIRADS]")
@click.option("--send-retry-max", type=float, default=None, help="Longest pause between retries, seconds.  [default: 60]")
def watch(inbox, config_file, sr_outbox, send_to, send_as, send_retry_max, **options) -> None:
    """Classify every image that arrives in INBOX, exactly once, until SIGTERM/SIGINT.

    Each input gets one result JSON in --results (the fields of `classify
    --format jsonl`, plus sha256 and duplicate_of) and is then moved to
    --done; an unreadable input is moved to --failed with a .reason.json
    beside it. Files named *.part, *.tmp or .* are left alone until renamed.
    Exit codes: 0 stopped by a signal, 1 start-up problem (folders, model),
    2 usage or config error, 70 internal error, 74 an output could not be
    written. Research use only, not a diagnostic device: a clinician decides.

    With --sr-outbox or --send-to (or a [send] section in --config), each
    classified DICOM also gets a DICOM SR in the outbox, sent exactly once.

    With --heatmap DIR (or heatmap = DIR in [watch]), each classified image
    also gets one lesion-map picture, written before the input is moved to done.
    """
    from edge_birads.watch.outbox import SendConfigError, build_send_config
    from edge_birads.watch.daemon import run_watch
    from edge_birads.watch.config import ConfigError, build_config

    try:
        config = build_config({"inbox": inbox, **options}, config_file)
        send_options = {"outbox": sr_outbox, "destination": send_to, "calling_ae_title": send_as}
        send = build_send_config({**send_options, "retry_max_seconds": send_retry_max}, config_file, config.state)
        if send is not None:
            from edge_birads.receive import ReceiveConfigError, require_node_extra

            try:
                require_node_extra()
            except ReceiveConfigError as exc:
                raise SendConfigError(str(exc)) from None
    except (ConfigError, SendConfigError) as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(run_watch(config, send=send))
