"""The DICOM receiver: a C-STORE SCP that hands mammograms to the watch daemon's inbox.

A modality or a PACS sends images with C-STORE; each instance is written into
the inbox the way the daemon expects a hand-over (see
:mod:`edge_birads.watch.inbox`): under a dot-name the daemon ignores, fsynced,
renamed to ``<SOP Instance UID>.dcm`` and the folder fsynced, and only then is
the C-STORE answered with Success. So:

* a kill or crash mid-transfer leaves at most a dot-named temporary, which the
  daemon never reads and the next receiver start removes; the sender got no
  success and sends again;
* an instance the sender was told is stored is on disk (the rename too).

What is accepted (refused at association negotiation otherwise, so the sender
learns it at once: "abstract syntax not supported"): Verification (C-ECHO) and
the single-frame image storage classes a mammogram may arrive as. Breast
Tomosynthesis and other multi-frame classes are not offered, because the model
reads one 2-D frame and the daemon would only quarantine them. Within an
accepted class, an instance whose SOP Class UID does not match its
presentation context is refused with 0xA900, and one whose Modality is not
mammography (MG) with 0xC001 ("cannot understand", with an error comment),
the rule the classifier applies.

Only AE titles, SOP Instance UIDs (the file names), sizes and statuses are
logged; the receiver never reads patient or study attributes into a message.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import signal
import threading
import warnings
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from edge_birads.dicom import MAMMOGRAPHY_MODALITIES
from edge_birads.durable import _unlink_quietly, write_bytes_atomic
from edge_birads.watch.log import EventLog

SECTION = "receive"
TMP_PREFIX = ".edge-birads-receive-"  # a dotfile: the daemon never tracks it (edge_birads.watch.inbox.is_ignored)
DEFAULT_AE_TITLE = "EDGEBIRADS"
DEFAULT_PORT = 11112

# name -> SOP Class UID. Single-frame image classes only (see the module doc).
STORAGE_CLASSES = {
    "Digital Mammography X-Ray Image Storage - For Presentation": "1.2.840.10008.5.1.4.1.1.1.2",
    "Digital Mammography X-Ray Image Storage - For Processing": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "Digital X-Ray Image Storage - For Presentation": "1.2.840.10008.5.1.4.1.1.1.1",
    "Digital X-Ray Image Storage - For Processing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "Computed Radiography Image Storage": "1.2.840.10008.5.1.4.1.1.1",
    "Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7",
}
VERIFICATION = "1.2.840.10008.1.1"

# Uncompressed and RLE always; the compressed syntaxes when this install can decode them (the [dicom] extra).
# Deflated is never offered: the decoder refuses it (a decompression-bomb risk).
BASE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5")
COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # could not write: the sender may retry
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_NOT_MAMMOGRAPHY = 0xC001
STATUS_BAD_UID = 0xC002
STATUS_UNREADABLE = 0xC003

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


class ReceiveConfigError(Exception):
    """Settings that cannot work (usage error: exit 2)."""


def require_node_extra() -> None:
    """The DICOM node's libraries, or a one-line ReceiveConfigError naming the extra to install."""
    import importlib.util

    missing = [name for name in ("pynetdicom", "highdicom") if importlib.util.find_spec(name) is None]
    if missing:
        raise ReceiveConfigError(f"the DICOM node needs {' and '.join(missing)}: pip install 'edge-birads[node]'")


@dataclass(frozen=True)
class ReceiveConfig:
    inbox: Path
    ae_title: str = DEFAULT_AE_TITLE
    port: int = DEFAULT_PORT
    bind: str = "0.0.0.0"
    allowed_calling: tuple[str, ...] = ()  # empty: any calling AE title


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered: those this install can decode."""
    from pydicom.pixels import get_decoder

    syntaxes = list(BASE_SYNTAXES)
    for uid in COMPRESSED_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                syntaxes.append(uid)
        except NotImplementedError:
            continue
    return syntaxes


def read_ini(path: str | Path, error: type[Exception]) -> configparser.ConfigParser:
    """The service's INI file (the watch daemon's), or ``error`` with one line."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise error(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise error(f"config file {path} is not valid INI: {str(exc).strip().splitlines()[0]}") from None
    return parser


def section_values(parser, path, section: str, known: set[str], error: type[Exception]) -> dict[str, str]:
    """The non-empty settings of ``[section]`` (dashes as underscores); an unknown key is ``error``."""
    values = {}
    if parser.has_section(section):
        for key, raw in parser.items(section):
            key = key.replace("-", "_")
            if key not in known:
                raise error(f"config file {path}: unknown setting {key!r} in [{section}] (known: {', '.join(sorted(known))})")
            if raw.strip():
                values[key] = raw.strip()
    return values


def bounded_number(values: dict, key: str, default, kind, low, high, error: type[Exception]):
    """``values[key]`` (or ``default``) as ``kind`` within [low, high], or ``error`` with one line."""
    raw = values.get(key, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise error(f"{key} {raw!r} is not a number") from None
    if not low <= value <= high:
        raise error(f"{key} must be between {low:g} and {high:g}, not {value:g}")
    return value


def valid_ae_title(title: str) -> bool:
    return 0 < len(title) <= 16 and title.isascii() and title.isprintable() and "\\" not in title and title.strip() == title


def build_receive_config(options: dict, config_file: str | Path | None = None) -> ReceiveConfig:
    """Command-line ``options`` (None = not given) over the ``[receive]`` section over defaults.

    The inbox defaults to the ``[watch]`` section's, so one config file describes the service.
    """
    merged: dict = {}
    if config_file:
        parser = read_ini(config_file, ReceiveConfigError)
        if parser.has_section("watch") and parser.get("watch", "inbox", fallback="").strip():
            merged["inbox"] = parser.get("watch", "inbox").strip()
        known = {"inbox", "ae_title", "port", "bind", "allowed_calling_ae_titles"}
        for key, value in section_values(parser, config_file, SECTION, known, ReceiveConfigError).items():
            merged["allowed_calling" if key == "allowed_calling_ae_titles" else key] = value
    merged.update({key: value for key, value in options.items() if value is not None and value != ()})
    if not merged.get("inbox"):
        raise ReceiveConfigError("no inbox folder: give INBOX, or 'inbox =' in the config file's [receive] or [watch] section")
    port = bounded_number(merged, "port", DEFAULT_PORT, int, 1, 65535, ReceiveConfigError)
    allowed = merged.get("allowed_calling", ())
    if isinstance(allowed, str):
        allowed = allowed.replace(",", " ").split()
    config = ReceiveConfig(
        inbox=Path(os.path.abspath(os.path.expanduser(str(merged["inbox"])))),
        ae_title=str(merged.get("ae_title", DEFAULT_AE_TITLE)),
        port=port,
        bind=str(merged.get("bind", "0.0.0.0")),
        allowed_calling=tuple(allowed),
    )
    for title in (config.ae_title, *config.allowed_calling):
        if not valid_ae_title(title):
            raise ReceiveConfigError(f"{title!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return config


class _PynetdicomToLog(logging.Handler):
    """pynetdicom's warnings and errors as our one-line events (its INFO/DEBUG lines are not wanted)."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().splitlines()[0] if record.getMessage() else record.levelname
        (self.log.error if record.levelno >= logging.ERROR else self.log.warning)(f"pynetdicom: {text}")


def route_pynetdicom_log(log: EventLog | None) -> None:
    """pynetdicom's warnings and errors as one-line events on ``log``, or nowhere (None)."""
    pynetdicom_log = logging.getLogger("pynetdicom")
    pynetdicom_log.handlers[:] = [_PynetdicomToLog(log) if log is not None else logging.NullHandler()]
    pynetdicom_log.propagate = False
    pynetdicom_log.setLevel(logging.WARNING if log is not None else logging.CRITICAL + 1)


class Receiver:
    """One C-STORE SCP writing into one inbox."""

    def __init__(self, config: ReceiveConfig, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.counts = {"stored": 0, "refused": 0}
        self._names = count()
        self._server = None

    # ------------------------------------------------------------ handlers

    def on_rejected(self, event) -> None:
        """Log an association we refused (pynetdicom refuses what the allow-list does not name)."""
        calling = _ae_text(event.assoc.requestor.ae_title)
        why = "not in the allowed calling AE titles" if calling not in self.config.allowed_calling else "rejected"
        self.log.warning(f"refused association from calling AE {calling!r} at {event.assoc.requestor.address}: {why}")

    def on_echo(self, event) -> int:
        return STATUS_SUCCESS

    def on_store(self, event) -> int | tuple:
        calling = _ae_text(event.assoc.requestor.ae_title)
        try:
            dataset = event.dataset
            sop_class = str(dataset.get("SOPClassUID", "") or "")
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
            modality = str(dataset.get("Modality", "") or "").strip().upper()
        except Exception:  # noqa: BLE001  (pydicom raises many types for a damaged data set)
            return self.refuse(STATUS_UNREADABLE, "data set cannot be decoded", calling, "?")
        if sop_class != event.context.abstract_syntax:
            return self.refuse(
                STATUS_SOP_CLASS_MISMATCH, "SOP Class UID does not match the presentation context", calling, sop_uid
            )
        if not UID_PATTERN.fullmatch(sop_uid) or len(sop_uid) > 64:
            return self.refuse(STATUS_BAD_UID, "SOP Instance UID is missing or invalid", calling, "?")
        if modality and modality not in MAMMOGRAPHY_MODALITIES:
            return self.refuse(STATUS_NOT_MAMMOGRAPHY, f"modality {modality[:16]} is not mammography (MG)", calling, sop_uid)
        name = f"{sop_uid}.dcm"
        try:
            size = self.write(name, event)
        except OSError as exc:
            self.log.error(f"{name} from {calling!r}: cannot write to the inbox: {exc.strerror or exc}; answered 0xA700")
            return STATUS_OUT_OF_RESOURCES
        self.counts["stored"] += 1
        self.log.info(f"{name}: received from {calling!r} ({size} bytes, {_syntax_name(event.context.transfer_syntax)})")
        return STATUS_SUCCESS

    def refuse(self, status: int, reason: str, calling: str, sop_uid: str):
        self.counts["refused"] += 1
        self.log.warning(f"refused instance {sop_uid} from {calling!r}: {reason} (status 0x{status:04X})")
        from pydicom.dataset import Dataset

        response = Dataset()
        response.Status = status
        response.ErrorComment = reason[:64]
        return response

    def write(self, name: str, event) -> int:
        """Temporary dot-name, fsync, rename to ``name``, fsync the folder. Returns the size.

        The bytes are the data set exactly as the sender encoded it, behind the file meta
        pynetdicom builds from the presentation context (no decode and re-encode).
        """
        from pynetdicom.dsutils import encode_file_meta

        inbox = self.config.inbox
        tmp = inbox / f"{TMP_PREFIX}{os.getpid()}-{next(self._names)}"  # not .eb-tmp-: the daemon sweeps those at start
        header = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
        body = event.request.DataSet.getvalue()  # bytes (one copy); a memoryview would pin the buffer
        write_bytes_atomic(inbox / name, (header, body), durable=True, tmp=tmp)
        return len(header) + len(body)

    # ------------------------------------------------------------ running

    def sweep(self) -> int:
        """Remove temporaries of receivers that are no longer running (a kill -9 mid-transfer)."""
        removed = 0
        for entry in os.scandir(self.config.inbox):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            pid = entry.name[len(TMP_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            _unlink_quietly(Path(entry.path))
            removed += 1
        return removed

    def application_entity(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(VERIFICATION)
        syntaxes = transfer_syntaxes()
        for uid in STORAGE_CLASSES.values():
            ae.add_supported_context(uid, syntaxes)
        if self.config.allowed_calling:
            ae.require_calling_aet = list(self.config.allowed_calling)
        return ae

    def start(self):
        """Listen (non-blocking); returns the pynetdicom server."""
        from pynetdicom import evt

        handlers = [(evt.EVT_REJECTED, self.on_rejected), (evt.EVT_C_ECHO, self.on_echo), (evt.EVT_C_STORE, self.on_store)]
        self._server = self.application_entity().start_server(
            (self.config.bind, self.config.port), block=False, evt_handlers=handlers
        )
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def run_receive(config: ReceiveConfig, log: EventLog | None = None) -> int:
    """Check the inbox, listen until SIGTERM/SIGINT; returns the exit code (0 stopped, 1 start-up problem)."""
    log = log or EventLog()
    if not config.inbox.is_dir():
        log.error(f"inbox folder {config.inbox} does not exist")
        return 1
    receiver = Receiver(config, log)
    try:
        swept = receiver.sweep()
    except OSError as exc:
        log.error(f"cannot list the inbox {config.inbox}: {exc.strerror or exc}")
        return 1
    if swept:
        log.info(f"removed {swept} partial transfer(s) a stopped receiver left behind (their senders got no success)")
    route_pynetdicom_log(log)
    # pydicom's warnings about a sender's data set are multi-line and may quote element values: never printed here.
    warnings.simplefilter("ignore")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        receiver.start()
    except OSError as exc:
        log.error(f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}")
        return 1
    allowed = ", ".join(config.allowed_calling) if config.allowed_calling else "any"
    log.info(
        f"receiving as AE {config.ae_title!r} on {config.bind}:{config.port} into {config.inbox}; "
        f"calling AE titles allowed: {allowed}. Research use only, not a diagnostic device."
    )
    while not stop.wait(0.5):
        pass
    receiver.stop()
    log.info(f"stopped: {receiver.counts['stored']} instances stored, {receiver.counts['refused']} refused")
    return 0


def _ae_text(title) -> str:
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return str(title).strip()


def _syntax_name(uid) -> str:
    return getattr(uid, "name", None) or str(uid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


