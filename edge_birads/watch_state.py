"""What the watch daemon remembers across restarts, all of it on disk.

Nothing here lives only in memory, so a crash or power cut at any instant
leaves enough to resume without redoing, losing or double-reporting a file:

* result and failure records carry the input's name and the sha256 of its
  content, at names found by a fixed walk (:func:`find_record`), so a
  restarted daemon recognises a record it wrote just before it died;
* a content index (one small JSON file per sha256) lists every name a
  content was reported under, with the first prediction, so a copy under a
  new name is answered from the index instead of a second model run;
* an in-flight marker names the file being classified, so a file that kills
  the process every time (a decoder crash, an OOM kill) is quarantined after
  a few attempts instead of restarting the service forever.

Memory stays flat: lookups are file-system operations, not a growing dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edge_birads.durable import read_json, safe_base, slot_names, write_json_atomic
from edge_birads.errors import printable_name

RESULT_SUFFIX = ".json"
REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class Lookup:
    """Where an input's record already is (``found``), or the slot to write it to (``free``)."""

    found: Path | None
    free: Path | None
    slot: str | None = None


def find_record(folder: Path, name: str, sha256: str | None, suffix: str, slot_must_be_free: bool = False) -> Lookup:
    """Walk the fixed slot sequence for ``name`` in ``folder``.

    Returns the record of this (name, content) if one exists, else the first
    free slot. Records are matched on their ``identity`` (the content's sha256,
    or an inode-based key for entries that cannot be hashed) and ``file``. ``slot_must_be_free`` also requires the bare slot name to be
    unused (failed/ holds the quarantined file at the slot and its reason
    beside it).
    """
    wanted = printable_name(name)
    for slot in slot_names(name, sha256):
        record_path = folder / (slot + suffix)
        if os.path.lexists(record_path):
            record = read_json(record_path)
            identity = record.get("identity", record.get("sha256")) if record is not None else None
            if record is not None and record.get("file") == wanted and identity == sha256:
                return Lookup(found=record_path, free=None, slot=slot)
            continue
        if slot_must_be_free and os.path.lexists(folder / slot):
            continue
        return Lookup(found=None, free=record_path, slot=slot)
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
class InFlight:
    """The file a previous run was working on when it stopped, and how often that happened."""

    name: str
    sha256: str
    attempts: int


class InFlightMarker:
    """A marker written before classifying and removed after, to catch poison files.

    It is replaced atomically but not fsynced: it only has to survive the
    process dying (kill, segfault, OOM), which keeps the page cache; after a
    power cut, losing one attempt count is harmless.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "inflight.json"
        record = read_json(self.path)
        self.previous: InFlight | None = None
        if record and isinstance(record.get("name"), str) and isinstance(record.get("sha256"), str):
            try:
                self.previous = InFlight(record["name"], record["sha256"], int(record.get("attempts", 1)))
            except (TypeError, ValueError):
                self.previous = None

    def attempts_before(self, name: str, sha256: str) -> int:
        """How many earlier runs died while working on this very file."""
        previous = self.previous
        if previous is not None and previous.name == name and previous.sha256 == sha256:
            return previous.attempts
        return 0

    def mark(self, name: str, sha256: str, attempts: int) -> None:
        write_json_atomic(self.path, {"name": name, "sha256": sha256, "attempts": attempts, "pid": os.getpid()}, durable=False)

    def abandon(self) -> None:
        """Remove the marker without blaming the file (the daemon stops for another reason)."""
        self.previous = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def clear(self, name: str, sha256: str | None) -> None:
        """The file is finished (result, failure or requeue): it did not kill us."""
        previous = self.previous
        if previous is not None and previous.name == name and previous.sha256 == sha256:
            self.previous = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


__all__ = ["REASON_SUFFIX", "RESULT_SUFFIX", "ContentIndex", "InFlightMarker", "Lookup", "find_record", "safe_base"]
