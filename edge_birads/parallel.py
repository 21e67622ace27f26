"""``classify --jobs N``: N worker processes, each with its own interpreter, results in input order.

Each worker is a fresh interpreter (``spawn``) whose initializer loads the
:class:`~edge_birads.classifier.Classifier` once; the parent keeps at most a few
files per worker in flight and yields the results strictly in input order, so
the output is the same as one process's (only ``latency_ms`` differs). A bad
file is its own error row, as in one process. A worker that dies (a decoder
crash, the kernel's OOM killer) loses no file and repeats none: the pool is
restarted and the files that were in flight are tried again one at a time; a
file that kills its worker when alone is reported as an error row.
Workers ignore SIGINT from their first instruction (they start with it blocked,
then ignore it): Ctrl-C reaches the parent, which cancels what has not started and returns.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_birads.decode import DEFAULT_LIMITS, DecodeLimits
from edge_birads.errors import printable_name
from edge_birads.heatmap import LesionMap
from edge_birads.interrupts import interrupts_deferred
from edge_birads.results import Result

if TYPE_CHECKING:  # the pool's modules are imported when a pool starts: a one-file classify never needs them
    from concurrent.futures import Future, ProcessPoolExecutor

IN_FLIGHT_PER_JOB = 4  # files queued per worker: enough to keep it busy, few enough to bound the parent's memory
WORKER_DIED = "the worker process reading this file died (a crash in a decoder, or out of memory); not classified"

_classifier = None  # the worker's own Classifier, loaded once by _start_worker


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


FILES_PER_JOB = 4  # below this many files per worker, starting the workers costs more than they save


def default_jobs(paths: Sequence[str], files: int) -> int:
    """One job per usable core when any argument is a folder, else 1 (a single file gains nothing from a pool).

    Never more than one per FILES_PER_JOB files: a folder of two images is done before two workers have started.
    """
    if not any(Path(raw).is_dir() for raw in paths):
        return 1
    return max(1, min(usable_cpus(), files // FILES_PER_JOB))


@dataclass(frozen=True)
class WorkerSettings:
    model: str
    threads: int = 1
    limits: DecodeLimits = DEFAULT_LIMITS
    want_map: bool = False


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (a SIGKILL, the OOM killer): an orphaned worker
    would otherwise wait for work forever, holding its model in memory. Elsewhere a no-op."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the line above
        os._exit(1)


def _start_worker(settings: WorkerSettings) -> None:
    """Pool initializer: ignore Ctrl-C (the parent handles it), die with the parent, one OpenCV thread, the model
    loaded once.

    SIGTERM keeps its default: when a worker dies the pool terminates the others, and one that ignored it could
    wait forever for a queue lock the dead worker held (``watch`` stalled so). systemd stops ``watch`` with
    KillMode=mixed: SIGTERM to the daemon alone, which finishes its batch and closes the pool.
    """
    global _classifier
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    import cv2

    cv2.setNumThreads(1)  # N workers on N cores: OpenCV's own thread pool would only oversubscribe them
    from edge_birads.classifier import Classifier

    _classifier = (Classifier(settings.model, threads=settings.threads, limits=settings.limits), settings.want_map)


def _classify_in_worker(path: str) -> tuple[Result, LesionMap | None]:
    classifier, want_map = _classifier
    if want_map:
        return classifier.explain_file(path)
    return classifier.classify_file(path), None


def classify_bytes_in_worker(item: tuple[bytes, str]) -> tuple[Result, LesionMap | None]:
    """The daemon's task: a file's bytes, read and hashed by the parent, and its name; with ``want_map`` (the daemon's
    heatmap setting) the lesion map of that same model run comes back too."""
    classifier, want_map = _classifier
    data, name = item
    if want_map:
        return classifier.explain_bytes(data, name)
    return classifier.classify_bytes(data, name), None


def item_name(item) -> str:
    """The name a file that killed its worker is reported under: a path, or the name of a (bytes, name) item."""
    return printable_name(item[1] if isinstance(item, tuple) else item)


class ProcessClassifier:
    """Classify many files in ``jobs`` worker processes; ``run`` yields (Result, LesionMap | None) in input order."""

    def __init__(self, settings: WorkerSettings, jobs: int, persistent: bool = False) -> None:
        self.settings = settings
        self.jobs = jobs
        self.persistent = persistent  # keep the workers (and their models) between runs, until close()
        self.pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.settings,),
            )
        return self.pool

    def run(self, files: Sequence, failure, task=None, name=item_name) -> Iterator[tuple[Result, LesionMap | None]]:
        """Results in input order; ``failure(name, reason)`` makes the row of a file that killed its worker.

        ``task(item)`` runs in the worker (default: the worker's Classifier on the file at that path);
        ``name(item)`` is what a file that killed its worker is reported as.
        """
        from concurrent.futures.process import BrokenProcessPool

        self.task = task or _classify_in_worker
        waiting: deque[int] = deque(range(len(files)))  # not yet yielded, in input order
        running: dict[int, Future] = {}
        suspects: set[int] = set()  # in flight when a worker died: now tried one at a time
        window = self.jobs * IN_FLIGHT_PER_JOB
        try:
            while waiting:
                head = waiting[0]
                due = [head] if suspects else list(waiting)[:window]
                if any(index not in running for index in due):
                    self._ready()
                    with interrupts_deferred(block=True):  # every future is in `running` before a Ctrl-C is raised: cancelled below
                        for index in due:
                            if index not in running:
                                running[index] = self._submit(files[index])
                try:
                    outcome = running[head].result()
                except BrokenProcessPool:
                    # Which file killed the worker is unknown: each file in flight is tried again, alone.
                    self._restart()
                    if head in suspects:  # it was alone: it is the one
                        outcome = (failure(name(files[head]), WORKER_DIED), None)
                    else:
                        suspects = set(running)
                        running.clear()
                        continue
                    running.clear()
                suspects.discard(head)
                running.pop(head, None)
                waiting.popleft()
                yield outcome
        finally:
            for future in running.values():
                future.cancel()
            if not self.persistent:
                self.close()

    def _submit(self, item) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        argument = os.fspath(item) if isinstance(item, (str, os.PathLike)) else item
        if self.pool is not None:
            try:
                return self.pool.submit(self.task, argument)
            except BrokenProcessPool:  # a worker died while idle (a pool kept open between runs): new workers
                self._restart()
        return self._pool().submit(self.task, argument)

    def _ready(self) -> None:
        """The pool and multiprocessing's resource tracker running, before ``interrupts_deferred(block=True)``: the tracker
        unblocks SIGINT when it starts (the pool's queues start it), or restarts after it died, and a worker
        started then would have Ctrl-C live."""
        from multiprocessing import resource_tracker

        self._pool()
        resource_tracker.ensure_running()

    def _restart(self) -> None:
        self.restarts += 1
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
