"""The scripts RESULTS.md quotes its commands from still run: each loads its imports and answers --help, and the
image maker writes the 1024x1024 PNGs the latency figures are stated for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_each_benchmark_script_imports_and_has_help(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: "), done.stdout[:200]


def test_make_images_writes_the_square_1024_pngs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "make_images.py"), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["cbis-P00173-left-cc-benign-1024.png", "cbis-P00820-left-cc-malignant-1024.png", "synthetic-1024.png"]
    assert {cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED).shape for name in written} == {(1024, 1024)}


def test_dicom_path_reports_wall_and_cpu_time_for_both_variants(cbis_dicoms, tmp_path):
    """The side-by-side DICOM benchmark's figures, on one real DICOM (both variants this commit here)."""
    import json

    out = tmp_path / "dicom-path.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "dicom_path.py"), "--dicom", str(cbis_dicoms[0]), "--before", "HEAD",
                           "--n", "2", "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    variants = json.loads(out.read_text())["variants"]
    assert list(variants) == ["before (HEAD)", "this checkout"]
    for row in variants.values():
        assert 0 < row["steady_cpu_ms_median"] < 10 * row["steady_ms_median"], row
        assert 0 < row["cold_cpu_s_median"] and 0 < row["cold_s_min"] <= row["cold_s_median"], row
        assert row["peak_rss_mib_median"] > 50 and [step["step"] for step in row["steps"]][-1] == "classified (file read again)"
    assert "(CPU" in done.stdout and "peak RSS" in done.stdout
