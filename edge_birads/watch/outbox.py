"""Results back to the PACS: a durable outbox of DICOM SRs and the thread that sends it.

The watch daemon calls :meth:`SrOutput.after_result` once a result is durable
and before the input leaves the inbox (again on a restart that finds the
result already written), so a crash between the two only repeats the call.
For a DICOM input it builds the SR (:mod:`edge_birads.sr`) and files it:

    OUTBOX/pending/<key>.dcm   written via a temporary dot-name, fsynced, renamed, folder fsynced
    OUTBOX/sent/<key>.dcm      moved here (rename, both folders fsynced) after the destination said Success
    OUTBOX/rejected/<key>.dcm  the destination refused it for good, with <key>.reason.json beside it

``key`` is the source's SOP Instance UID and the model's sha256 (12 digits):
one image, one model, one report. A key already in any of the three folders
is not filed again, so a re-sent image, a copy under another name or a
restart never sends the same result twice. The one window left is a crash
after the destination answered Success and before the move to ``sent/``:
the report is then sent again with the same SOP Instance UID (see
:func:`edge_birads.sr.report_uids`), which a PACS stores once.

The sender thread sends ``pending/`` oldest first over one association,
retries with exponential back-off (1 s doubling up to ``retry_max_seconds``)
while the destination is down or out of resources (0xA7xx), and sets aside a
report the destination refuses with a failure status (0xA9xx, 0xCxxx).
Its queue and last error are in the daemon's status file (``outbox``).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from edge_birads.durable import fsync_dir, sweep_temporaries, write_bytes_atomic, write_json_atomic
from edge_birads.watch.log import EventLog

SECTION = "send"
DEFAULT_CALLING_AE = "EDGEBIRADS"
DEFAULT_RETRY_MAX = 60.0
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DESTINATION_PATTERN = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>[0-9]{1,5})")


class SendConfigError(Exception):
    """Settings that cannot work (usage error: exit 2)."""


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendConfig:
    outbox: Path
    destination: Destination | None = None
    calling_ae_title: str = DEFAULT_CALLING_AE
    retry_max_seconds: float = DEFAULT_RETRY_MAX
    timeout_seconds: float = 30.0


def parse_destination(text: str) -> Destination:
    match = DESTINATION_PATTERN.fullmatch(text.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise SendConfigError(f"destination {text!r} is not AE_TITLE@HOST:PORT (e.g. PACS@192.168.1.10:104)")
    return Destination(match["ae"].strip(), match["host"], int(match["port"]))


def build_send_config(options: dict, config_file: str | Path | None, state: Path) -> SendConfig | None:
    """The ``[send]`` section under command-line ``options``; None when no report is to be written.

    Reports are written when an outbox or a destination is given; the outbox
    defaults to STATE/outbox.
    """
    from edge_birads.receive import bounded_number, read_ini, section_values, valid_ae_title

    merged: dict = {}
    if config_file:
        known = {"outbox", "destination", "calling_ae_title", "retry_max_seconds"}
        merged.update(section_values(read_ini(config_file, SendConfigError), config_file, SECTION, known, SendConfigError))
    merged.update({key: value for key, value in options.items() if value is not None})
    if not merged.get("outbox") and not merged.get("destination"):
        return None
    destination = parse_destination(str(merged["destination"])) if merged.get("destination") else None
    retry = bounded_number(merged, "retry_max_seconds", DEFAULT_RETRY_MAX, float, 0.1, 3600, SendConfigError)
    outbox = merged.get("outbox") or state / "outbox"
    calling = str(merged.get("calling_ae_title", DEFAULT_CALLING_AE))
    for title in (calling, destination.ae_title if destination else calling):
        if not valid_ae_title(title):
            raise SendConfigError(f"{title!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return SendConfig(
        outbox=Path(os.path.abspath(os.path.expanduser(str(outbox)))),
        destination=destination,
        calling_ae_title=calling,
        retry_max_seconds=retry,
    )


class Outbox:
    """The three folders and the moves between them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pending = folder / "pending"
        self.sent = folder / "sent"
        self.rejected = folder / "rejected"

    def prepare(self) -> None:
        """Create the folders (raises OSError) and drop temporaries a killed writer left."""
        for sub in (self.pending, self.sent, self.rejected):
            sub.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(sub)

    def known(self, name: str) -> bool:
        return any(os.path.lexists(sub / name) for sub in (self.pending, self.sent, self.rejected))

    def put(self, name: str, data: bytes) -> bool:
        """File ``data`` as pending/``name`` durably; False when this key was filed before."""
        if self.known(name):
            return False
        write_bytes_atomic(self.pending / name, (data,), durable=True)
        return True

    def queue(self) -> list[Path]:
        """Pending reports, oldest first."""
        entries = []
        with os.scandir(self.pending) as listing:
            for entry in listing:
                if entry.name.endswith(".dcm") and not entry.name.startswith("."):
                    try:
                        entries.append((entry.stat().st_mtime_ns, entry.name))
                    except FileNotFoundError:
                        continue
        return [self.pending / name for _, name in sorted(entries)]

    def mark_sent(self, path: Path) -> None:
        os.rename(path, self.sent / path.name)
        fsync_dir(self.sent)
        fsync_dir(self.pending)

    def mark_rejected(self, path: Path, reason: dict) -> None:
        write_json_atomic(self.rejected / (path.stem + ".reason.json"), reason, durable=True)
        os.rename(path, self.rejected / path.name)
        fsync_dir(self.rejected)
        fsync_dir(self.pending)


@dataclass
class SendStats:
    written: int = 0
    sent: int = 0
    rejected: int = 0
    not_dicom: int = 0
    report_errors: int = 0
    attempts_failed: int = 0
    last_error: str | None = None
    last_sent_at: str | None = None
    next_attempt_at: str | None = None


class SrOutput:
    """The daemon's hook: file an SR per classified DICOM and (with a destination) send the outbox."""

    def __init__(self, config: SendConfig, card, log: EventLog) -> None:
        self.config = config
        self.card = card
        self.log = log
        self.outbox = Outbox(config.outbox)
        self.stats = SendStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0

    # ------------------------------------------------------------ the daemon's side

    def after_result(self, path: Path, record: dict) -> None:
        """Build and file the SR of ``path`` (a DICOM in the inbox) for ``record``; nothing for other images.

        Raises OSError when the outbox cannot be written (the daemon then
        stops without moving the input, and retries after its restart).
        """
        from edge_birads.errors import printable_name
        from edge_birads.sr import ReportError, build_report, read_source

        if record.get("error") is not None or record.get("group") is None:
            return
        shown = printable_name(path.name)
        try:
            with warnings.catch_warnings():  # pydicom's warnings may quote header values (patient identifiers)
                warnings.simplefilter("ignore")
                source = read_source(path)
        except (OSError, ValueError, TypeError, AttributeError, KeyError, EOFError) as exc:
            self._count("report_errors")
            self.log.warning(f"{shown}: no report: the DICOM header cannot be read again ({type(exc).__name__})")
            return
        if source is None:
            self._count("not_dicom")
            return
        sop_uid = str(source.get("SOPInstanceUID", "") or "").strip()
        name = f"{sop_uid}.{str(record['model_sha256'])[:12]}.dcm"
        if not re.fullmatch(r"[0-9.]{1,64}", sop_uid):
            self._count("report_errors")
            self.log.warning(f"{shown}: no report: the DICOM has no valid SOP Instance UID")
            return
        if self.outbox.known(name):
            return
        try:
            report = build_report(source, record, self.card)
        except ReportError as exc:
            self._count("report_errors")
            self.log.warning(f"{shown}: no report: {exc}")
            return
        from pydicom.filebase import DicomBytesIO

        buffer = DicomBytesIO()
        report.save_as(buffer, enforce_file_format=True)
        if self.outbox.put(name, buffer.getvalue()):
            self._count("written")
            self._wake.set()
            where = f"queued for {self.config.destination}" if self.config.destination else "written to the outbox"
            self.log.info(f"{shown}: structured report {name} {where}")

    def status(self) -> dict:
        """For the daemon's status file."""
        try:
            pending = len(self.outbox.queue())
        except OSError:
            pending = None
        with self._lock:
            stats = dict(self.stats.__dict__)
        return {
            "folder": str(self.config.outbox),
            "destination": str(self.config.destination) if self.config.destination else None,
            "pending": pending,
            **stats,
        }

    def _count(self, field_name: str, error: str | None = None) -> None:
        with self._lock:
            setattr(self.stats, field_name, getattr(self.stats, field_name) + 1)
            if error is not None:
                self.stats.last_error = error

    # ------------------------------------------------------------ the sender thread

    def start(self) -> None:
        """Create the outbox folders (OSError if impossible) and start sending when there is a destination."""
        self.outbox.prepare()
        if self.config.destination is None:
            return
        from edge_birads.receive import route_pynetdicom_log

        route_pynetdicom_log(None)  # this thread reports its own failures, once, on one line
        self._thread = threading.Thread(target=self._run, name="edge-birads-sender", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001  (the daemon sees the thread gone and exits 74; say why on one line)
            message = " ".join(str(exc).split()) or "(no message)"
            self.log.error(f"the DICOM sender stopped: {type(exc).__name__}: {message}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            queue = self.outbox.queue()
            if not queue:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._send_batch(queue):
                self._backoff = 0.0
                with self._lock:
                    self.stats.next_attempt_at = None
                continue
            self._backoff = min(self.config.retry_max_seconds, max(1.0, self._backoff * 2))
            with self._lock:
                self.stats.next_attempt_at = _utc_in(self._backoff)
            self._stop.wait(self._backoff)

    def _send_batch(self, queue: list[Path]) -> bool:
        """Send what is pending over one association; False when the destination must be retried later."""
        from pynetdicom import AE

        destination = self.config.destination
        ae = AE(ae_title=self.config.calling_ae_title)
        ae.add_requested_context(COMPREHENSIVE_SR, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            what = "rejected the association" if assoc.is_rejected else "cannot be reached"
            self._failed(f"destination {destination} {what}; {len(queue)} report(s) wait")
            return False
        try:
            for path in queue:
                if self._stop.is_set():
                    return True
                try:
                    status = assoc.send_c_store(path)
                except FileNotFoundError:
                    continue
                except (OSError, ValueError, RuntimeError) as exc:
                    self._failed(f"sending {path.name} to {destination} failed ({type(exc).__name__})")
                    return False
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    self._failed(f"destination {destination} gave no answer for {path.name}; {len(queue)} report(s) wait")
                    return False
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # Success, or Warning (stored, coerced)
                    self.outbox.mark_sent(path)
                    with self._lock:
                        self.stats.sent += 1
                        self.stats.last_sent_at = _utc_in(0)
                    self.log.info(f"{path.name}: sent to {destination}" + (f" (warning 0x{code:04X})" if code else ""))
                elif 0xA700 <= code <= 0xA7FF:  # out of resources: try again later
                    self._failed(f"destination {destination} is out of resources (0x{code:04X}); {path.name} waits")
                    return False
                else:
                    comment = str(status.get("ErrorComment", "") or "")[:64]
                    reason = {
                        "status": f"0x{code:04X}",
                        "error_comment": comment,
                        "destination": str(destination),
                        "at": _utc_in(0),
                    }
                    self.outbox.mark_rejected(path, reason)
                    self._count("rejected", f"{path.name} refused by {destination} with 0x{code:04X}")
                    self.log.error(
                        f"{path.name}: refused by {destination} with status 0x{code:04X} {comment}; set aside in rejected/"
                    )
            return True
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(self, message: str) -> None:
        first = False
        with self._lock:
            first = self.stats.last_error != message
            self.stats.attempts_failed += 1
            self.stats.last_error = message
        if first or self._backoff >= self.config.retry_max_seconds:
            self.log.warning(message + f"; retrying (back-off up to {self.config.retry_max_seconds:g} s)")


def _utc_in(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["Destination", "Outbox", "SendConfig", "SendConfigError", "SrOutput", "build_send_config", "parse_destination"]
