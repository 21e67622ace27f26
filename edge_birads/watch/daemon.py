"""The watch-folder daemon: classify every image that lands in an inbox, exactly once.

For each complete entry in the inbox (see :mod:`edge_birads.watch.inbox`),
:meth:`WatchDaemon.process` does, in this order:

1. Claim it: rename the entry out of the inbox into the daemon's private
   working folder (``STATE/work/<its relative path>``, on the inbox's
   filesystem). From here on nobody else can change what is being processed:
   a sender re-sending the same name makes a new arrival.
2. Read the claimed file's bytes once, hash them (sha256) and look for an
   earlier outcome of this very (name, content): in the content index, in
   results/, in failed/. If one exists, a previous run died after recording
   it: just file it.
3. If the same content was already classified under another name, copy that
   prediction into a new record with ``duplicate_of`` (no second model run).
4. Else count the attempt (:class:`~edge_birads.watch.state.ClaimMarker`) and classify those bytes. A bad file (:class:`~edge_birads.errors.InputError`,
   reported by the classifier as ``error``) is quarantined: its reason record
   is written durably to failed/, then the claimed file is moved beside it.
5. Write the result durably (tmp, fsync, rename, fsync folder), add the name
   to the content index, and only then move the claimed file to done/, with a
   rename that never replaces a file.

What is filed is therefore exactly what was classified. Every step is either
idempotent or guarded by a record written before it, so a kill or power cut
between any two steps is resumed on restart: whatever is in the working
folder is processed again from step 2 (its record, if written, is found
there); no input is lost, none is classified twice, none gets two records.

Failures are kept apart on purpose: a bad *input* is quarantined and the
daemon goes on; an input that cannot be taken out of the inbox is retried,
then skipped; a failure to *write* (disk full, folder gone) or a bug exits
non-zero with a one-line account, the claimed input goes back to the inbox,
and systemd restarts the service. A file that keeps killing the process is
quarantined after ``max_attempts`` restarts so that it cannot block the queue.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import signal
import stat
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_birads import __version__
from edge_birads.decode import BROKEN_LINK, decode_key
from edge_birads.durable import (
    fsync_dir,
    move_no_replace,
    read_json,
    rename_no_replace,
    slot_names,
    sweep_temporaries,
    write_json_atomic,
)
from edge_birads.errors import InputError, ModelError, printable_name
from edge_birads.limits import DecodeLimits, check_file_size
from edge_birads.output import describe
from edge_birads.watch.config import StartupError, WatchConfig, prepare_folders
from edge_birads.watch.inbox import EventSource, InboxTracker, is_study_folder, probe
from edge_birads.watch.log import EventLog
from edge_birads.watch.state import (
    REASON_SUFFIX,
    RESULT_SUFFIX,
    ClaimMarker,
    ContentIndex,
    UnmovableFiles,
    find_record,
    split_relative,
)

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: a bug; systemd restarts us
EXIT_IOERR = 74  # sysexits EX_IOERR: an output could not be written; systemd restarts us

STATUS_MIN_INTERVAL = 1.0  # after activity, rewrite the status at most this often
TICK = 0.2  # how often pending files are re-checked for stability
# A claim that fails with one of these is the file's problem (retried, then skipped), not the daemon's.
UNMOVABLE_ERRORS = (errno.EACCES, errno.EPERM, errno.EBUSY, errno.ETXTBSY)


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
    skipped: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Outcome:
    """What became of one inbox entry: the seam for anything that acts on a finished file.

    ``kind`` is ``classified``, ``duplicate``, ``failed``, ``already_done``
    (an earlier run had recorded it), ``requeued`` (changed while being
    classified), ``skipped`` (could not be taken out of the inbox) or
    ``gone`` (removed before it was processed). For the first four,
    ``record`` is the result or reason record as written to ``record_path``
    and ``filed_as`` is where the input now lies (done/ or failed/).
    """

    name: str  # path relative to the inbox
    kind: str
    record: dict | None = None
    record_path: Path | None = None
    filed_as: Path | None = None


@dataclass
class Activity:
    last_success: dict | None = None
    last_failure: dict | None = None
    context: str = "starting"  # what the daemon is doing, for a crash report
    counts: Counts = field(default_factory=Counts)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class UnreadableInput(Exception):
    """The claimed entry cannot be read as a file (a reason for quarantine)."""


def read_claimed(path: Path, origin: Path, limits: DecodeLimits) -> tuple[bytes, tuple]:
    """The bytes of a claimed entry, read once, and the (size, mtime, inode) they were read at.

    A symbolic link is read through; a relative one is resolved from the
    folder it came from (``origin``), as it was in the inbox. Opened
    non-blocking so that a FIFO dropped in the inbox cannot hang us.
    """
    target = path
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            link = os.readlink(path)
            target = Path(link) if os.path.isabs(link) else origin / link
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise UnreadableInput("permission denied") from None
    except FileNotFoundError:
        raise UnreadableInput(BROKEN_LINK if target != path else "no such file") from None
    except OSError as exc:
        raise UnreadableInput(f"cannot read file: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise UnreadableInput("is a directory, not an image file")
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableInput("not a regular file (a pipe, socket or device)")
        try:
            check_file_size(status.st_size, limits)  # the message classify gives, before reading a byte
        except InputError as exc:
            raise UnreadableInput(exc.reason) from None
        limit = limits.max_file_bytes
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as exc:
                raise UnreadableInput(f"cannot read file: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise UnreadableInput(f"file grew past the limit of {limit} bytes while being read")
        return b"".join(chunks), file_signature(os.fstat(fd))
    finally:
        os.close(fd)


def file_signature(status: os.stat_result) -> tuple:
    return (status.st_size, status.st_mtime_ns, status.st_ino)


def claimed_entries(work: Path) -> list[str]:
    """The relative paths of the entries in the working folder (study folders on the way walked)."""
    found = []

    def walk(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False) and is_study_folder(entry.name):
                walk(Path(entry.path), name + "/")  # empty ones are left by a filed entry: pruned
            else:
                found.append(name)

    walk(work, "")
    return found


def prune_work(work: Path, name: str | None = None) -> None:
    """Remove the empty study folders a filed entry (``name``, or any) leaves in the working folder."""
    if name is not None and "/" not in name:
        return
    for root, folders, files in os.walk(work, topdown=False):
        if Path(root) != work and not folders and not files:
            try:
                os.rmdir(root)
            except OSError:
                pass


class WatchDaemon:
    """One inbox, one model, one file at a time."""

    def __init__(self, config: WatchConfig, classifier, log: EventLog, output=None) -> None:
        self.config = config
        self.output = output  # edge_birads.watch.outbox.SrOutput: a DICOM SR per result, or None
        self.classifier = classifier
        self.log = log
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.tracker = InboxTracker(config.inbox, config.stable_seconds, config.close_write)
        self.index = ContentIndex(config.state / "content")
        self.claims = ClaimMarker(config.state)
        self.unmovable = UnmovableFiles(config.state)
        self.activity = Activity()
        self.stop_signal: int | None = None
        self.source: EventSource | None = None
        self.mode = "poll" if config.poll else "inotify"
        self.scan_interval = config.scan_interval
        self.started_at = utc_now()
        self._status_written = 0.0
        self._dirty = True
        self._rescan = False
        self._skip_logged: set[tuple[str, tuple]] = set()
        self.locks: list[int] = []  # descriptors of the folder locks, held for the process's life

    # ----------------------------------------------------------------- running

    def request_stop(self, signum: int, _frame=None) -> None:
        """Signal handler: finish the current image, then leave the loop."""
        self.stop_signal = signum
        self.events.put(("wake", ""))  # SimpleQueue.put is safe in a signal handler

    def run(self) -> int:
        config = self.config
        for folder in (config.state / "content", self.claims.work):
            folder.mkdir(parents=True, exist_ok=True)
        # Temporary and probe files a killed predecessor left behind (all named .eb-tmp-*).
        for folder in (config.inbox, config.done, config.state, config.state / "content", config.status_file.parent):
            sweep_temporaries(folder)
        for folder in (config.results, config.failed):  # records are written in study sub-folders too
            sweep_temporaries(folder, recursive=True)
        if not config.poll:
            try:
                self.source = EventSource(config.inbox, self.events)
            except OSError as exc:  # e.g. the inotify watch limit is reached
                self.mode = "poll"
                self.scan_interval = min(self.scan_interval, 2.0)
                self.log.warning(
                    f"inotify unavailable ({exc.strerror or exc}); falling back to polling every {self.scan_interval:g} s"
                )
        self.log.info(
            f"watching {config.inbox} ({self.mode}, stable {config.stable_seconds:g} s); results to {config.results}, "
            f"done to {config.done}, failed to {config.failed}; model {self.classifier.card.name} "
            f"sha256 {self.classifier.sha256[:12]}; edge-birads {__version__}. Research use only, not a diagnostic device."
        )
        self.write_status("running", force=True)
        self.recover()
        now = time.monotonic()
        self.scan_inbox(now)
        next_scan = now + self.scan_interval
        while self.stop_signal is None:
            now = time.monotonic()
            self.drain_events(now)
            if now >= next_scan or self._rescan:
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
            self.remove_settled_folders(time.monotonic())
            self.write_status("running")
            if not ready:
                wait = TICK if len(self.tracker) or self.tracker.folders else min(1.0, max(0.05, next_scan - time.monotonic()))
                self.wait_for_event(wait)
        name = signal.Signals(self.stop_signal).name
        self.log.info(f"{name} received: no image in progress, stopping")
        self.shutdown()
        return EXIT_OK

    def recover(self) -> None:
        """Finish what a previous run left in the working folder, before anything new."""
        previous = self.claims.record
        for name in claimed_entries(self.claims.work):
            shown = printable_name(name)
            if previous is not None and previous.name == name:
                tries = f"attempt {previous.attempts} of {self.config.max_attempts}"
                self.log.warning(f"previous run stopped while classifying {shown} ({tries}); resuming")
            else:
                self.log.warning(f"previous run stopped while processing {shown}; resuming")
            self.claims.take(name)
            self.account(self.process_claimed(name))
        prune_work(self.claims.work)
        if previous is not None and self.claims.record is previous:
            # Not in the working folder: it is back in the inbox, or was filed just before the stop. Index a
            # result written then, so that a copy of the content under another name does not run the model again.
            lookup = find_record(self.config.results, previous.name, previous.sha256, RESULT_SUFFIX)
            if lookup.found is not None:
                record = read_json(lookup.found) or {}
                self.guard_output(
                    f"indexing {printable_name(previous.name)}", lambda: self.index.add(previous.sha256, previous.name, record)
                )

    def shutdown(self) -> None:
        self.stop_source()
        self.write_status("stopped", force=True)
        c = self.activity.counts
        self.log.info(
            f"stopped: {c.classified} classified, {c.duplicates} duplicates, {c.failed} failed, "
            f"{c.already_done} finished from an earlier run, {c.skipped} skipped, {len(self.tracker)} waiting in the inbox"
        )

    def stop_source(self) -> None:
        if self.source is not None:
            self.source.stop()
            self.source = None

    def scan_inbox(self, now: float) -> None:
        self._rescan = False
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
        if kind == "rescan":
            self._rescan = True
        elif kind == "deleted":
            self.tracker.touch(name, now)  # forgets it if really gone (a rename may reuse the name)
        elif kind in ("closed", "moved_in"):
            self.tracker.closed(name, now)
        else:
            self.tracker.touch(name, now)

    def remove_settled_folders(self, now: float) -> None:
        """Remove study folders that are empty and have not changed for the stable interval."""
        for name in self.tracker.settled_folders(now):
            try:
                os.rmdir(self.config.inbox / name)
            except FileNotFoundError:
                self.tracker.folder_gone(name)
            except OSError:  # not empty (a copy in flight, an ignored name), or not ours to remove
                self.tracker.folder_kept(name, now)
            else:
                self.tracker.folder_gone(name)
                self.log.info(f"{printable_name(name)}/: study folder empty, removed from the inbox")

    # -------------------------------------------------------------- one file

    def process(self, name: str) -> Outcome | None:
        """Take one complete inbox entry to exactly one record; None if it is not ready after all."""
        outcome = self._take(name)
        if outcome is not None:
            self.account(outcome)
        return outcome

    def _take(self, name: str) -> Outcome | None:
        path = self.config.inbox / name
        shown = printable_name(name)
        self.activity.context = f"checking {shown}"
        pending = self.tracker.pending.get(name)
        current = probe(path)
        if current is None:
            self.tracker.forget(name)
            self.log.info(f"{shown}: removed from the inbox before it was processed")
            return Outcome(name, "gone")
        if pending is None or current != pending.signature:
            self.tracker.touch(name, time.monotonic())  # changed since it looked complete: wait again
            return None
        if self.unmovable.attempts(name, current) >= self.config.max_attempts:
            return self.skip(name, current, None)
        # 1. Claim: marker first (durably), then the rename out of the inbox.
        self.activity.context = f"taking {shown} out of the inbox"
        work = self.claims.work_path(name)
        if os.path.lexists(work):  # left there by a run that could not put it back: it comes first
            self.claims.take(name)
            self.account(self.process_claimed(name))
        self.claims.take(name)
        try:
            if "/" in name:
                self.guard_output("creating a working folder", lambda: work.parent.mkdir(parents=True, exist_ok=True))
            rename_no_replace(path, work)
        except FileNotFoundError:
            self.claims.returned()
            prune_work(self.claims.work, name)
            self.tracker.forget(name)
            self.log.info(f"{shown}: removed from the inbox before it was processed")
            return Outcome(name, "gone")
        except OSError as exc:
            self.claims.returned()
            prune_work(self.claims.work, name)
            if exc.errno not in UNMOVABLE_ERRORS:
                raise OutputError(f"moving {path} into the working folder: {exc.strerror or exc}") from None
            return self.skip(name, current, exc.strerror or str(exc))
        self.tracker.forget(name)
        if self.unmovable.attempts(name, current):
            self.guard_output("updating the unmovable list", lambda: self.unmovable.forget(name))
        return self.process_claimed(name)

    def skip(self, name: str, signature: tuple, reason: str | None) -> Outcome:
        """An entry that could not be taken out of the inbox: retried later, skipped after max_attempts."""
        shown = printable_name(name)
        limit = self.config.max_attempts
        if reason is None:  # skipped by an earlier attempt (this run or one before)
            attempts = self.unmovable.attempts(name, signature)
            reason = self.unmovable.entries[name].get("reason", "")
        else:
            attempts = self.unmovable.failed(name, signature, reason)
        self.tracker.retry_later(name, time.monotonic())
        if attempts < limit:
            self.log.warning(f"{shown}: cannot be taken out of the inbox ({reason}); attempt {attempts} of {limit}, will retry")
            return Outcome(name, "requeued")
        if (name, signature) not in self._skip_logged:
            self._skip_logged.add((name, signature))
            self.log.warning(
                f"{shown}: cannot be taken out of the inbox ({reason}) after {attempts} attempts; skipped and left there "
                "until it changes (fix its permissions, or remove it)"
            )
            return Outcome(name, "skipped", record={"error": f"cannot be taken out of the inbox ({reason})"})
        return Outcome(name, "waiting")

    def process_claimed(self, name: str) -> Outcome:
        """Classify the claimed entry of ``name`` (in the working folder) and file it: the seam of one file."""
        config = self.config
        assert self.claims.current == name
        work = self.claims.work_path(name)
        shown = printable_name(name)
        origin = config.inbox / split_relative(name)[0]
        self.activity.context = f"reading {shown}"
        try:
            data, read_at = read_claimed(work, origin, self.classifier.limits)
        except UnreadableInput as exc:
            return self.quarantine(name, None, str(exc))
        sha = hashlib.sha256(data).hexdigest()

        # 2. An outcome recorded by an earlier run (it died before filing the file).
        entry = self.index.get(sha)
        if entry is not None and name in entry["names"]:
            self.report(name, entry.get("record") or {})
            return self.file_done(name, sha, None, "already_done", "already reported by an earlier run (same name and content)")
        result_slot = find_record(config.results, name, sha, RESULT_SUFFIX)
        if result_slot.found is not None:
            record = read_json(result_slot.found) or {}
            self.guard_output(f"indexing {shown}", lambda: self.index.add(sha, name, record))
            self.report(name, record)
            return self.file_done(
                name, sha, result_slot.found, "already_done", f"result {printable_name(result_slot.found.name)} was written by an earlier run"
            )
        failed_slot = find_record(config.failed, name, sha, REASON_SUFFIX, slot_must_be_free=True)
        if failed_slot.found is not None:
            return self.file_failed(name, sha, failed_slot, None, earlier=True)

        # A file that killed the previous runs.
        attempts = self.claims.attempts_before(sha)
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
            self.log.info(f"{shown}: same content as {printable_name(str(entry.get('first')))}; result copied, not re-run")
            return self.file_done(name, sha, result_slot.free, "duplicate", None, record)

        # 4. Classify the bytes read above.
        self.activity.context = f"classifying {shown}"
        self.guard_output("writing the claim record", lambda: self.claims.classifying(sha))
        result = self.classifier.classify_bytes(data, name)
        if self.changed_since_read(work, read_at):
            return self.requeue(name, sha)
        if not result.ok:
            return self.quarantine(name, sha, result.error or "unknown error")
        record = result.to_dict()
        record.update(file=shown, sha256=sha, duplicate_of=None, processed_at=utc_now())
        self.write_result(name, sha, result_slot.free, record)
        self.log.info(
            f"{shown}: {describe(record)} ({record['latency_ms']:.0f} ms) -> {printable_name(self.shown_path(result_slot.free, config.results))}"
        )
        self.report(name, record)
        return self.file_done(name, sha, result_slot.free, "classified", None, record)

    def changed_since_read(self, work: Path, read_at: tuple) -> bool:
        """A writer that still had the file open changed it after it was claimed (senders should rename)."""
        try:
            status = os.lstat(work)
        except OSError:
            return True
        return stat.S_ISREG(status.st_mode) and file_signature(status) != read_at

    def requeue(self, name: str, sha: str) -> Outcome:
        """The claimed file changed under us: nothing recorded, it goes back to the inbox to settle."""
        shown = printable_name(name)
        self.claims.uncount()
        if self.return_to_inbox():
            self.log.warning(f"{shown}: changed while being classified; result discarded, back in the inbox until complete")
            return Outcome(name, "requeued")
        return self.quarantine(name, sha, "changed while being classified, and a new file has taken its name in the inbox")

    def return_to_inbox(self) -> bool:
        """Put the claimed file back where it came from, if that name is still free; True if done."""
        name = self.claims.current
        if name is None:
            return True
        work = self.claims.work_path(name)
        target = self.config.inbox / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)  # its study folder may have been removed
            rename_no_replace(work, target)
        except FileNotFoundError:
            if os.path.lexists(work):
                return False
        except OSError:
            return False
        prune_work(self.claims.work, name)
        record = self.claims.record
        if record is not None and record.name == name and record.attempts:
            self.claims.returned()  # the attempt count stays, for when the same file is claimed again
        else:
            self.claims.clear()
        self.tracker.touch(name, time.monotonic())
        return True

    def write_result(self, name: str, sha: str, target: Path | None, record: dict) -> None:
        """Result durable -> name in the content index. Filing the input comes after."""
        shown = printable_name(name)
        assert target is not None, "find_record returns a free slot when nothing was found"
        self.activity.context = f"writing the result of {shown}"
        self.guard_output(f"writing {target}", lambda: self.write_record(target, record))
        self.guard_output(f"indexing {shown}", lambda: self.index.add(sha, name, record))

    def report(self, name: str, record: dict) -> None:
        """Hand a durable result to the DICOM output while the claimed input is still in the working folder (idempotent)."""
        if self.output is not None:
            what = self.activity.context = f"filing the report of {printable_name(name)}"
            self.guard_output(what, lambda: self.output.after_result(self.claims.work_path(name), record))

    def write_record(self, target: Path, record: dict) -> None:
        make_folder(target.parent)
        write_json_atomic(target, record, durable=True)

    def file_done(self, name: str, sha: str, record_path: Path | None, kind: str, note: str | None, record: dict | None = None) -> Outcome:
        """Move the claimed file to done/ (same relative path) without ever replacing a file there."""
        work = self.claims.work_path()
        parent, base = split_relative(name)
        folder = self.config.done / parent if parent else self.config.done
        self.activity.context = f"moving {printable_name(name)} to done"
        target = self.guard_output(f"moving {work} to {folder}", lambda: file_into(work, folder, base, sha))
        prune_work(self.claims.work, self.claims.current)
        self.claims.clear()
        if note is not None:
            self.log.info(f"{printable_name(name)}: {note}; moved to done")
        return Outcome(name, kind, record if record is not None else read_json(record_path) if record_path else None, record_path, target)

    def quarantine(self, name: str, sha: str | None, reason: str) -> Outcome:
        """Reason record durable in failed/, then the claimed file moved beside it.

        An entry that could not be hashed (a folder, a broken link, an
        unreadable file) is recognised after a restart by its inode and mtime
        instead, which a rename keeps and a new arrival of the same name does not.
        """
        key = sha if sha is not None else self.entry_identity()
        lookup = find_record(self.config.failed, name, key, REASON_SUFFIX, slot_must_be_free=True)
        if lookup.found is not None:
            return self.file_failed(name, sha, lookup, reason, earlier=True)
        shown = printable_name(name)
        record = self.classifier.failure(shown, reason).to_dict()
        record.update(sha256=sha, identity=key, quarantined_as=lookup.slot, processed_at=utc_now())
        self.activity.context = f"quarantining {shown}"
        self.guard_output(f"writing {lookup.free}", lambda: self.write_record(lookup.free, record))
        return self.file_failed(name, sha, lookup, reason, earlier=False, record=record)

    def entry_identity(self) -> str | None:
        try:
            status = os.lstat(self.claims.work_path())
        except OSError:
            return None
        return "entry-" + hashlib.sha256(f"{status.st_dev}:{status.st_ino}:{status.st_mtime_ns}".encode()).hexdigest()[:20]

    def file_failed(self, name: str, sha: str | None, lookup, reason: str | None, earlier: bool, record: dict | None = None) -> Outcome:
        work = self.claims.work_path()
        parent, base = split_relative(lookup.slot)
        folder = self.config.failed / parent if parent else self.config.failed
        target = self.guard_output(f"moving {work} to {folder}", lambda: file_into(work, folder, base, sha, first=base))
        prune_work(self.claims.work, self.claims.current)
        self.claims.clear()
        shown = printable_name(name)
        record_path = lookup.found or lookup.free
        if earlier:
            self.log.info(f"{shown}: failure was recorded by an earlier run; moved to failed")
            return Outcome(name, "already_done", read_json(record_path), record_path, target)
        self.log.warning(f"{shown}: {reason} -> failed/{printable_name(self.shown_path(target, self.config.failed))}")
        return Outcome(name, "failed", record, record_path, target)

    def account(self, outcome: Outcome) -> None:
        """Counts and the status file's last success/failure, from one file's outcome."""
        counts = self.activity.counts
        shown = printable_name(outcome.name)
        if outcome.kind in ("classified", "duplicate"):
            if outcome.kind == "classified":
                counts.classified += 1
            else:
                counts.duplicates += 1
            at = outcome.record.get("processed_at") if outcome.record else utc_now()
            result = printable_name(self.shown_path(outcome.record_path, self.config.results))
            self.activity.last_success = {"file": shown, "result": result, "at": at}
        elif outcome.kind == "failed":
            counts.failed += 1
            self.activity.last_failure = {"file": shown, "reason": outcome.record["error"], "at": utc_now()}
        elif outcome.kind == "skipped":
            counts.skipped += 1
            self.activity.last_failure = {"file": shown, "reason": outcome.record["error"], "at": utc_now()}
        elif outcome.kind == "already_done":
            counts.already_done += 1
        elif outcome.kind == "requeued":
            counts.requeued += 1
        self._dirty = True

    @staticmethod
    def shown_path(path: Path, folder: Path) -> str:
        """``path`` relative to ``folder`` (results in a study folder keep it), with "/"."""
        try:
            return path.relative_to(folder).as_posix()
        except ValueError:
            return path.name

    def guard_output(self, what: str, action):
        """Run a write the daemon depends on; turn an OSError into an exit, not a quarantine."""
        try:
            return action()
        except OSError as exc:
            raise OutputError(f"{what}: {exc.strerror or exc}") from None

    # ----------------------------------------------------------------- status

    def write_status(self, state: str, force: bool = False, **extra) -> None:
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
            **extra,
        }
        if self.output is not None:
            status["outbox"] = self.output.status()
        try:
            write_json_atomic(self.config.status_file, status, durable=False)
        except OSError as exc:
            raise OutputError(f"writing the status file {self.config.status_file}: {exc.strerror or exc}") from None
        self._status_written = now
        self._dirty = False

    def exited(self, code: int, reason: str) -> None:
        """Best effort: the status file says the daemon is gone, not ``running`` (the cause may be a full disk)."""
        try:
            self.write_status("exited", force=True, exit_code=code, error=reason)
        except OutputError:
            pass


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents durably (a result inside it must not outlive it in a power cut)."""
    if folder.is_dir():
        return
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError:
            pass
        fsync_dir(each.parent)


def file_into(source: Path, folder: Path, name: str, sha: str | None, first: str | None = None) -> Path:
    """Move ``source`` into ``folder`` under ``first`` or the first free slot of ``name``; never replace a file."""
    make_folder(folder)
    candidates = slot_names(name, sha) if first is None else iter([first, *_first(slot_names(name, sha), 50)])
    for slot in candidates:
        target = folder / slot
        if os.path.lexists(target):
            continue
        try:
            move_no_replace(source, target)
        except FileExistsError:
            continue  # taken between the check and the move: the next slot
        return target
    raise FileExistsError(errno.EEXIST, "no free name", str(folder / name))


def _first(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


def crash_summary(exc: BaseException) -> str:
    """Exception type, message and the innermost frames, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in reversed(frames))
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message} at {where}"


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


def run_watch(config: WatchConfig, log: EventLog | None = None, send=None) -> int:
    """Start-up checks, one model load, the loop; returns the process exit code."""
    log = log or EventLog()
    route_library_output(log)
    daemon: WatchDaemon | None = None
    stop_requested: list[int] = []

    def early_stop(signum, _frame) -> None:  # before the daemon exists (model loading)
        stop_requested.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, early_stop)
    try:
        locks = prepare_folders(config)  # lock descriptors, held open until the process exits
        from edge_birads.classifier import Classifier

        try:
            classifier = Classifier(config.model, threads=config.threads, limits=config.limits)
        except ModelError as exc:
            raise StartupError(str(exc)) from None
    except StartupError as exc:
        log.error(str(exc))
        return EXIT_STARTUP
    output = None
    if send is not None:  # edge_birads.watch.outbox.SendConfig: file (and send) a DICOM SR per result
        from edge_birads.watch.outbox import SrOutput

        output = SrOutput(send, classifier.card, log)
        try:
            output.start()
        except OSError as exc:
            log.error(f"cannot use the outbox {send.outbox}: {exc.strerror or exc}")
            return EXIT_STARTUP
    daemon = WatchDaemon(config, classifier, log, output)
    daemon.locks = locks
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, daemon.request_stop)
    if stop_requested:
        daemon.request_stop(stop_requested[0])
    try:
        return daemon.run()
    except OutputError as exc:
        daemon.claims.uncount()  # not the file's fault: do not count it towards quarantine
        where = put_back(daemon)
        log.error(f"cannot go on: {exc}; {where}; exiting {EXIT_IOERR}")
        daemon.exited(EXIT_IOERR, str(exc))
        return EXIT_IOERR
    except Exception as exc:  # noqa: BLE001  (a bug: report where, keep the file, exit so systemd restarts the service)
        where = put_back(daemon)
        log.error(f"internal error while {daemon.activity.context}: {crash_summary(exc)}; {where}; exiting {EXIT_SOFTWARE}")
        daemon.exited(EXIT_SOFTWARE, crash_summary(exc))
        return EXIT_SOFTWARE
    finally:
        if output is not None:
            output.stop()
        daemon.stop_source()


def put_back(daemon: WatchDaemon) -> str:
    """After a failure, the claimed input back into the inbox; what became of it, for the log line."""
    name = daemon.claims.current
    if name is None or not os.path.lexists(daemon.claims.work_path(name)):
        return "the input stays in the inbox"
    if daemon.return_to_inbox():
        return "the input is back in the inbox"
    return f"the input stays in {daemon.claims.work} and is resumed at the next start"
