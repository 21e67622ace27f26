"""What the commands share: the decode-limit options (``classify``, ``watch``), the click errors and exit codes
(``classify``, ``bench``), in a module that imports no command, so that no command imports another.

The decode limits are one set of options: ``classify`` shows the defaults; ``watch`` leaves an option not given as None so that
its config file (``max_pixels``, ``max_file_mb``, ``time_limit`` in ``[watch]``) can set it.
Either way :func:`limits_from` turns the three values into a :class:`DecodeLimits`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import click

from edge_birads.limits import DEFAULT_LIMITS, DecodeLimits

MIB = 2**20
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C


class ModelLoadError(click.ClickException):
    """A model that cannot be loaded: exit code 1 with a one-line message."""

    exit_code = 1


class NoImagesError(click.ClickException):
    """Nothing to classify or time in the paths given: exit code 1, as for a file that failed."""

    exit_code = 1


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses nan and inf, with the range's usual message: every comparison with
    nan is false, so a plain range lets ``--time-limit nan`` through (and setitimer, or int(), fails later)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


# option -> (click type, default, environment variable, help); the config file's keys are the same names with "_".
LIMIT_OPTIONS = {
    "max-pixels": (
        click.IntRange(1), DEFAULT_LIMITS.max_pixels, "EDGE_BIRADS_MAX_PIXELS",
        "Refuse images with more pixels (checked from the header, before decoding).",
    ),
    "max-file-mb": (
        FiniteFloatRange(0, min_open=True), DEFAULT_LIMITS.max_file_bytes / MIB, "EDGE_BIRADS_MAX_FILE_MB",
        "Refuse larger files without reading them.",
    ),
    "time-limit": (
        FiniteFloatRange(0), DEFAULT_LIMITS.max_seconds, "EDGE_BIRADS_TIME_LIMIT",
        "Seconds allowed to decode and preprocess one file (0: no limit).",
    ),
}


def decode_limit_options(config_file: bool = False):
    """Decorator adding ``--max-pixels``, ``--max-file-mb`` and ``--time-limit`` to a command.

    With ``config_file`` (the daemon) an option not given is None, so the ``[watch]`` section can set it;
    the help then names the config key beside the default.
    """

    def decorate(command):
        for name, (kind, default, envvar, text) in reversed(LIMIT_OPTIONS.items()):
            if config_file:
                key = name.replace("-", "_")
                shown = int(default) if float(default).is_integer() else default
                option = click.option(
                    f"--{name}", type=kind, default=None, envvar=envvar,
                    help=f"{text} Env: {envvar}; config: {key}.  [default: {shown}]",
                )
            else:
                option = click.option(f"--{name}", type=kind, default=default, show_default=True, envvar=envvar, help=f"{text} Env: {envvar}.")
            command = option(command)
        return command

    return decorate


def limits_from(max_pixels: int | None, max_file_mb: float | None, time_limit: float | None, base: DecodeLimits = DEFAULT_LIMITS) -> DecodeLimits:
    """The limits with the values given (None: ``base``'s)."""
    changes = {}
    if max_pixels is not None:
        changes["max_pixels"] = int(max_pixels)
    if max_file_mb is not None:
        changes["max_file_bytes"] = int(max_file_mb * MIB)
    if time_limit is not None:
        changes["max_seconds"] = float(time_limit)
    return replace(base, **changes)
