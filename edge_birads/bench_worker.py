"""The child process of ``edge-birads bench``: one engine, one fresh process.

Each engine runs in its own interpreter process so that its peak RSS and cold
start are those of a fresh classify process, not inflated by another engine
(a training framework alone is hundreds of MiB). The parent starts
``python -m edge_birads.bench_worker JOB_JSON`` and reads line records from
stdout:

- ``first {...}``     as soon as the first image has a result (cold start ends here),
- ``progress I``      after each timed image,
- ``result {...}``    timings and peak RSS when done,
- ``error MESSAGE``   when the engine cannot run (the parent lists it as skipped).

Nothing heavy is imported at module level: the int8 and float TFLite jobs
import exactly what ``edge-birads classify`` imports. The float baseline's
jobs (the Keras model, and building it) run in the same protocol from
:mod:`edge_birads.bench_baseline`, the one module that knows the training
framework.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edge_birads.bench_protocol import WorkerError, serve, timed_loop


def run_tflite(job: dict) -> dict:
    """int8 or float32 TFLite through the lean runtime, exactly as classify runs it."""
    import edge_birads.cli  # noqa: F401  (a classify process has the CLI loaded too)
    from edge_birads.classifier import Classifier, to_prediction
    from edge_birads.decode import decode_bytes, is_dicom, model_input, read_input
    from edge_birads.errors import InputError, ModelError
    from edge_birads.preprocess import prepare

    try:
        classifier = Classifier(job["model"], threads=job["threads"])
    except ModelError as exc:
        raise WorkerError(str(exc)) from None
    spec = classifier.card.preprocessing

    def classify_one(path: str) -> tuple[float, float, float]:
        # As Classifier.classify_file reads it: a DICOM through decode.model_input, decoded and shrunk in one
        # step (the byte-plane path has no full-size image to time apart: its preprocessing counts as decode).
        suffix = Path(path).suffix.lower()
        t0 = time.perf_counter()
        try:
            data = read_input(path, classifier.limits)
            if is_dicom(data, suffix, classifier.limits):
                tensor = model_input(data, spec, suffix, classifier.limits)
                t1 = t2 = time.perf_counter()
            else:
                image = decode_bytes(data, suffix, classifier.limits, for_model=True)
                t1 = time.perf_counter()
                tensor = prepare(image, spec)
                t2 = time.perf_counter()
        except InputError as exc:
            raise WorkerError(str(exc.with_path(path))) from None
        to_prediction(classifier.predict(tensor), classifier.card)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    result = timed_loop(job, classify_one)
    result["runtime"] = classifier.runtime
    return result


JOBS = {"tflite": run_tflite}


def main(argv: list[str] | None = None) -> int:
    return serve(JOBS, argv)


if __name__ == "__main__":
    sys.exit(main())
