"""What the watch daemon remembers across restarts, all of it on disk.

Nothing here lives only in memory, so a crash or power cut at any instant
leaves enough to resume without redoing, losing or double-reporting a file:

* result and failure records carry the input's name and the sha256 of its
  content, at names found by a fixed walk (:func:`find_record`), so a
  restarted daemon recognises a record it wrote just before it died;
* a content index (one small JSON file per sha256) lists every name a
  content was reported under, with the first prediction, so a copy under a
  new name is answered from the index instead of a second model run;
* the working folder holds the files taken out of the inbox, so a restart
  finishes them, and a claim marker counts the runs that died classifying
  each, so a file that kills the process every time (a decoder
  crash, an OOM kill) is quarantined after a few attempts instead of
  restarting the service forever;
* files that could not be taken out of the inbox are counted, so one that can
  never be moved is skipped instead of blocking the queue.

Memory stays flat: lookups are file-system operations, not a growing dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_birads.durable import read_json, safe_base, slot_names, write_json_atomic
from edge_birads.errors import printable_name

RESULT_SUFFIX = ".json"
REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class Lookup:
    """Where an input's record already is (``found``, its content in ``record``), or the slot to write it to (``free``)."""

    found: Path | None
    free: Path | None
    slot: str | None = None
    record: dict | None = field(default=None, compare=False, repr=False)


def split_relative(name: str) -> tuple[str, str]:
    """``"study/x.png"`` -> ``("study", "x.png")``; ``"x.png"`` -> ``("", "x.png")``."""
    parent, _, base = name.rpartition("/")
    return parent, base


def find_record(folder: Path, name: str, sha256: str | None, suffix: str, slot_must_be_free: bool = False) -> Lookup:
    """Walk the fixed slot sequence for ``name`` (a path relative to the inbox) in ``folder``.

    Returns the record of this (name, content) if one exists (``found``, and its
    content as read here in ``record``: callers need not read it again), else the first
    free slot. Records are matched on their ``identity`` (the content's sha256,
    or an inode-based key for entries that cannot be hashed) and ``file``. ``slot_must_be_free`` also requires the bare slot name to be
    unused (failed/ holds the quarantined file at the slot and its reason
    beside it). A name in a sub-folder has its records in the same sub-folder
    of ``folder``; ``slot`` is relative to ``folder`` too.
    """
    wanted = printable_name(name)
    parent, base = split_relative(name)
    directory = folder / parent if parent else folder
    for slot in slot_names(base, sha256):
        record_path = directory / (slot + suffix)
        relative_slot = f"{parent}/{slot}" if parent else slot
        if os.path.lexists(record_path):
            record = read_json(record_path)
            identity = record.get("identity", record.get("sha256")) if record is not None else None
            if record is not None and record.get("file") == wanted and identity == sha256:
                return Lookup(found=record_path, free=None, slot=relative_slot, record=record)
            continue
        if slot_must_be_free and os.path.lexists(directory / slot):
            continue
        return Lookup(found=None, free=record_path, slot=relative_slot)
    raise AssertionError("unreachable: slot_names is infinite")


class ContentIndex:
    """sha256 of content -> the names it was reported under and its first prediction."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.json"

    def get(self, sha256: str) -> dict | None:
        entry = read_json(self.path(sha256))
        if entry is None or entry.get("sha256") != sha256 or not isinstance(entry.get("names"), list):
            return None
        return entry

    def add(self, sha256: str, name: str, record: dict) -> None:
        """Record that ``name`` with this content has a result.

        Atomic but not fsynced: the result file itself is durable and is found
        again by :func:`find_record` if a power cut loses this entry; the only
        cost of a lost entry is that a later copy of the content runs the model
        again instead of saying ``duplicate_of``. One fsync pair per image is
        what the daemon pays for durability (fsync takes milliseconds on SD cards).
        """
        entry = self.get(sha256)
        if entry is None:
            entry = {"sha256": sha256, "first": name, "model_sha256": record.get("model_sha256"), "record": record, "names": []}
        if name in entry["names"]:
            return
        entry["names"].append(name)
        write_json_atomic(self.path(sha256), entry, durable=False)


@dataclass(frozen=True)
class Attempt:
    """A file the model was run on, and how many runs died doing so."""

    name: str  # path relative to the inbox
    sha256: str
    attempts: int


class ClaimMarker:
    """The entries taken out of the inbox (``STATE/work/<their relative paths>``) and ``STATE/claim.json``.

    The daemon takes a file out of the inbox by an atomic rename into its
    working folder before reading it, so a sender that re-sends the same name
    meanwhile makes a new arrival instead of changing what is being
    classified. The entry keeps its relative path there, so after a crash or
    power cut the working folder alone says what was claimed and from where;
    nothing has to be written before the rename. ``claim.json`` lists each file
    the model is about to run on (name, sha256, attempt count; one at a time,
    or one per file in flight with ``--jobs``), written just before the model
    runs and the entry removed once the file is filed: it catches a file that
    kills the process every time. It is replaced atomically but not fsynced: it
    has to survive a kill, which keeps the page cache; a power cut loses at most
    one count.

    ``current`` is the entry being handled now; the methods without a name act on it.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "claim.json"
        self.work = state / "work"
        self.current: str | None = None  # the name handled now
        self.counted: set[str] = set()  # names whose attempt this run counted
        self.records: dict[str, Attempt] = {}
        data = read_json(self.path) or {}
        entries = data.get("claims") if isinstance(data.get("claims"), list) else [data]  # one record: the older format
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("sha256"), str):
                try:
                    self.records[entry["name"]] = Attempt(entry["name"], entry["sha256"], int(entry.get("attempts", 1)))
                except (TypeError, ValueError):
                    continue
        self._on_disk = self.path.exists()

    @property
    def record(self) -> Attempt | None:
        """The attempt record of the current entry, if any."""
        return self.records.get(self.current) if self.current is not None else None

    def work_path(self, name: str | None = None) -> Path:
        name = name or self.current
        assert name is not None
        return self.work / name

    def take(self, name: str) -> None:
        """``name`` is (about to be) in the working folder, and handled now."""
        self.current = name

    def attempts_before(self, sha256: str) -> int:
        """How many runs died while classifying these bytes under the current name."""
        record = self.record
        return record.attempts if record is not None and record.sha256 == sha256 else 0

    def classifying(self, sha256: str) -> None:
        """About to run the model on these bytes: one more attempt, should this run die."""
        assert self.current is not None
        self.records[self.current] = Attempt(self.current, sha256, self.attempts_before(sha256) + 1)
        self.counted.add(self.current)
        self._save()

    def uncount(self, name: str | None = None) -> None:
        """The run stops for a reason that is not the file's (an output error): take back the attempt this run
        counted on ``name``, or on every file in flight."""
        names = [name] if name is not None else sorted(self.counted)
        changed = False
        for each in names:
            record = self.records.get(each)
            if each in self.counted and record is not None:
                self.records[each] = Attempt(record.name, record.sha256, record.attempts - 1)
                changed = True
            self.counted.discard(each)
        if changed:
            self._save()

    def returned(self) -> None:
        """The current file went back to the inbox; its attempt count stays, for when it is claimed again."""
        if self.current is not None:
            self.counted.discard(self.current)
        self.current = None

    def clear(self) -> None:
        """The current file is filed away (done/ or failed/): it did not kill us."""
        name, self.current = self.current, None
        if name is not None:
            self.counted.discard(name)
            if self.records.pop(name, None) is not None:
                self._save()

    def forget(self, name: str) -> None:
        """Drop the record of a file that is neither claimed nor waiting in the inbox any more."""
        if self.records.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        if not self.records:
            if self._on_disk:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                self._on_disk = False
            return
        claims = [
            {"name": record.name, "sha256": record.sha256, "attempts": record.attempts, "pid": os.getpid()}
            for record in self.records.values()
        ]
        write_json_atomic(self.path, {"claims": claims}, durable=False)
        self._on_disk = True


class UnmovableFiles:
    """``STATE/unmovable.json``: inbox entries the daemon could not take out of the inbox, and how often.

    A file that cannot be renamed (no permission on it or its folder, an
    immutable file) cannot be claimed, classified or quarantined; it is tried
    again until ``max_attempts`` failures (counted across restarts), then
    skipped while it stays the same, so the files behind it are processed.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "unmovable.json"
        record = read_json(self.path) or {}
        entries = record.get("entries")
        self.entries: dict[str, dict] = entries if isinstance(entries, dict) else {}

    def failed(self, name: str, signature: tuple, reason: str) -> int:
        """Count one more failed attempt on this (name, signature); return the count."""
        entry = self.entries.get(name)
        attempts = entry["attempts"] + 1 if entry is not None and entry.get("signature") == list(signature) else 1
        self.entries[name] = {"signature": list(signature), "attempts": attempts, "reason": reason}
        self._save()
        return attempts

    def attempts(self, name: str, signature: tuple) -> int:
        entry = self.entries.get(name)
        return int(entry["attempts"]) if entry is not None and entry.get("signature") == list(signature) else 0

    def forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, {"entries": self.entries}, durable=False)


__all__ = ["REASON_SUFFIX", "RESULT_SUFFIX", "Attempt", "ClaimMarker", "ContentIndex", "Lookup", "UnmovableFiles", "find_record", "safe_base", "split_relative"]
