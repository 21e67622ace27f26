"""Knowing when a file in the inbox is complete, and hearing about new ones.

Copies arrive over seconds (a modality over the network, a script, a share),
so a file is handed to the classifier only when it is complete: its size,
mtime and inode have not changed for ``stable_seconds`` on our own clock, or
the writer closed it (inotify IN_CLOSE_WRITE) or renamed it into place and it
has not changed since. Names of copies in flight (dotfiles, ``*.part``,
``*.tmp``...) are not even tracked until they are renamed, which is how DICOM
receivers hand files over.

Senders often export one folder per study: sub-folders are walked (the same
rules apply inside them) and entries are named by their path relative to the
inbox (``study/x.dcm``). A folder named like an image (``scan.png/``) is not a
study folder but an entry, quarantined whole. An empty study folder that has
not changed for ``stable_seconds`` is reported as settled, for removal.

Events come from ``watchdog`` (inotify) in a background thread and are only
queued there; all decisions happen in the daemon's main thread. A periodic
listing of the inbox backs the events up (and replaces them with ``--poll``,
for network shares where inotify sees nothing).
"""

from __future__ import annotations

import os
import queue
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 16  # study folders nested deeper are quarantined whole, not walked
IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".swp")

Signature = tuple


def is_ignored(name: str) -> bool:
    """Names of files still being written by convention; they are renamed when done."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def is_study_folder(name: str) -> bool:
    """A sub-folder to walk; one named like an image file is an entry of its own (quarantined)."""
    from edge_birads.decode import IMAGE_SUFFIXES

    return os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES


def relative_name(inbox: str, path: str) -> str | None:
    """``path`` relative to ``inbox`` with "/" separators; None outside it or under an ignored name."""
    if not path.startswith(inbox + os.sep):
        return None
    parts = path[len(inbox) + 1 :].split(os.sep)
    if any(part == "" or is_ignored(part) for part in parts):
        return None
    return "/".join(parts)


def signature(status: os.stat_result) -> Signature:
    """What must stay the same for a file to count as untouched."""
    return (status.st_size, status.st_mtime_ns, status.st_ino, stat.S_IFMT(status.st_mode))


def probe(path: Path) -> Signature | None:
    """The file's signature; a marker tuple for entries that exist but cannot be stat'ed; None if gone."""
    try:
        return signature(os.stat(path))
    except FileNotFoundError:
        if os.path.lexists(path):
            return ("dangling-symlink",)
        return None
    except OSError as exc:  # a symlink loop, a name too long, permissions on a share
        return ("stat-error", exc.errno)


@dataclass
class Pending:
    """One inbox entry waiting to be complete."""

    signature: Signature
    since: float  # monotonic time this signature was first seen
    closed: Signature | None = None  # signature when the writer closed or renamed it into place
    order: int = 0  # arrival order, so files are processed first come, first served


class InboxTracker:
    """The inbox entries not yet processed, with their stability, keyed by path relative to the inbox."""

    def __init__(self, inbox: Path, stable_seconds: float, close_write: bool) -> None:
        self.inbox = inbox
        self.stable_seconds = stable_seconds
        self.close_write = close_write
        self.pending: dict[str, Pending] = {}
        self.folders: dict[str, Pending] = {}  # study folders, watched for being empty and settled
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self.pending)

    def scan(self, now: float) -> None:
        """List the inbox and its study folders: track new names, stop tracking vanished ones."""
        names: set[str] = set()
        folders: set[str] = set()
        self._walk(self.inbox, "", 0, names, folders)
        for name in sorted(names - self.pending.keys()):
            self.touch(name, now)
        for name in list(self.pending.keys() - names):
            del self.pending[name]
        for name in list(self.folders.keys() - folders):
            del self.folders[name]
        for name in folders:
            self._touch_folder(name, now)

    def _walk(self, folder: Path, prefix: str, depth: int, names: set[str], folders: set[str]) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            if depth == 0:
                raise
            return  # a study folder removed while we listed it
        except PermissionError:
            if depth == 0:
                raise
            names.add(prefix.rstrip("/"))  # an unreadable study folder: an entry to quarantine
            return
        for entry in entries:
            if is_ignored(entry.name):
                continue
            name = prefix + entry.name
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder and is_study_folder(entry.name) and depth < MAX_DEPTH:
                folders.add(name)
                self._walk(Path(entry.path), name + "/", depth + 1, names, folders)
            else:
                names.add(name)

    def touch(self, name: str, now: float) -> None:
        """Something happened to ``name``: (re)check it."""
        if any(is_ignored(part) for part in name.split("/")):
            return
        self._observe(self.pending, name, now)

    def _touch_folder(self, name: str, now: float) -> None:
        self._observe(self.folders, name, now)

    def _observe(self, table: dict[str, Pending], name: str, now: float) -> None:
        """Start tracking ``name`` in ``table``, restart its clock if it changed, drop it if it is gone."""
        current = probe(self.inbox / name)
        if current is None:
            table.pop(name, None)
            return
        entry = table.get(name)
        if entry is None:
            self._arrivals += 1
            table[name] = Pending(current, now, order=self._arrivals)
        elif entry.signature != current:
            entry.signature, entry.since = current, now

    def closed(self, name: str, now: float) -> None:
        """The writer closed ``name`` after writing, or renamed it into the inbox."""
        self.touch(name, now)
        entry = self.pending.get(name)
        if entry is not None and self.close_write:
            entry.closed = entry.signature

    def forget(self, name: str) -> None:
        self.pending.pop(name, None)

    def retry_later(self, name: str, now: float) -> None:
        """Keep ``name`` but make it wait a full stable interval again (after a failed attempt)."""
        entry = self.pending.get(name)
        if entry is not None:
            entry.since, entry.closed = now, None

    def refresh(self, now: float) -> None:
        """Re-stat every tracked entry, so a change restarts its stability clock."""
        for name in list(self.pending):
            self.touch(name, now)
        for name in list(self.folders):
            self._touch_folder(name, now)

    def ready(self, now: float) -> list[str]:
        """Entries complete by the rules above, in arrival order."""
        done = [
            (entry.order, name)
            for name, entry in self.pending.items()
            if now - entry.since >= self.stable_seconds or (entry.closed is not None and entry.closed == entry.signature)
        ]
        return [name for _, name in sorted(done)]

    def settled_folders(self, now: float) -> list[str]:
        """Study folders with nothing tracked inside that have not changed for the stable interval, deepest first."""
        settled = []
        for name, entry in self.folders.items():
            if now - entry.since < self.stable_seconds:
                continue
            inside = name + "/"
            if any(other.startswith(inside) for other in self.pending) or any(other.startswith(inside) for other in self.folders):
                continue
            settled.append(name)
        return sorted(settled, key=lambda name: (-name.count("/"), name))

    def folder_gone(self, name: str) -> None:
        self.folders.pop(name, None)

    def folder_kept(self, name: str, now: float) -> None:
        """A settled folder could not be removed (it holds ignored files): look again after the interval."""
        entry = self.folders.get(name)
        if entry is not None:
            entry.since = now


class EventSource:
    """inotify events from watchdog, queued for the main thread; None if unavailable."""

    def __init__(self, inbox: Path, events: queue.SimpleQueue) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        inbox_text = os.fsdecode(inbox)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                kind = event.event_type
                if event.is_directory:
                    # A study folder created or moved in (with files already in it): list it.
                    if kind in ("created", "moved") and relative_name(inbox_text, os.fsdecode(getattr(event, "dest_path", "") or event.src_path)):
                        events.put(("rescan", ""))
                    return
                if kind == "moved":
                    source = relative_name(inbox_text, os.fsdecode(event.src_path))
                    if source is not None:
                        events.put(("deleted", source))
                    target = relative_name(inbox_text, os.fsdecode(event.dest_path))
                    if target is not None:
                        events.put(("moved_in", target))
                    return
                name = relative_name(inbox_text, os.fsdecode(event.src_path))
                if name is not None and kind in ("created", "modified", "closed", "deleted"):
                    events.put((kind, name))

        self.observer = Observer()
        self.observer.daemon = True
        self.observer.schedule(
            Handler(),
            inbox_text,
            recursive=True,
            event_filter=[
                FileCreatedEvent,
                FileModifiedEvent,
                FileMovedEvent,
                FileClosedEvent,
                FileDeletedEvent,
                DirCreatedEvent,
                DirMovedEvent,
            ],
        )
        self.observer.start()

    def alive(self) -> bool:
        return self.observer.is_alive()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
