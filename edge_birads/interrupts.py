"""Ctrl-C held back for a short critical section, then handled as usual: the one place that defers SIGINT.

A Python-level handler, not only a signal mask: the kernel may hand SIGINT to any thread (OpenCV's, LiteRT's,
a worker pool's), and Python then raises in the main thread at its next step whatever the main thread's mask
says. Handlers always run in the main thread, so the note holds wherever the signal lands.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def interrupts_deferred(block: bool = False):
    """Hold Ctrl-C for the duration: one pressed meanwhile is handled (KeyboardInterrupt) when the block ends.

    ``block``: SIGINT is also blocked in this thread meanwhile. A process started then (``--jobs`` workers start
    inside the pool's ``submit``) inherits the block across exec, so a terminal's Ctrl-C, sent to the whole process
    group, never reaches a worker still importing (a traceback). Start multiprocessing's resource tracker first
    (``ProcessClassifier._ready``): it unblocks SIGINT as it starts.
    """
    pressed: list[int] = []
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:  # None: off the main thread, or a handler not set from Python (left alone)
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if block and hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pressed and callable(previous):
        previous(signal.SIGINT, None)  # Python's own handler raises KeyboardInterrupt
