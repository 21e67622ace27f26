"""One ``edge-birads bench`` job in a fresh child process (:mod:`edge_birads.bench_worker`), and its figures.

Shared by the engines (:mod:`edge_birads.bench`), the per-input-kind figures (:mod:`edge_birads.bench_inputs`)
and the float baseline (:mod:`edge_birads.bench_baseline`), none of which imports another's internals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_birads.progress import Progress

STAGES = ("decode", "preprocess", "inference", "total")


@dataclass
class EngineResult:
    """One engine's figures, or why it was skipped."""

    name: str
    status: str  # "ok" or "skipped"
    reason: str | None = None
    model: str | None = None
    runtime: str | None = None
    cold_start_s: float | None = None
    peak_rss_mib: float | None = None
    rss_anon_mib: float | None = None  # at the end of the run; see bench_protocol.rss_split_mib
    rss_file_mib: float | None = None
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile of a non-empty list (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timing_stats(samples_ms: list[float]) -> dict[str, float]:
    """p50 / p95 / max (and min: on a shared machine the least-disturbed run) of one stage's times."""
    return {
        "min": round(min(samples_ms), 3),
        "p50": round(percentile(samples_ms, 50), 3),
        "p95": round(percentile(samples_ms, 95), 3),
        "max": round(max(samples_ms), 3),
    }


def child_env() -> dict[str, str]:
    """Environment for the children: this very edge_birads importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    if not any(part in ("site-packages", "dist-packages") for part in Path(root).parts):
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# The float baseline's jobs run from the one module that knows the training framework; the rest from the lean worker.
WORKER_MODULES = {"keras": "edge_birads.bench_baseline", "prepare": "edge_birads.bench_baseline"}


def run_child(job: dict, progress: Progress | None = None, label: str = "") -> tuple[dict | None, float | None, str | None]:
    """Run one worker job in a fresh process: (result, cold start seconds, error reason)."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULES.get(job["kind"], "edge_birads.bench_worker"), json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=child_env(),
        )
        cold = result = error = None
        assert process.stdout is not None
        for line in process.stdout:
            tag, _, payload = line.rstrip("\n").partition(" ")
            if tag == "first":
                cold = time.perf_counter() - started
            elif tag == "progress" and progress is not None:
                progress.update(label, int(payload), job.get("n", 0))
            elif tag == "result":
                result = json.loads(payload)
            elif tag == "error":
                error = payload
        status = process.wait()
        if result is None and error is None:
            stderr.seek(0)
            lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
            error = f"worker exited with status {status}" + (f": {lines[-1]}" if lines else "")
    return result, cold, error


def engine_from_child(name: str, job: dict, progress: Progress) -> EngineResult:
    result, cold, error = run_child(job, progress, name)
    if result is None:
        return EngineResult(name, "skipped", reason=error, model=job.get("model"))
    return EngineResult(
        name,
        "ok",
        model=job["model"],
        runtime=result.get("runtime"),
        cold_start_s=None if cold is None else round(cold, 3),
        peak_rss_mib=result["peak_rss_mib"],
        rss_anon_mib=result.get("rss_end", {}).get("anon_mib"),
        rss_file_mib=result.get("rss_end", {}).get("file_mib"),
        timings_ms={stage: timing_stats(result["samples_ms"][stage]) for stage in STAGES},
    )
