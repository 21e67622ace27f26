"""Knowing when a file in the inbox is complete, and hearing about new ones.

Copies arrive over seconds (a modality over the network, a script, a share),
so a file is handed to the classifier only when it is complete: its size,
mtime and inode have not changed for ``stable_seconds`` on our own clock, or
the writer closed it (inotify IN_CLOSE_WRITE) or renamed it into place and it
has not changed since. Names of copies in flight (dotfiles, ``*.part``,
``*.tmp``...) are not even tracked until they are renamed, which is how DICOM
receivers hand files over.

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

IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".swp")

Signature = tuple


def is_ignored(name: str) -> bool:
    """Names of files still being written by convention; they are renamed when done."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


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
    """The inbox entries not yet processed, with their stability."""

    def __init__(self, inbox: Path, stable_seconds: float, close_write: bool) -> None:
        self.inbox = inbox
        self.stable_seconds = stable_seconds
        self.close_write = close_write
        self.pending: dict[str, Pending] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self.pending)

    def scan(self, now: float) -> None:
        """List the inbox: start tracking new names, stop tracking vanished ones."""
        names = set()
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if not is_ignored(entry.name):
                    names.add(entry.name)
        for name in sorted(names - self.pending.keys()):
            self.touch(name, now)
        for name in list(self.pending.keys() - names):
            del self.pending[name]

    def touch(self, name: str, now: float) -> None:
        """Something happened to ``name``: (re)check it."""
        if is_ignored(name):
            return
        current = probe(self.inbox / name)
        if current is None:
            self.pending.pop(name, None)
            return
        entry = self.pending.get(name)
        if entry is None:
            self._arrivals += 1
            self.pending[name] = Pending(current, now, order=self._arrivals)
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

    def refresh(self, now: float) -> None:
        """Re-stat every tracked entry, so a change restarts its stability clock."""
        for name in list(self.pending):
            self.touch(name, now)

    def ready(self, now: float) -> list[str]:
        """Entries complete by the rules above, in arrival order."""
        done = [
            (entry.order, name)
            for name, entry in self.pending.items()
            if now - entry.since >= self.stable_seconds or (entry.closed is not None and entry.closed == entry.signature)
        ]
        return [name for _, name in sorted(done)]


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

        inbox_text = str(inbox)

        def name_in_inbox(path) -> str | None:
            path = os.fsdecode(path)
            if os.path.dirname(path) != inbox_text:
                return None
            return os.path.basename(path)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                kind = event.event_type
                if kind == "moved":
                    source = name_in_inbox(event.src_path)
                    if source is not None:
                        events.put(("deleted", source))
                    target = name_in_inbox(event.dest_path)
                    if target is not None:
                        events.put(("moved_in", target))
                    return
                name = name_in_inbox(event.src_path)
                if name is not None and kind in ("created", "modified", "closed", "deleted"):
                    events.put((kind, name))

        self.observer = Observer()
        self.observer.daemon = True
        self.observer.schedule(
            Handler(),
            inbox_text,
            recursive=False,
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
