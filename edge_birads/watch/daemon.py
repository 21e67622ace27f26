"""The watch-folder daemon: classify every image that lands in an inbox, exactly once.

For each complete entry in the inbox (see :mod:`edge_birads.watch.inbox`),
:meth:`WatchDaemon.process` does step 1 and :class:`~edge_birads.watch.filing.Filer` the rest, in this order:

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
import os
import queue
import signal
import time
import traceback
from pathlib import Path

from edge_birads import __version__
from edge_birads.durable import rename_no_replace, sweep_temporaries
from edge_birads.errors import ModelError, printable_name
from edge_birads.watch.config import StartupError, WatchConfig, prepare_folders
from edge_birads.parallel import classify_bytes_in_worker, item_name
from edge_birads.watch.filing import Claimed, Filer, Outcome, OutputError, claimed_entries, prune_work
from edge_birads.watch.inbox import EventSource, InboxTracker, probe
from edge_birads.watch.log import EventLog, route_library_output
from edge_birads.watch.state import RESULT_SUFFIX, ClaimMarker, ContentIndex, UnmovableFiles, find_record
from edge_birads.watch.status import StatusFile

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_USAGE = 2  # a setting that cannot work with this model; systemd does not restart (RestartPreventExitStatus=2)
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: a bug; systemd restarts us
EXIT_IOERR = 74  # sysexits EX_IOERR: an output could not be written; systemd restarts us

TICK = 0.2  # how often pending files are re-checked for stability
FILES_PER_WORKER = 2  # --jobs: files taken per worker per batch (their bytes are held until filed)
# A claim that fails with one of these is the file's problem (retried, then skipped), not the daemon's.
UNMOVABLE_ERRORS = (errno.EACCES, errno.EPERM, errno.EBUSY, errno.ETXTBSY)


class WatchDaemon:
    """One inbox, one model, one file at a time: the loop, the inbox's events, and taking files out of it.

    What happens to a file once taken is :class:`~edge_birads.watch.filing.Filer`'s; the counts and the
    heartbeat are :class:`~edge_birads.watch.status.StatusFile`'s.
    """

    def __init__(self, config: WatchConfig, classifier, log: EventLog, output=None, pool=None) -> None:
        self.config = config
        self.pool = pool  # edge_birads.parallel.ProcessClassifier with --jobs N > 1, else None: classified here
        self.output = output  # edge_birads.watch.outbox.SrOutput: a DICOM SR per result, or None
        self.classifier = classifier
        self.log = log
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.tracker = InboxTracker(config.inbox, config.stable_seconds, config.close_write)
        self.index = ContentIndex(config.state / "content")
        self.claims = ClaimMarker(config.state)
        self.unmovable = UnmovableFiles(config.state)
        self.status = StatusFile(config, classifier.sha256)
        self.activity = self.status.activity
        heatmaps = None
        if config.heatmap is not None:
            from edge_birads.watch.heatmaps import HeatmapOutput

            heatmaps = HeatmapOutput(config.heatmap, config.results, classifier, log)
        self.filer = Filer(
            config, classifier, log, self.index, self.claims, self.activity, output,
            on_returned=lambda name: self.tracker.touch(name, time.monotonic()), heatmaps=heatmaps,
        )
        self.stop_signal: int | None = None
        self.source: EventSource | None = None
        self.mode = "poll" if config.poll else "inotify"
        self.scan_interval = config.scan_interval
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
        for folder in (config.results, config.failed, *([config.heatmap] if config.heatmap else [])):  # study sub-folders too
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
            f"done to {config.done}, failed to {config.failed}"
            + (f", heatmaps to {config.heatmap}" if config.heatmap else "")
            + f"; model {self.classifier.card.name} "
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
            step = 1 if self.pool is None else self.pool.jobs * FILES_PER_WORKER
            for start in range(0, len(ready), step):
                if self.stop_signal is not None:
                    break
                if self.pool is None:
                    self.process(ready[start])
                else:
                    self.process_batch(ready[start : start + step])
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
        """Finish what a previous run left in the working folder, before anything new (one file at a time, here)."""
        previous = dict(self.claims.records)
        for name in claimed_entries(self.claims.work):
            shown = printable_name(name)
            record = previous.get(name)
            if record is not None:
                tries = f"attempt {record.attempts} of {self.config.max_attempts}"
                self.log.warning(f"previous run stopped while classifying {shown} ({tries}); resuming")
            else:
                self.log.warning(f"previous run stopped while processing {shown}; resuming")
            self.claims.take(name)
            self.status.account(self.filer.process_claimed(name))
        prune_work(self.claims.work)
        for name, record in previous.items():
            if self.claims.records.get(name) is not record:
                continue
            # Not in the working folder: it is back in the inbox, or was filed just before the stop. Index a
            # result written then, so that a copy of the content under another name does not run the model again.
            lookup = find_record(self.config.results, name, record.sha256, RESULT_SUFFIX)
            if lookup.found is not None:
                result = lookup.record
                self.filer.guard_output(f"indexing {printable_name(name)}", lambda: self.index.add(record.sha256, name, result))
            if lookup.found is not None or not os.path.lexists(self.config.inbox / name):
                self.filer.guard_output("updating the claim record", lambda: self.claims.forget(name))

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
            self.status.account(outcome)
        return outcome

    def process_batch(self, names: list[str]) -> None:
        """``--jobs N``: take up to N x FILES_PER_WORKER entries here, one by one as :meth:`process` does, classify the
        bytes of those that need the model in the N worker processes, then file each here, in order.

        Everything that decides what is recorded (claims, hashes, earlier outcomes, records, moves) stays in this
        process; a worker only turns bytes into a result. A second name for content already in this batch waits
        in the working folder and is filed after it, as a duplicate, as it would be one file at a time.
        """
        claimed: list[Claimed] = []
        later: list[str] = []  # claimed, their content in this batch under another name

        def prepare(name: str) -> Outcome | Claimed | None:
            got = self.filer.prepare(name, frozenset(each.sha256 for each in claimed))
            if got is None:
                later.append(name)
            return got

        for name in names:
            if self.stop_signal is not None:
                break
            outcome = self._take(name, prepare)
            if isinstance(outcome, Claimed):
                claimed.append(outcome)
            elif outcome is not None:
                self.status.account(outcome)
        if claimed:
            restarts = self.pool.restarts
            items = [(c.data, c.name) for c in claimed]
            self.activity.context = f"classifying {len(claimed)} files in {self.pool.jobs} worker processes"
            outcomes = self.pool.run(items, self.classifier.failure, task=classify_bytes_in_worker, name=item_name)
            for each, (result, lesion_map) in zip(claimed, outcomes):  # the map of that same run, with a heatmap folder
                self.status.account(self.filer.finish(each, result, lesion_map))
            if self.pool.restarts > restarts:
                self.log.warning(
                    "a worker process died (a crash in a decoder, or out of memory); the files it shared the batch with "
                    "were classified again, one at a time, in new workers"
                )
        for name in later:
            self.claims.take(name)
            self.status.account(self.filer.process_claimed(name))

    def _take(self, name: str, then=None) -> Outcome | Claimed | None:
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
            self.status.account(self.filer.process_claimed(name))
        self.claims.take(name)
        try:
            if "/" in name:
                self.filer.guard_output("creating a working folder", lambda: work.parent.mkdir(parents=True, exist_ok=True))
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
            self.filer.guard_output("updating the unmovable list", lambda: self.unmovable.forget(name))
        return (then or self.filer.process_claimed)(name)

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
    # ----------------------------------------------------------------- status
    def write_status(self, state: str, force: bool = False, **extra) -> None:
        outbox = self.output.status if self.output is not None else None  # listed only when the status file is due
        try:
            self.status.write(state, self.mode, len(self.tracker), outbox, force, **extra)
        except OSError as exc:
            raise OutputError(f"writing the status file {self.config.status_file}: {exc.strerror or exc}") from None

    def exited(self, code: int, reason: str) -> None:
        """Best effort: the status file says the daemon is gone, not ``running`` (the cause may be a full disk)."""
        try:
            self.write_status("exited", force=True, exit_code=code, error=reason)
        except OutputError:
            pass


def crash_summary(exc: BaseException) -> str:
    """Exception type, message and the innermost frames, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in reversed(frames))
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message} at {where}"


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
        from edge_birads.classifier import Classifier

        try:
            classifier = Classifier(config.model, threads=config.threads, limits=config.limits)
        except ModelError as exc:
            raise StartupError(str(exc)) from None
        if config.heatmap is not None and not classifier.has_lesion_map:  # before any folder is made, as classify
            log.error(f"model {classifier.card.name} has no lesion map: heatmap (--heatmap) needs a model that outputs one")
            return EXIT_USAGE
        locks = prepare_folders(config)  # lock descriptors, held open until the process exits
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
    pool = None
    if config.jobs > 1:
        from edge_birads.parallel import ProcessClassifier, WorkerSettings

        want_map = config.heatmap is not None  # the workers send each lesion map back, for the picture
        settings = WorkerSettings(str(classifier.model_path), config.threads, config.limits, want_map=want_map)
        pool = ProcessClassifier(settings, config.jobs, persistent=True)
    daemon = WatchDaemon(config, classifier, log, output, pool)
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
        if pool is not None:
            pool.close()
        daemon.stop_source()


def put_back(daemon: WatchDaemon) -> str:
    """After a failure, the claimed input back into the inbox; what became of it, for the log line."""
    name = daemon.claims.current
    if name is None or not os.path.lexists(daemon.claims.work_path(name)):
        return "the input stays in the inbox"
    if daemon.filer.return_to_inbox():
        return "the input is back in the inbox"
    return f"the input stays in {daemon.claims.work} and is resumed at the next start"

