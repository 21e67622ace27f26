"""The line protocol between ``edge-birads bench`` and its child processes, and the timed loop they share.

A child prints ``first {...}`` as soon as the first image has a result (cold start ends there),
``progress I`` after each timed image, ``result {...}`` when done and ``error MESSAGE`` when its
engine cannot run. The lean worker (:mod:`edge_birads.bench_worker`) and the float baseline
(:mod:`edge_birads.bench_baseline`) both serve their jobs through :func:`serve`.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from typing import Any

STAGES = ("decode", "preprocess", "inference", "total")


def emit(tag: str, payload: Any = None) -> None:
    """One protocol line on stdout, flushed at once so the parent can time it."""
    line = tag if payload is None else f"{tag} {payload if isinstance(payload, str) else json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def peak_rss_mib() -> float:
    """This process's own peak resident set size, in MiB.

    Linux: VmHWM from /proc/self/status, the high-water mark of this process's
    own memory map. Not ru_maxrss: after fork+exec that also carries the
    parent's RSS at spawn time, so a large parent would inflate a small child.
    Elsewhere ru_maxrss (bytes on macOS, KiB on other systems).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def rss_split_mib() -> dict[str, float]:
    """Current RSS split: anonymous (the process's own; never evicted without swap) and file-backed.

    File-backed pages (shared libraries, a mapped model) are clean and can be
    reclaimed under memory pressure, which makes the peak of a process with a
    large library (a training framework) vary with what else runs on the machine.
    """
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile"):
                    out["anon_mib" if key == "RssAnon" else "file_mib"] = round(int(line.split()[1]) / 1024.0, 2)
    except (OSError, ValueError, IndexError):
        pass
    return out


def timed_loop(job: dict, classify_one: Callable[[str], tuple[float, float, float]]) -> dict:
    """Cold first image, then warm-up, then ``n`` timed images cycling through the list.

    ``classify_one(path)`` returns (decode, preprocess, inference) seconds.
    """
    images = job["images"]
    classify_one(images[0])
    emit("first", {"peak_rss_mib": round(peak_rss_mib(), 2)})
    for i in range(job["warmup"]):
        classify_one(images[(i + 1) % len(images)])
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(job["n"]):
        decode, preprocess, inference = classify_one(images[(job["warmup"] + 1 + i) % len(images)])
        for stage, seconds in zip(STAGES, (decode, preprocess, inference, decode + preprocess + inference)):
            samples[stage].append(round(seconds * 1000.0, 4))
        emit("progress", str(i + 1))
    return {"samples_ms": samples, "peak_rss_mib": round(peak_rss_mib(), 2), "rss_end": rss_split_mib()}


class WorkerError(Exception):
    """An engine that cannot run; reported to the parent as one line."""


def serve(jobs: dict[str, Callable[[dict], dict]], argv: list[str] | None = None) -> int:
    """Run the job in ``argv[0]`` (JSON) with ``jobs[kind]`` and report it on stdout as line records."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])
    try:
        result = jobs[job["kind"]](job)
    except WorkerError as exc:
        emit("error", " ".join(str(exc).split()))
        return 3
    except ImportError as exc:
        emit("error", f"cannot import {exc.name or exc}")
        return 3
    emit("result", result)
    return 0
