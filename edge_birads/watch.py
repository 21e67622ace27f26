"""The watch-folder daemon: classify every image that lands in an inbox, exactly once.

For each complete file in the inbox (see :mod:`edge_birads.watch_inbox`):

1. hash its content (sha256) and look for an earlier outcome of this very
   (name, content): in the content index, in results/, in failed/. If one
   exists, a previous run died after recording it: just finish the move.
2. If the same content was already classified under another name, copy that
   prediction into a new record with ``duplicate_of`` (no second model run).
3. Else classify it once. A bad file (:class:`~edge_birads.errors.InputError`,
   reported by the classifier as ``error``) is quarantined: its reason record
   is written durably to failed/, then the file is moved beside it.
4. Write the result durably (tmp, fsync, rename, fsync folder), add the name
   to the content index, and only then move the input to done/.

Every step is either idempotent or guarded by a record written before it, so
a kill or power cut between any two steps is resumed by step 1 on restart:
no input is lost, none is classified twice, none gets two records.

Failures are kept apart on purpose: a bad *input* is quarantined and the
daemon goes on; a failure to *write* (disk full, folder gone) or a bug exits
non-zero with a one-line account, the input stays in the inbox, and systemd
restarts the service. A file that keeps killing the process is quarantined
after ``max_attempts`` restarts so that it cannot block the queue.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import stat
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_birads import __version__
from edge_birads.durable import free_name, move_no_replace, read_json, sweep_temporaries, write_json_atomic
from edge_birads.decode import BROKEN_LINK, decode_key
from edge_birads.errors import InputError, ModelError, printable_name
from edge_birads.limits import check_file_size
from edge_birads.output import describe
from edge_birads.watch_config import StartupError, WatchConfig, prepare_folders
from edge_birads.watch_inbox import EventSource, InboxTracker, probe
from edge_birads.watch_log import EventLog
from edge_birads.watch_state import REASON_SUFFIX, RESULT_SUFFIX, ContentIndex, InFlightMarker, find_record

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: a bug; systemd restarts us
EXIT_IOERR = 74  # sysexits EX_IOERR: an output could not be written; systemd restarts us

HASH_CHUNK = 1 << 20
STATUS_MIN_INTERVAL = 1.0  # after activity, rewrite the status at most this often
TICK = 0.2  # how often pending files are re-checked for stability


class OutputError(Exception):
    """A record or move the daemon must make could not be made (not the input's fault)."""


@dataclass
class Counts:
    """Since this process started."""

    classified: int = 0
    duplicates: int = 0
    failed: int = 0
    already_done: int = 0
    requeued: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Activity:
    last_success: dict | None = None
    last_failure: dict | None = None
    context: str = "starting"  # what the daemon is doing, for a crash report
    counts: Counts = field(default_factory=Counts)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class UnreadableInput(Exception):
    """The input cannot be opened or read (a reason for quarantine)."""


def hash_file(path: Path) -> str:
    """sha256 of a regular file's content, read in chunks (memory stays flat).

    Opened non-blocking so that a FIFO dropped in the inbox cannot hang us.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise UnreadableInput("permission denied") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from None
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableInput("not a regular file")
        while True:
            try:
                chunk = os.read(fd, HASH_CHUNK)
            except OSError as exc:
                raise UnreadableInput(f"cannot read file: {exc.strerror or exc}") from None
            if not chunk:
                break
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


class WatchDaemon:
    """One inbox, one model, one file at a time."""

    def __init__(self, config: WatchConfig, classifier, log: EventLog, output=None) -> None:
        self.config = config
        self.output = output  # edge_birads.outbox.SrOutput: a DICOM SR per result, or None
        self.classifier = classifier
        self.log = log
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.tracker = InboxTracker(config.inbox, config.stable_seconds, config.close_write)
        self.index = ContentIndex(config.state / "content")
        self.inflight = InFlightMarker(config.state)
        self.activity = Activity()
        self.stop_signal: int | None = None
        self.source: EventSource | None = None
        self.mode = "poll" if config.poll else "inotify"
        self.scan_interval = config.scan_interval
        self.started_at = utc_now()
        self._status_written = 0.0
        self._dirty = True

    # ----------------------------------------------------------------- running

    def request_stop(self, signum: int, _frame=None) -> None:
        """Signal handler: finish the current image, then leave the loop."""
        self.stop_signal = signum
        self.events.put(("wake", ""))  # SimpleQueue.put is safe in a signal handler

    def run(self) -> int:
        config = self.config
        (config.state / "content").mkdir(parents=True, exist_ok=True)
        # Temporary and probe files a killed predecessor left behind (all named .eb-tmp-*).
        for folder in (
            config.inbox,
            config.results,
            config.done,
            config.failed,
            config.state,
            config.state / "content",
            config.status_file.parent,
        ):
            sweep_temporaries(folder)
        if not config.poll:
            try:
                self.source = EventSource(config.inbox, self.events)
            except OSError as exc:  # e.g. the inotify watch limit is reached
                self.mode = "poll"
                self.scan_interval = min(self.scan_interval, 2.0)
                self.log.warning(
                    f"inotify unavailable ({exc.strerror or exc}); falling back to polling every {self.scan_interval:g} s"
                )
        previous = self.inflight.previous
        if previous is not None:
            self.log.warning(
                f"previous run stopped while classifying {printable_name(previous.name)} "
                f"(attempt {previous.attempts} of {config.max_attempts}); resuming"
            )
            self.recover_index(previous.name, previous.sha256)
        self.log.info(
            f"watching {config.inbox} ({self.mode}, stable {config.stable_seconds:g} s); results to {config.results}, "
            f"done to {config.done}, failed to {config.failed}; model {self.classifier.card.name} "
            f"sha256 {self.classifier.sha256[:12]}; edge-birads {__version__}. Research use only, not a diagnostic device."
        )
        now = time.monotonic()
        self.tracker.scan(now)
        next_scan = now + self.scan_interval
        self.write_status("running", force=True)
        while self.stop_signal is None:
            now = time.monotonic()
            self.drain_events(now)
            if now >= next_scan:
                self.activity.context = "listing the inbox"
                self.scan_inbox(now)
                next_scan = now + self.scan_interval
            if self.source is not None and not self.source.alive():
                raise OutputError("the inotify watcher thread stopped")
            if self.output is not None and not self.output.alive():
                raise OutputError("the DICOM sender thread stopped")
            self.tracker.refresh(now)
            ready = self.tracker.ready(now)
            for name in ready:
                if self.stop_signal is not None:
                    break
                self.process(name)
                self.drain_events(time.monotonic())  # keep the event queue short during a long batch
                self.write_status("running")
            self.write_status("running")
            if not ready:
                wait = TICK if len(self.tracker) else min(1.0, max(0.05, next_scan - time.monotonic()))
                self.wait_for_event(wait)
        name = signal.Signals(self.stop_signal).name
        self.log.info(f"{name} received: no image in progress, stopping")
        self.shutdown()
        return EXIT_OK

    def recover_index(self, name: str, sha: str) -> None:
        """Index a result the previous run wrote just before it died.

        Without this, a copy of that content processed before the original
        file itself would not find it in the index and would run the model
        a second time.
        """
        lookup = find_record(self.config.results, name, sha, RESULT_SUFFIX)
        if lookup.found is not None:
            record = read_json(lookup.found) or {}
            self.guard_output(f"indexing {printable_name(name)}", lambda: self.index.add(sha, name, record))

    def shutdown(self) -> None:
        if self.source is not None:
            self.source.stop()
        self.write_status("stopped", force=True)
        c = self.activity.counts
        self.log.info(
            f"stopped: {c.classified} classified, {c.duplicates} duplicates, {c.failed} failed, "
            f"{c.already_done} finished from an earlier run, {len(self.tracker)} waiting in the inbox"
        )

    def scan_inbox(self, now: float) -> None:
        try:
            self.tracker.scan(now)
        except FileNotFoundError:
            raise OutputError(f"the inbox {self.config.inbox} disappeared") from None
        except OSError as exc:
            raise OutputError(f"cannot list the inbox {self.config.inbox}: {exc.strerror or exc}") from None

    def wait_for_event(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        self.handle_event(event, time.monotonic())

    def drain_events(self, now: float) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.handle_event(event, now)

    def handle_event(self, event: tuple[str, str], now: float) -> None:
        kind, name = event
        if kind == "wake":
            return
        if kind == "deleted":
            self.tracker.touch(name, now)  # forgets it if really gone (a rename may reuse the name)
        elif kind in ("closed", "moved_in"):
            self.tracker.closed(name, now)
        else:
            self.tracker.touch(name, now)

    # -------------------------------------------------------------- one file

    def process(self, name: str) -> None:
        """Take one complete inbox entry to exactly one record."""
        config = self.config
        path = config.inbox / name
        shown = printable_name(name)
        self.activity.context = f"checking {shown}"
        pending = self.tracker.pending.get(name)
        current = probe(path)
        if current is None:
            self.tracker.forget(name)
            self.log.info(f"{shown}: removed from the inbox before it was processed")
            return
        if pending is None or current != pending.signature:
            self.tracker.touch(name, time.monotonic())  # changed since it looked complete: wait again
            return
        if current == ("dangling-symlink",):
            return self.quarantine(name, None, BROKEN_LINK)
        if current[0] == "stat-error":
            return self.quarantine(name, None, f"cannot read file: {os.strerror(current[1]) if current[1] else 'stat failed'}")
        size, mode = current[0], current[3]
        if mode == stat.S_IFDIR:
            return self.quarantine(name, None, "is a directory, not an image file")
        if mode != stat.S_IFREG:
            return self.quarantine(name, None, "not a regular file (a pipe, socket or device)")
        try:
            check_file_size(size, self.classifier.limits)
        except InputError as exc:
            return self.quarantine(name, None, exc.reason)
        self.activity.context = f"hashing {shown}"
        try:
            sha = hash_file(path)
        except FileNotFoundError:
            self.tracker.forget(name)
            self.log.info(f"{shown}: removed from the inbox before it was processed")
            return
        except UnreadableInput as exc:
            return self.quarantine(name, None, str(exc))

        # 1. An outcome recorded by an earlier run (it died before moving the file).
        entry = self.index.get(sha)
        if entry is not None and name in entry["names"]:
            self.report(name, entry.get("record") or {})
            return self.finish_done(name, sha, "already reported by an earlier run (same name and content)")
        result_slot = find_record(config.results, name, sha, RESULT_SUFFIX)
        if result_slot.found is not None:
            record = read_json(result_slot.found) or {}
            self.guard_output(f"indexing {shown}", lambda: self.index.add(sha, name, record))
            self.report(name, record)
            return self.finish_done(name, sha, f"result {result_slot.found.name} was written by an earlier run")
        failed_slot = find_record(config.failed, name, sha, REASON_SUFFIX, slot_must_be_free=True)
        if failed_slot.found is not None:
            return self.finish_failed(name, sha, failed_slot.slot, None, earlier=True)

        # 2. A file that killed the previous runs.
        attempts = self.inflight.attempts_before(name, sha)
        if attempts >= config.max_attempts:
            return self.quarantine(
                name, sha, f"the daemon stopped {attempts} times while classifying this file (crash or kill); set aside"
            )

        # 3. The same content under another name: reuse its prediction.
        original = entry.get("record") if entry is not None else None
        if (
            isinstance(original, dict)
            and original.get("error") is None
            and entry.get("model_sha256") == self.classifier.sha256
            and decode_key(str(entry.get("first", ""))) == decode_key(name)  # same bytes, decoded the same way
        ):
            record = dict(original)
            record.update(file=shown, sha256=sha, duplicate_of=entry.get("first"), processed_at=utc_now())
            self.write_result(name, sha, result_slot.free, record)
            self.activity.counts.duplicates += 1
            self.log.info(f"{shown}: same content as {printable_name(str(entry.get('first')))}; result copied, not re-run")
            return

        # 4. Classify.
        self.activity.context = f"classifying {shown}"
        self.guard_output("writing the in-flight marker", lambda: self.inflight.mark(name, sha, attempts + 1))
        result = self.classifier.classify_file(path)
        after = probe(path)
        if after != current:
            self.inflight.clear(name, sha)
            if after is None:
                self.tracker.forget(name)
                self.log.warning(f"{shown}: removed from the inbox while being classified; nothing recorded")
            else:
                self.tracker.touch(name, time.monotonic())
                self.activity.counts.requeued += 1
                self.log.warning(f"{shown}: changed while being classified; result discarded, will retry when complete")
            return
        if not result.ok:
            return self.quarantine(name, sha, result.error or "unknown error")
        record = result.to_dict()
        record.update(file=shown, sha256=sha, duplicate_of=None, processed_at=utc_now())
        self.write_result(name, sha, result_slot.free, record)
        self.activity.counts.classified += 1
        self.log.info(f"{shown}: {describe(record)} ({record['latency_ms']:.0f} ms) -> {result_slot.free.name}")

    def write_result(self, name: str, sha: str, target: Path | None, record: dict) -> None:
        """Result durable -> name in the content index -> input to done/. In that order."""
        shown = printable_name(name)
        assert target is not None, "find_record returns a free slot when nothing was found"
        self.activity.context = f"writing the result of {shown}"
        self.guard_output(f"writing {target}", lambda: write_json_atomic(target, record, durable=True))
        self.guard_output(f"indexing {shown}", lambda: self.index.add(sha, name, record))
        self.report(name, record)
        self.finish_done(name, sha, None)
        self.activity.last_success = {"file": shown, "result": target.name, "at": record["processed_at"]}

    def report(self, name: str, record: dict) -> None:
        """Hand a durable result to the DICOM output while the input is still in the inbox (idempotent)."""
        if self.output is not None:
            what = self.activity.context = f"filing the report of {printable_name(name)}"
            self.guard_output(what, lambda: self.output.after_result(self.config.inbox / name, record))

    def finish_done(self, name: str, sha: str, note: str | None) -> None:
        source = self.config.inbox / name
        target = free_name(self.config.done, name, sha)
        self.activity.context = f"moving {printable_name(name)} to done"
        self.guard_output(f"moving {source} to {target}", lambda: move_no_replace(source, target))
        self.tracker.forget(name)
        self.inflight.clear(name, sha)
        self._dirty = True
        if note is not None:
            self.activity.counts.already_done += 1
            self.log.info(f"{printable_name(name)}: {note}; moved to done")

    def quarantine(self, name: str, sha: str | None, reason: str) -> None:
        """Reason record durable in failed/, then the input moved beside it.

        An entry that could not be hashed (a folder, a broken link, an
        unreadable file) is recognised after a restart by its inode and mtime
        instead, which a rename keeps and a new arrival of the same name does not.
        """
        key = sha if sha is not None else self.entry_identity(name)
        lookup = find_record(self.config.failed, name, key, REASON_SUFFIX, slot_must_be_free=True)
        if lookup.found is not None:
            return self.finish_failed(name, sha, lookup.slot, reason, earlier=True)
        shown = printable_name(name)
        record = self.classifier.failure(shown, reason).to_dict()
        record.update(sha256=sha, identity=key, quarantined_as=lookup.slot, processed_at=utc_now())
        self.activity.context = f"quarantining {shown}"
        self.guard_output(f"writing {lookup.free}", lambda: write_json_atomic(lookup.free, record, durable=True))
        self.finish_failed(name, sha, lookup.slot, reason, earlier=False)

    def entry_identity(self, name: str) -> str | None:
        try:
            status = os.lstat(self.config.inbox / name)
        except OSError:
            return None
        return "entry-" + hashlib.sha256(f"{status.st_dev}:{status.st_ino}:{status.st_mtime_ns}".encode()).hexdigest()[:20]

    def finish_failed(self, name: str, sha: str | None, slot: str | None, reason: str | None, earlier: bool) -> None:
        source = self.config.inbox / name
        target = self.config.failed / (slot or name)
        if os.path.lexists(target):
            target = free_name(self.config.failed, name, sha)
        self.guard_output(f"moving {source} to {target}", lambda: move_no_replace(source, target))
        self.tracker.forget(name)
        self.inflight.clear(name, sha)
        self._dirty = True
        shown = printable_name(name)
        if earlier:
            self.activity.counts.already_done += 1
            self.log.info(f"{shown}: failure was recorded by an earlier run; moved to failed")
            return
        self.activity.counts.failed += 1
        self.activity.last_failure = {"file": shown, "reason": reason, "at": utc_now()}
        self.log.warning(f"{shown}: {reason} -> failed/{printable_name(target.name)}")

    def guard_output(self, what: str, action) -> None:
        """Run a write the daemon depends on; turn an OSError into an exit, not a quarantine."""
        try:
            action()
        except OSError as exc:
            raise OutputError(f"{what}: {exc.strerror or exc}") from None

    # ----------------------------------------------------------------- status

    def write_status(self, state: str, force: bool = False) -> None:
        """The heartbeat file: atomically replaced, not fsynced (it is rewritten constantly)."""
        now = time.monotonic()
        elapsed = now - self._status_written
        if not force and elapsed < self.config.heartbeat_seconds and not (self._dirty and elapsed >= STATUS_MIN_INTERVAL):
            return
        status = {
            "state": state,
            "pid": os.getpid(),
            "version": __version__,
            "mode": self.mode,
            "started_at": self.started_at,
            "updated_at": utc_now(),
            "inbox": str(self.config.inbox),
            "results": str(self.config.results),
            "model_sha256": self.classifier.sha256,
            "queue_length": len(self.tracker),
            "counts": self.activity.counts.as_dict(),
            "last_success": self.activity.last_success,
            "last_failure": self.activity.last_failure,
        }
        if self.output is not None:
            status["outbox"] = self.output.status()
        try:
            write_json_atomic(self.config.status_file, status, durable=False)
        except OSError as exc:
            raise OutputError(f"writing the status file {self.config.status_file}: {exc.strerror or exc}") from None
        self._status_written = now
        self._dirty = False


def crash_summary(exc: BaseException) -> str:
    """Exception type, message and the innermost frames, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in reversed(frames))
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message} at {where}"


def run_watch(config: WatchConfig, log: EventLog | None = None, send=None) -> int:
    """Start-up checks, one model load, the loop; returns the process exit code."""
    log = log or EventLog()
    daemon: WatchDaemon | None = None
    stop_requested: list[int] = []

    def early_stop(signum, _frame) -> None:  # before the daemon exists (model loading)
        stop_requested.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, early_stop)
    try:
        prepare_folders(config)  # returns the inbox lock's descriptor, held open until the process exits
        from edge_birads.classifier import Classifier

        try:
            classifier = Classifier(config.model, threads=config.threads)
        except ModelError as exc:
            raise StartupError(str(exc)) from None
    except StartupError as exc:
        log.error(str(exc))
        return EXIT_STARTUP
    output = None
    if send is not None:  # edge_birads.outbox.SendConfig: file (and send) a DICOM SR per result
        from edge_birads.outbox import SrOutput

        output = SrOutput(send, classifier.card, log)
        try:
            output.start()
        except OSError as exc:
            log.error(f"cannot use the outbox {send.outbox}: {exc.strerror or exc}")
            return EXIT_STARTUP
    daemon = WatchDaemon(config, classifier, log, output)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, daemon.request_stop)
    if stop_requested:
        daemon.request_stop(stop_requested[0])
    try:
        return daemon.run()
    except OutputError as exc:
        daemon.inflight.abandon()  # not the file's fault: do not count it towards quarantine
        log.error(f"cannot go on: {exc}; the input stays in the inbox; exiting {EXIT_IOERR}")
        return EXIT_IOERR
    except Exception as exc:  # noqa: BLE001  (a bug: report where, keep the file, exit so systemd restarts the service)
        log.error(
            f"internal error while {daemon.activity.context}: {crash_summary(exc)}; "
            f"the input stays in the inbox; exiting {EXIT_SOFTWARE}"
        )
        return EXIT_SOFTWARE
    finally:
        if output is not None:
            output.stop()
