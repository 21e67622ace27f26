"""One line per event on stderr, readable by hand and by journald.

Under systemd (stderr connected to the journal, announced by $JOURNAL_STREAM)
each line starts with a ``<N>`` syslog priority, which journald turns into
the entry's priority and strips; no timestamp is added because the journal
has its own. By hand, lines carry an ISO timestamp instead. Messages never
contain newlines, and names that are not valid UTF-8 are escaped, so one
event is always exactly one line.

Only file names, folder names, labels and reasons are logged: the daemon
never reads DICOM patient tags into anything it prints.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

PRIORITY = {"error": 3, "warning": 4, "info": 6}


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal (see systemd.exec, $JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return status.st_dev == int(device) and status.st_ino == int(inode)


def one_line(text: str) -> str:
    """Escape anything that would split an event over several lines or reach a terminal as a control
    sequence (ESC in a file name): newlines as \\n, other control characters as \\xNN."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return "".join(
        f"\\x{ord(char):02x}" if ord(char) < 0x20 and char != "\t" or 0x7F <= ord(char) < 0xA0
        else f"\\u{ord(char):04x}" if char in "\u2028\u2029" else char
        for char in text
    )


class EventLog:
    """Writes events straight to file descriptor 2 (no buffering to lose in a crash)."""

    def __init__(self, journal: bool | None = None, fd: int = 2) -> None:
        self.journal = stderr_is_journal() if journal is None else journal
        self.fd = fd
        self.pid = os.getpid()

    def __call__(self, level: str, message: str) -> None:
        text = one_line(message)
        if self.journal:
            line = f"<{PRIORITY.get(level, 6)}>{text}\n"
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            line = f"{stamp} edge-birads[{self.pid}] {level}: {text}\n"
        data = line.encode("utf-8", "backslashreplace")
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError:
            # A closed or broken stderr must not stop image processing; the
            # status file and the records still say what happened.
            return

    def info(self, message: str) -> None:
        self("info", message)

    def warning(self, message: str) -> None:
        self("warning", message)

    def error(self, message: str) -> None:
        self("error", message)


class LibraryLogHandler(logging.Handler):
    """Library log records and Python warnings (watchdog's, numpy's) as lines of the daemon's log, not raw stderr."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's malformed log call must not stop the daemon
            message = str(record.msg)
        if record.name == "py.warnings":  # "path:line: Category: text\n  source line"
            message = message.strip().splitlines()[0]
        level = "error" if record.levelno >= logging.ERROR else "warning"
        self.log(level, f"{record.name}: {message}")


def route_library_output(log: EventLog) -> None:
    """Send library logging and warnings through ``log``; without this, Python's last-resort handler
    prints them raw on stderr (watchdog's inotify thread on stop, numpy RuntimeWarnings)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [LibraryLogHandler(log)]
    root.setLevel(logging.WARNING)
    warnings.simplefilter("default")
