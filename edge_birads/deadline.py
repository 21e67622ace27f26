"""A per-file time limit without threads or child processes.

Why SIGALRM: a thread cannot stop another thread in CPython, and a child
process per file costs a fork and a model-free copy on a Raspberry Pi. An
interval timer in the main thread raises :class:`InputTimeout` in the code
that is running when it fires, and the error becomes that file's one line.

Its limit, stated plainly: Python runs signal handlers between bytecodes, so
a single long C call (one ``cv2.imdecode``, one pixel decoder) finishes
before the error is raised. Those calls are bounded by the pixel and file
size limits checked before decoding, which is what keeps them short; the
timer catches the Python-level loops (pydicom's parsing and LUTs, our own
code) that the size limits do not bound. Off the main thread, or where
``setitimer`` does not exist (Windows), the limit is not enforced.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from edge_birads.errors import InputTimeout


def can_enforce() -> bool:
    """True when a time limit set here would actually fire."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise InputTimeout if the block runs longer than ``seconds`` (None or <= 0: no limit).

    If library code swallows the exception raised by the handler (a broad
    ``except Exception`` that tries another decoder), the block is still
    failed when it ends, so a timeout is never silently lost.
    """
    if not seconds or seconds <= 0 or not can_enforce():
        yield
        return
    fired = False
    message = f"took longer than the per-file time limit of {seconds:g} s"

    def on_alarm(signum, frame):  # noqa: ARG001 - the signal handler signature
        nonlocal fired
        fired = True
        raise InputTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
    if fired:
        raise InputTimeout(message)
