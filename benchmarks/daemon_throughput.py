"""Throughput and memory of `edge-birads watch` over a few thousand images.

    python benchmarks/daemon_throughput.py                # 5,000 synthetic 256x256 PNGs, inotify
    python benchmarks/daemon_throughput.py --poll --n 2000 --size 512
    python benchmarks/daemon_throughput.py --n 400 --size 1024 --jobs 2   # watch --jobs 2 (RSS: daemon + workers)

Writes N synthetic mammogram-like PNGs (unique content, so every one is a model run) into a fresh inbox,
starts the daemon as a child process, samples its RSS from /proc (psutil) every 0.1 s until every image
has a record, then stops it with SIGTERM. Prints images/s (first to last result, and wall time from
process start), peak RSS, RSS after start-up, steady RSS (median over the second half of the run) and the
drift between 10% and 100% of the images, plus the per-image model latency from the result records, so
the difference to the wall time per image shows what the durable writes (fsync) cost. Figures only:
nothing here asserts a target. Needs psutil (a runtime dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def synthetic_mammogram(seed: int, size: int) -> bytes:
    """A bright half-ellipse with texture on black, unique per seed, as PNG bytes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    centre = (0, size // 2 + int(rng.integers(-size // 10, size // 10)))
    axes = (int(size * rng.uniform(0.5, 0.8)), int(size * rng.uniform(0.35, 0.45)))
    cv2.ellipse(image, centre, axes, 0, -90, 90, int(rng.integers(120, 200)), thickness=-1)
    texture = cv2.GaussianBlur(rng.integers(0, 60, image.shape, dtype=np.uint8), (5, 5), 0)
    image = np.where(image > 0, cv2.add(image, texture), 0).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="number of images [5000]")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels [256]")
    parser.add_argument("--poll", action="store_true", help="run the daemon with --poll")
    parser.add_argument(
        "--stream", action="store_true", help="deliver the images while the daemon runs (50 every 0.2 s) instead of before"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="watch --jobs: worker processes classifying [1]")
    parser.add_argument("--model", default=None, help="a .tflite with its card; default: the bundled model")
    parser.add_argument("--workdir", default=None, help="where to make the folders [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the folders afterwards")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    args = parser.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="eb-daemon-bench-"))
    inbox, results = work / "inbox", work / "results"
    inbox.mkdir(parents=True, exist_ok=False)
    images = [synthetic_mammogram(i, args.size) for i in range(args.n)]
    total_bytes = sum(len(data) for data in images)

    def deliver(start: int, stop: int) -> None:
        for i in range(start, stop):  # the way receivers hand files over: NAME.part, then rename
            part = inbox / f"img-{i:05d}.png.part"
            part.write_bytes(images[i])
            os.rename(part, inbox / f"img-{i:05d}.png")

    if not args.stream:
        print(f"writing {args.n} synthetic {args.size}x{args.size} PNGs to {inbox}", file=sys.stderr)
        deliver(0, args.n)

    cmd = [
        sys.executable,
        "-m",
        "edge_birads",
        "watch",
        str(inbox),
        "--results",
        str(results),
        "--stable-seconds",
        "0.5",
        "--heartbeat-seconds",
        "1",
        "--threads",
        str(args.threads),
        "--jobs",
        str(args.jobs),
    ]
    if args.stream:
        cmd.append("--inotify")
    if args.poll:
        cmd.append("--poll")
    if args.model:
        cmd += ["--model", args.model]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_path = work / "daemon.log"
    status_path = results / ".edge-birads" / "status.json"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    process = psutil.Process(proc.pid)
    if args.stream:  # images keep arriving while the daemon runs: the queue stays short, memory must stay flat
        feeder = threading.Thread(
            target=lambda: [deliver(k, min(k + 50, args.n)) or time.sleep(0.2) for k in range(0, args.n, 50)], daemon=True
        )
        feeder.start()
    samples: list[tuple[float, int, int]] = []  # (seconds since start, rss bytes, records so far)
    startup_rss = None
    finished = 0
    try:
        while True:
            now = time.monotonic() - started
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}; log: {log_path}")
            rss = process.memory_info().rss
            for child in process.children(recursive=True):  # --jobs: the worker processes (and their resource tracker)
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            status = read_status(status_path)
            if status is not None:
                counts = status["counts"]
                finished = counts["classified"] + counts["duplicates"] + counts["failed"] + counts["already_done"]
                if startup_rss is None:
                    startup_rss = rss
            samples.append((now, rss, finished))
            if status is not None and finished >= args.n and status["queue_length"] == 0:
                break
            if now > args.timeout:
                raise SystemExit(f"timed out after {args.timeout:.0f} s with {finished} of {args.n} done")
            time.sleep(0.1)
        wall = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()

    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    latencies = sorted(r["latency_ms"] for r in records if r.get("latency_ms") is not None)
    done_times = [t for t, _, n in samples if n > 0]
    first_result = done_times[0] if done_times else wall
    active = max(wall - first_result, 1e-9)
    second_half = [rss for t, rss, n in samples if n >= args.n / 2]
    at_10 = next((rss for _, rss, n in samples if n >= args.n / 10), None)
    figures = {
        "images": args.n,
        "image_size": args.size,
        "input_mib": round(total_bytes / MIB, 1),
        "mode": "poll" if args.poll else "inotify",
        "delivery": "streamed, 50 every 0.2 s" if args.stream else "all in the inbox before start",
        "threads": args.threads,
        "jobs": args.jobs,
        "results": len(records),
        "failures": len(list((work / "failed").glob("*.reason.json"))) if (work / "failed").exists() else 0,
        "exit_code_after_sigterm": code,
        "wall_s": round(wall, 2),
        "images_per_s_wall": round(args.n / wall, 1),
        "images_per_s_processing": round(args.n / active, 1),
        "ms_per_image_processing": round(1000 * active / args.n, 2),
        "model_latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
        "model_latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
        "rss_mib_after_startup": round(startup_rss / MIB, 1) if startup_rss else None,
        "rss_mib_peak": round(max(rss for _, rss, _ in samples) / MIB, 1),
        "rss_mib_steady_median_2nd_half": round(statistics.median(second_half) / MIB, 1) if second_half else None,
        "rss_mib_at_10pct": round(at_10 / MIB, 1) if at_10 else None,
        "rss_mib_at_100pct": round(samples[-1][1] / MIB, 1),
        "rss_samples": len(samples),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(cmd[1:]),
    }
    print(
        f"edge-birads watch: {args.n} images ({args.size}x{args.size} PNG, {figures['input_mib']} MiB), {figures['mode']}, "
        f"threads {args.threads}, jobs {args.jobs}, {figures['delivery']}"
    )
    print(f"  records: {figures['results']} results, {figures['failures']} failures; exit code after SIGTERM: {code}")
    print(
        f"  throughput: {figures['images_per_s_processing']} images/s first-to-last result "
        f"({figures['ms_per_image_processing']} ms/image); {figures['images_per_s_wall']} images/s including start-up"
    )
    print(
        f"  model latency per image (decode+preprocess+inference): p50 {figures['model_latency_ms_p50']} ms, "
        f"p95 {figures['model_latency_ms_p95']} ms; the rest is hashing, fsync'd result writes and moves"
    )
    print(
        f"  RSS: {figures['rss_mib_after_startup']} MiB after start-up, peak {figures['rss_mib_peak']} MiB, "
        f"steady {figures['rss_mib_steady_median_2nd_half']} MiB (median, 2nd half); "
        f"{figures['rss_mib_at_10pct']} MiB at 10% -> {figures['rss_mib_at_100pct']} MiB at 100%"
    )
    if args.json:
        print(json.dumps(figures))
    if args.keep or args.workdir:
        print(f"folders kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if code == 0 and figures["results"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
