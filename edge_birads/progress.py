"""One progress line on stderr for long runs (classify of a folder, each bench engine).

Drawn only when stderr is a terminal: piped or logged output gets nothing extra. It shows
the count, the rate and the time left, and is erased before other lines are printed to
the same terminal so results and errors never land in the middle of it.
"""

from __future__ import annotations

import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """``update(label, done, total)`` redraws one line: ``label [####....] done/total  rate  time left``."""

    def __init__(self, stream: TextIO, enabled: bool, unit: str = "images") -> None:
        self.stream = stream
        self.enabled = enabled
        self.unit = unit
        self.last = 0.0
        self.started: dict[str, float] = {}
        self.shown = ""

    def line(self, label: str, done: int, total: int, now: float) -> str:
        width = 30
        filled = width * done // max(total, 1)
        elapsed = now - self.started.setdefault(label, now)
        text = f"{label:<16} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if done and elapsed > 0:
            rate = done / elapsed
            text += f"  {rate:.1f} {self.unit}/s  " + (f"{_duration((total - done) / rate)} left" if done < total else f"{_duration(elapsed)} total")
        return text

    def update(self, label: str, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        self.started.setdefault(label, now)
        if not self.enabled or (not force and done < total and now - self.last < 0.1):
            return
        self.last = now
        self.shown = self.line(label, done, total, now)
        self.stream.write("\r\x1b[K" + self.shown)
        if done >= total:
            self.stream.write("\n")
            self.shown = ""
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line (before another line goes to the same terminal); the next update redraws it."""
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = ""
