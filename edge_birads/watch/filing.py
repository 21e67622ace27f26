"""One claimed file, from the bytes the daemon read to exactly one record, and the file into done/ or failed/.

This is steps 2-5 of :mod:`edge_birads.watch.daemon`: :class:`Filer` reads the
claimed entry once (``STATE/work/<name>``), hashes those bytes, looks for an
earlier outcome of the same (name, content), reuses the prediction of the same
content under another name, or classifies the bytes; then writes the record
durably and moves the file with a rename that never replaces a file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edge_birads.decode import BROKEN_LINK, decode_key
from edge_birads.durable import fsync_dir, move_no_replace, rename_no_replace, slot_names, write_json_atomic
from edge_birads.errors import InputError, printable_name
from edge_birads.limits import DecodeLimits, check_file_size
from edge_birads.output import describe
from edge_birads.watch.config import WatchConfig
from edge_birads.watch.inbox import is_study_folder
from edge_birads.watch.log import EventLog
from edge_birads.watch.state import REASON_SUFFIX, RESULT_SUFFIX, ClaimMarker, ContentIndex, find_record, split_relative
from edge_birads.watch.status import Activity, shown_path, utc_now


class OutputError(Exception):
    """A record or move the daemon must make could not be made (not the input's fault)."""


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


@dataclass(frozen=True)
class Claimed:
    """A claimed file whose bytes the model is to classify: what was read, and where its result goes."""

    name: str
    sha256: str
    data: bytes = field(repr=False)
    read_at: tuple  # (size, mtime, inode) when read: a file changed after that is not filed
    slot: Path  # the free record slot in results/


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


class Filer:
    """Takes the claimed entry (``claims.current``) to its record and its folder; every write durable first."""

    def __init__(
        self, config: WatchConfig, classifier, log: EventLog, index: ContentIndex, claims: ClaimMarker, activity: Activity,
        output=None, on_returned=None, heatmaps=None,
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.log = log
        self.index = index
        self.claims = claims
        self.activity = activity
        self.output = output  # edge_birads.watch.outbox.SrOutput: a DICOM SR per result, or None
        self.on_returned = on_returned or (lambda name: None)  # a file put back into the inbox (the tracker watches it)
        self.heatmaps = heatmaps  # edge_birads.watch.heatmaps.HeatmapOutput: a lesion-map picture per result, or None

    def process_claimed(self, name: str) -> Outcome:
        """Classify the claimed entry of ``name`` (in the working folder) and file it: the seam of one file."""
        claimed = self.prepare(name)
        if isinstance(claimed, Outcome):
            return claimed
        if self.heatmaps is not None:
            return self.finish(claimed, *self.classifier.explain_bytes(claimed.data, name))
        return self.finish(claimed, self.classifier.classify_bytes(claimed.data, name))

    def prepare(self, name: str, busy: frozenset[str] = frozenset()) -> Outcome | Claimed | None:
        """Steps 2-4 up to the model run: an Outcome when the file is filed without running the model, else its
        bytes and where its record goes (:class:`Claimed`), its attempt counted. None when its content is in
        ``busy`` (being classified under another name): it waits in the working folder, to be a duplicate."""
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
            if self.heatmaps is not None:  # the picture of this name's own record, if the run died before it
                earlier = find_record(config.results, name, sha, RESULT_SUFFIX)
                if earlier.found is not None:
                    self.draw(name, earlier.found, earlier.record, None, data, earlier=True)
            return self.file_done(name, sha, None, "already_done", "already reported by an earlier run (same name and content)")
        result_slot = find_record(config.results, name, sha, RESULT_SUFFIX)
        if result_slot.found is not None:
            record = result_slot.record
            self.guard_output(f"indexing {shown}", lambda: self.index.add(sha, name, record))
            self.report(name, record)
            self.draw(name, result_slot.found, record, None, data, earlier=True)
            note = f"result {printable_name(result_slot.found.name)} was written by an earlier run"
            return self.file_done(name, sha, result_slot.found, "already_done", note, record)
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

        if sha in busy:
            return None

        # 4. Classify the bytes read above (here, or in a worker process with --jobs).
        self.activity.context = f"classifying {shown}"
        self.guard_output("writing the claim record", lambda: self.claims.classifying(sha))
        return Claimed(name, sha, data, read_at, result_slot.free)

    def finish(self, claimed: Claimed, result, lesion_map=None) -> Outcome:
        """Step 5 for a file the model ran on: its ``result`` written durably (then its picture, from ``lesion_map``
        of the same run, with a heatmap folder) and the file into done/, or failed/."""
        config, name, sha = self.config, claimed.name, claimed.sha256
        shown = printable_name(name)
        self.claims.take(name)
        result_slot = claimed.slot
        if self.changed_since_read(self.claims.work_path(name), claimed.read_at):
            return self.requeue(name, sha)
        if not result.ok:
            return self.quarantine(name, sha, result.error or "unknown error")
        record = result.to_dict()
        record.update(file=shown, sha256=sha, duplicate_of=None, processed_at=utc_now())
        self.write_result(name, sha, result_slot, record)
        self.log.info(
            f"{shown}: {describe(record)} ({record['latency_ms']:.0f} ms) -> {printable_name(shown_path(result_slot, config.results))}"
        )
        self.draw(name, result_slot, record, lesion_map, claimed.data)
        self.report(name, record)
        return self.file_done(name, sha, result_slot, "classified", None, record)

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
        self.claims.uncount(name)
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
        self.on_returned(name)
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

    def draw(self, name: str, record_path: Path, record: dict, lesion_map, data: bytes, earlier: bool = False) -> None:
        """The lesion-map picture of a durable record (with a heatmap folder), before the input leaves the working folder."""
        if self.heatmaps is not None:
            what = self.activity.context = f"drawing the heatmap of {printable_name(name)}"
            heatmaps = self.heatmaps
            self.guard_output(what, lambda: heatmaps.after_result(record_path, record, lesion_map, data, name, make_folder, earlier))

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
        return Outcome(name, kind, record, record_path, target)

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
            return Outcome(name, "already_done", lookup.record, record_path, target)
        self.log.warning(f"{shown}: {reason} -> failed/{printable_name(shown_path(target, self.config.failed))}")
        return Outcome(name, "failed", record, record_path, target)

    def guard_output(self, what: str, action):
        """Run a write the daemon depends on; turn an OSError into an exit, not a quarantine."""
        try:
            return action()
        except OSError as exc:
            raise OutputError(f"{what}: {exc.strerror or exc}") from None


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
