"""`edge-birads bench` on tiny runs: the shape of its table and JSON, never its speed.

Every engine really runs in its own child process here; only the figures are
left unchecked (the machine is shared, timings say nothing in a test).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_birads import DISCLAIMER, bench, bench_baseline, bench_child
from edge_birads.card import card_path_for
from edge_birads.classifier import default_model_path
from edge_birads.cli import cli

ENGINES = ["int8 TFLite", "float32 TFLite", "Keras (TensorFlow)"]
STAT_KEYS = {"min", "p50", "p95", "max"}


def run(*args: str):
    return CliRunner().invoke(cli, ["bench", *args])


def model_without_keras_config(tmp_path):
    """A copy of the bundled model whose card lacks keras_config: no float engines can be built."""
    model = tmp_path / "model.tflite"
    shutil.copyfile(default_model_path(), model)
    card = json.loads(card_path_for(default_model_path()).read_text())
    card.pop("keras_config", None)
    card_path_for(model).write_text(json.dumps(card))
    return model


def check_ok_engine(engine: dict) -> None:
    assert engine["status"] == "ok", engine
    assert set(engine["timings_ms"]) == {"decode", "preprocess", "inference", "total"}
    for stats in engine["timings_ms"].values():
        assert set(stats) == STAT_KEYS
        assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert engine["peak_rss_mib"] > 10  # a whole Python process with numpy and OpenCV
    assert 0 < engine["rss_anon_mib"] < engine["peak_rss_mib"]
    assert engine["cold_start_s"] > 0


@pytest.fixture(scope="module")
def json_report(tmp_path_factory) -> dict:
    """One full run with every engine the environment allows, as JSON."""
    result = CliRunner().invoke(cli, ["bench", "--n", "3", "--warmup", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_report_has_every_key_and_engine(json_report):
    report = json_report
    assert set(report) == {"tool", "version", "disclaimer", "model", "settings", "machine", "paper", "engines", "inputs", "scaling",
                           "ratios", "notes"}  # inputs, scaling: tests/test_bench_inputs.py
    assert report["disclaimer"] == DISCLAIMER
    assert report["paper"] == {"seconds_per_image": 0.12, "rss_mb": 127.0, "baseline_rss_mb": 450.0}
    assert report["settings"]["n"] == 3 and report["settings"]["warmup"] == 1
    assert [engine["name"] for engine in report["engines"]] == ENGINES
    check_ok_engine(report["engines"][0])
    for engine in report["engines"][1:]:
        if engine["status"] == "ok":
            check_ok_engine(engine)
        else:
            assert engine["status"] == "skipped" and engine["reason"], engine
    keras = report["engines"][2]
    ratio = report["ratios"]["baseline_over_int8_peak_rss"]
    assert (ratio is None) == (keras["status"] != "ok")


def test_keras_baseline_runs_when_tensorflow_is_installed(json_report):
    if not bench_baseline.tensorflow_installed():
        pytest.skip("TensorFlow not installed: the Keras baseline is listed as skipped (covered below)")
    engines = {engine["name"]: engine for engine in json_report["engines"]}
    if "keras_config" not in json.loads(card_path_for(default_model_path()).read_text()):
        pytest.skip("the bundled model card has no keras_config")
    check_ok_engine(engines["float32 TFLite"])
    check_ok_engine(engines["Keras (TensorFlow)"])
    # A TensorFlow process is far larger than the lean one: a shape check, not a speed claim.
    assert engines["Keras (TensorFlow)"]["peak_rss_mib"] > engines["int8 TFLite"]["peak_rss_mib"]


def test_table_lists_every_engine_and_the_paper(tmp_path):
    result = run("--n", "3", "--warmup", "0", "--model", str(model_without_keras_config(tmp_path)))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    int8_rows = [line for line in lines if line.startswith("int8 TFLite ")]
    assert len(int8_rows) == 1 and len(int8_rows[0].split()) == 2 + 9, int8_rows
    for name in ENGINES[1:]:
        assert any(line.startswith(name) and "skipped:" in line for line in lines), name
    reason = "keras_config" if bench_baseline.tensorflow_installed() else bench_baseline.NO_TENSORFLOW
    assert any(reason in line for line in lines if line.startswith("float32 TFLite"))
    assert any(line.startswith("paper, lightweight CNN (per inference)") and "120 ms" in line and "127 MB" in line for line in lines)
    assert any(line.startswith("paper, baseline") and "450 MB" in line for line in lines)
    assert any(line.startswith("ratio baseline / int8") for line in lines)
    assert lines[-1] == DISCLAIMER
    # The user's figures and the paper's, no verdict on this project's own targets.
    assert not [line for line in lines if re.search(r"target|missed|\bmet\b", line)], lines
    samples = bench.SAMPLES
    assert f"images: the 2 sample mammograms installed with edge-birads (CBIS-DDSM, CC BY 3.0, see {samples / 'ATTRIBUTION.md'}), repeated" in lines


def test_without_tensorflow_the_float_engines_are_skipped_with_the_reason(tmp_path, monkeypatch, example_pngs):
    monkeypatch.setattr(bench_baseline, "tensorflow_installed", lambda: False)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(example_pngs[0], images / example_pngs[0].name)
    result = run("--n", "2", "--warmup", "0", "--images", str(images), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["settings"]["images"] == [str(images / example_pngs[0].name)]
    check_ok_engine(report["engines"][0])
    for engine in report["engines"][1:]:
        assert engine["status"] == "skipped"
        assert engine["reason"] == bench_baseline.NO_TENSORFLOW
    assert report["ratios"]["baseline_over_int8_p50_total"] is None


def test_an_image_folder_without_images_fails_as_classify_does(tmp_path):
    result = run("--images", str(tmp_path))
    classify = CliRunner().invoke(cli, ["classify", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (classify.exit_code, classify.stderr) == (1, f"Error: no image files found in {tmp_path}\n")


def test_percentiles_match_hand_computed_values():
    assert bench_child.timing_stats([4.0, 1.0, 3.0, 2.0, 5.0]) == {"min": 1.0, "p50": 3.0, "p95": 4.8, "max": 5.0}
    assert bench_child.percentile([7.0], 95) == 7.0


def test_synthetic_image_is_a_1024_png_that_the_runtime_reads(tmp_path):
    from edge_birads.decode import read_file

    image = read_file(bench.synthetic_mammogram(tmp_path / "s.png"))
    assert image.shape == (1024, 1024) and image.dtype.name == "uint8"
    assert 0 < (image > 0).mean() < 1  # a breast-like region on a black background


def test_float_model_without_a_card_borrows_the_int8_card(tmp_path, monkeypatch):
    """--float-model with no card beside it runs with the int8 card and the file's own sha256.

    Any TFLite with the same input and output runs this path; the bundled model stands in for a
    float32 file here so the test needs no TensorFlow.
    """
    monkeypatch.setattr(bench_baseline, "tensorflow_installed", lambda: False)
    other = tmp_path / "other.tflite"
    shutil.copyfile(default_model_path(), other)
    result = run("--n", "2", "--warmup", "0", "--float-model", str(other), "--format", "json")
    assert result.exit_code == 0, result.output
    engines = json.loads(result.output)["engines"]
    check_ok_engine(engines[1])
    assert engines[1]["model"] == str(other)
    assert engines[2]["status"] == "skipped"
    assert not card_path_for(other).exists()  # the borrowed card lives in a temporary folder


def test_an_installed_wheel_benches_its_own_sample_images(tmp_path):
    """`pip install .` then `edge-birads bench`: the wheel carries the two samples and their attribution, and bench uses them."""
    repo = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    shutil.copytree(repo / "edge_birads", source / "edge_birads", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("edge_birads-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"edge_birads/samples/ATTRIBUTION.md", "edge_birads/samples/cbis-P00173-left-cc-benign.png",
            "edge_birads/samples/cbis-P00820-left-cc-malignant.png"} <= names
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    model = model_without_keras_config(tmp_path)  # the int8 engine only: the float ones need TensorFlow and time
    env = {key: value for key, value in __import__("os").environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run_bench = subprocess.run(
        [sys.executable, "-m", "edge_birads", "bench", "--n", "2", "--warmup", "0", "--format", "json", "--model", str(model)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert run_bench.returncode == 0, run_bench.stderr
    report = json.loads(run_bench.stdout)
    samples = site / "edge_birads" / "samples"
    assert report["settings"]["images"] == [str(samples / "cbis-P00173-left-cc-benign.png"), str(samples / "cbis-P00820-left-cc-malignant.png")]
    assert report["settings"]["image_source"].startswith("the 2 sample mammograms installed with edge-birads")
    check_ok_engine(report["engines"][0])


def test_ctrl_c_exits_130_as_classify_does(monkeypatch):
    def interrupted(settings, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_bench", interrupted)
    result = run("--n", "1")
    assert (result.exit_code, result.stdout) == (130, "")
    assert result.stderr == "interrupted: no report (every engine's figures are needed for the comparison).\n"


def made_up_engine(name: str, total_p50: float, inference_p50: float, rss: float, cold: float) -> bench_child.EngineResult:
    stages = {"decode": 1.0, "preprocess": 1.0, "inference": inference_p50, "total": total_p50}
    timings = {stage: {"min": p50, "p50": p50, "p95": p50, "max": p50} for stage, p50 in stages.items()}
    return bench_child.EngineResult(name, "ok", peak_rss_mib=rss, rss_anon_mib=rss / 2, cold_start_s=cold, timings_ms=timings)


def test_ratios_are_the_other_engine_over_int8_from_made_up_timings():
    """Keras 60 ms vs int8 5 ms is 12x, never 0.08x: the ratios and the table say so."""
    engines = [
        made_up_engine("Keras (TensorFlow)", 60.0, 30.0, 500.0, 4.0),  # listed first: ratios go by name, not order
        made_up_engine("int8 TFLite", 5.0, 2.0, 50.0, 0.25),
        made_up_engine("float32 TFLite", 10.0, 8.0, 75.0, 0.5),
    ]
    assert bench.ratios(engines) == {
        "baseline_over_int8_p50_total": 12.0,
        "baseline_over_int8_p50_inference": 15.0,
        "baseline_over_int8_peak_rss": 10.0,
        "baseline_over_int8_cold_start": 16.0,
        "float32_over_int8_p50_total": 2.0,
        "float32_over_int8_p50_inference": 4.0,
        "float32_over_int8_peak_rss": 1.5,
        "float32_over_int8_cold_start": 2.0,
        "paper_baseline_over_lightweight_rss": 3.54,
    }
    report = {
        "version": "test", "model": {"name": "made-up", "sha256": "0" * 64}, "disclaimer": DISCLAIMER, "paper": bench.PAPER,
        "settings": {"n": 1, "warmup": 0, "threads": 1, "image_source": "made-up timings"},
        "machine": {"cpu": "none", "cpus_usable": 1, "python": "3", "load_average": None},
        "engines": [vars(engine) for engine in engines], "ratios": bench.ratios(engines), "notes": [],
    }
    table = bench.format_table(report).splitlines()
    assert [line.split() for line in table if line.startswith("ratio baseline / int8")] == [
        ["ratio", "baseline", "/", "int8", "12.0x", "10.0x", "(paper:", "3.5x", "RAM)"],
        ["ratio", "baseline", "/", "int8,", "inference", "15.0x"],
    ]
