"""``classify --scheduler``: an archive classified on a Dask cluster (the ``[cluster]`` extra).

The work goes to an existing engine, Dask distributed: batches of file paths
(on a filesystem every worker sees at the same path) are tasks; a worker plugin
loads the model once per worker and checks that its sha256 is the client's; the
client keeps a bounded number of batches in flight and writes their results
strictly in input order, so the output is the one-process output (only
``latency_ms`` differs).

- A bad file is its own error row (``Classifier.classify_file`` never raises).
- A worker that dies loses nothing and repeats nothing: Dask reruns the batches
  it held on another worker, and each batch's result is read from its future
  exactly once. A batch Dask gives up on (``KilledWorker`` after its allowed
  failures) becomes one error row per file of the batch.
- Ctrl-C cancels every batch not yet written; what was written is complete.

``--scheduler tcp://HOST:8786`` connects to a running scheduler (dask-jobqueue,
dask-kubernetes, the helm chart, ``dask scheduler``); ``--scheduler local:N``
starts a ``LocalCluster`` of N single-threaded worker processes on this machine.
See docs/cluster.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edge_birads.decode import DEFAULT_LIMITS, DecodeLimits
from edge_birads.errors import ModelError, printable_name
from edge_birads.interrupts import interrupts_deferred
from edge_birads.results import Result

CLUSTER_EXTRA = "pip install 'edge-birads[cluster]'"
ATTRIBUTE = "edge_birads_classifiers"  # on each worker: {plugin name: Classifier}
BATCHES_IN_FLIGHT_PER_THREAD = 3


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ModelError(f"--scheduler needs Dask distributed: {CLUSTER_EXTRA}") from None
    return distributed


def _plugin_base():
    try:
        from distributed import WorkerPlugin
    except ImportError:  # the class below is only instantiated when distributed is installed
        return object
    return WorkerPlugin


class ClassifierPlugin(_plugin_base()):
    """Loads the model once per worker (and again on a restarted one) and checks it is the client's model.

    Its name is the model's sha256 and the settings, registered idempotently: a second run with the same
    model reuses the loaded Classifier; a run with another model or limits gets its own.
    """

    idempotent = True  # registered again with the same name: the workers keep the one they have

    def __init__(self, model: str, sha256: str, threads: int = 1, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self.model, self.sha256, self.threads, self.limits = model, sha256, threads, limits
        settings = hashlib.sha256(repr((threads, limits)).encode()).hexdigest()[:12]
        self.name = f"edge-birads-{sha256[:16]}-{settings}"

    def setup(self, worker) -> None:
        import cv2

        from edge_birads.classifier import Classifier

        cv2.setNumThreads(1)  # one task per worker thread: OpenCV's own pool would oversubscribe the cores
        classifier = Classifier(self.model, threads=self.threads, limits=self.limits)  # the card's own sha256 check
        if classifier.sha256 != self.sha256:
            raise ModelError(
                f"worker {worker.address}: the model at {self.model} has sha256 {classifier.sha256[:12]}..., "
                f"the client's has {self.sha256[:12]}...: workers must see the same model file"
            )
        if not hasattr(worker, ATTRIBUTE):
            setattr(worker, ATTRIBUTE, {})
        getattr(worker, ATTRIBUTE)[self.name] = classifier

    def teardown(self, worker) -> None:
        getattr(worker, ATTRIBUTE, {}).pop(self.name, None)


def classify_batch(batch: list[tuple[str, str]], plugin: str) -> list[Result]:
    """The task: (path to read, name to report) pairs -> their Results, on a worker holding the plugin's model."""
    from distributed import get_worker

    classifier = getattr(get_worker(), ATTRIBUTE, {}).get(plugin)
    if classifier is None:
        raise ModelError("this worker has no edge-birads model loaded (its plugin failed or was removed)")
    return [replace(classifier.classify_file(path), file=name) for path, name in batch]


@dataclass(frozen=True)
class ClusterSettings:
    model: str
    sha256: str
    threads: int = 1
    limits: DecodeLimits = DEFAULT_LIMITS
    batch_size: int = 16


def local_cluster(workers: int):
    """A LocalCluster of single-threaded worker processes bound to 127.0.0.1, without a dashboard."""
    distributed = _distributed()
    return distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=logging.ERROR,
    )


def connect(scheduler: str):
    """(Client, the LocalCluster it started or None) for ``tcp://HOST:PORT`` (any Dask address) or ``local:N``."""
    distributed = _distributed()
    cluster = None
    if scheduler.startswith("local:"):
        cluster = local_cluster(int(scheduler.split(":", 1)[1]))
        return distributed.Client(cluster), cluster
    return distributed.Client(scheduler, timeout="30s"), cluster


def parse_scheduler(value: str) -> str:
    """Checked ``--scheduler`` value: ``local:N`` with N >= 1, or an address with a scheme (tcp://, tls://, ...)."""
    if value.startswith("local:"):
        count = value.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{value!r}: local:N needs a number of workers N >= 1")
        return value
    if "://" not in value:
        raise ValueError(f"{value!r} is not a scheduler address (tcp://HOST:8786) or local:N")
    return value


def register(client, settings: ClusterSettings) -> str:
    """Install the model plugin on every worker, now and on any that joins later (its name returned).

    A worker's failure to load the model is raised here, as a ModelError.
    """
    plugin = ClassifierPlugin(settings.model, settings.sha256, settings.threads, settings.limits)
    try:
        client.register_plugin(plugin, name=plugin.name)
    except ModelError:
        raise
    except Exception as exc:  # the plugin's setup failed on a worker: a missing model file, a bad card, ...
        raise ModelError(f"a worker could not load the model: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    return plugin.name


def classify_on_cluster(client, files: Sequence[str | Path], settings: ClusterSettings, failure) -> Iterator[Result]:
    """Results in input order; ``failure(name, reason)`` makes the rows of a batch the cluster gave up on."""
    plugin = register(client, settings)
    pairs = [(os.path.abspath(os.fspath(path)), printable_name(path)) for path in files]
    batches = [pairs[start : start + settings.batch_size] for start in range(0, len(pairs), settings.batch_size)]
    threads = sum(worker.get("nthreads", 1) for worker in client.scheduler_info()["workers"].values()) or 1
    window = max(2, threads * BATCHES_IN_FLIGHT_PER_THREAD)
    run = uuid.uuid4().hex[:12]
    pending: deque = deque()
    submitted = 0
    try:
        while submitted < len(batches) or pending:
            while submitted < len(batches) and len(pending) < window:
                future = client.submit(classify_batch, batches[submitted], plugin, key=f"edge-birads-{run}-{submitted}", pure=False)
                pending.append((batches[submitted], future))
                submitted += 1
            batch, future = pending.popleft()
            try:
                results = _result(future)
            except ModelError:
                raise
            except Exception as exc:  # KilledWorker (the batch killed its workers), a lost scheduler connection
                reason = f"the cluster could not classify this file's batch ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
                results = [failure(name, reason) for _, name in batch]
            finally:
                future.release()
            yield from results
    finally:
        if pending:
            client.cancel([future for _, future in pending])


def _result(future):
    """``future.result()``, with Ctrl-C landing only in this thread's own short sleeps.

    distributed's blocking waits run on its event-loop thread; a KeyboardInterrupt inside one makes it
    log a NameError traceback from its own cancel callback. So: wait in sleeps until the batch is done,
    then fetch it with SIGINT deferred (a done future's result comes at once) and delivered after.
    """
    pause = 0.001
    while not future.done():
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    with interrupts_deferred():
        return future.result()
