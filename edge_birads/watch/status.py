"""What the daemon says about itself: counts since it started, the last success and failure, the heartbeat file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_birads import __version__
from edge_birads.durable import write_json_atomic
from edge_birads.errors import printable_name
from edge_birads.watch.config import WatchConfig

STATUS_MIN_INTERVAL = 1.0  # after activity, rewrite the status at most this often


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


@dataclass
class Activity:
    last_success: dict | None = None
    last_failure: dict | None = None
    context: str = "starting"  # what the daemon is doing, for a crash report
    counts: Counts = field(default_factory=Counts)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusFile:
    """The counts and the heartbeat JSON (``--status-file``), rewritten at least every ``heartbeat_seconds``."""

    def __init__(self, config: WatchConfig, model_sha256: str) -> None:
        self.config = config
        self.model_sha256 = model_sha256
        self.activity = Activity()
        self.started_at = utc_now()
        self._written = 0.0
        self._dirty = True

    def account(self, outcome) -> None:
        """Counts and the status file's last success/failure, from one file's outcome."""
        counts = self.activity.counts
        shown = printable_name(outcome.name)
        if outcome.kind in ("classified", "duplicate"):
            if outcome.kind == "classified":
                counts.classified += 1
            else:
                counts.duplicates += 1
            at = outcome.record.get("processed_at") if outcome.record else utc_now()
            result = printable_name(shown_path(outcome.record_path, self.config.results))
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

    def write(self, state: str, mode: str, queue_length: int, outbox: Callable[[], dict] | None = None, force: bool = False, **extra) -> None:
        """The heartbeat file: atomically replaced, not fsynced (it is rewritten constantly); OSError if it cannot be.

        ``outbox`` is asked for its state only when the file is due (it lists a folder).
        """
        now = time.monotonic()
        elapsed = now - self._written
        if not force and elapsed < self.config.heartbeat_seconds and not (self._dirty and elapsed >= STATUS_MIN_INTERVAL):
            return
        status = {
            "state": state,
            "pid": os.getpid(),
            "version": __version__,
            "mode": mode,
            "started_at": self.started_at,
            "updated_at": utc_now(),
            "inbox": str(self.config.inbox),
            "results": str(self.config.results),
            "model_sha256": self.model_sha256,
            "queue_length": queue_length,
            "counts": self.activity.counts.as_dict(),
            "last_success": self.activity.last_success,
            "last_failure": self.activity.last_failure,
            **extra,
        }
        if outbox is not None:
            status["outbox"] = outbox()
        write_json_atomic(self.config.status_file, status, durable=False)
        self._written = now
        self._dirty = False


def shown_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (results in a study folder keep it), with "/"."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name
