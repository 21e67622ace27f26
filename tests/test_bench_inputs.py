"""`edge-birads bench`'s DICOM / JPEG / --jobs sections: every figure present and sane, never its speed."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_bench import model_without_keras_config  # no float engines: only the int8 model runs, quickly

from edge_birads.cli import cli


@pytest.fixture(scope="module")
def report(tmp_path_factory, cbis_dicoms) -> tuple[dict, str]:
    model = model_without_keras_config(tmp_path_factory.mktemp("model"))
    args = ["bench", "--model", str(model), "--n", "2", "--warmup", "0", "--cold-repeats", "2", "--jobs", "2", "--scaling-images", "6"]
    as_json = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    table = CliRunner().invoke(cli, [*args, "--dicom", str(cbis_dicoms[3])])
    assert table.exit_code == 0, table.output
    return json.loads(as_json.stdout), table.stdout


def test_png_dicom_and_large_jpeg_each_have_steady_and_cold_figures(report, cbis_dicoms):
    data, _ = report
    inputs = data["inputs"]
    assert [row["input"].split()[0] for row in inputs] == ["PNG", "DICOM", "JPEG"]
    assert inputs[1]["input"] == "DICOM 2864x4432 16-bit RLE Lossless" and inputs[1]["file"] == str(cbis_dicoms[0])
    assert inputs[2]["input"] == "JPEG 3000x5000"
    for row in inputs:
        assert row["status"] == "ok", row
        assert set(row["steady_ms"]) == {"decode", "preprocess", "inference", "total"}
        assert 0 < row["steady_ms"]["decode"]["p50"] < row["steady_ms"]["total"]["p50"]
        assert 0 < row["cold_process_s"]["min"] <= row["cold_process_s"]["median"]
        assert row["cold_process_peak_rss_mib"]["median"] > 30 and row["cold_process_failures"] == 0 and row["repeats"] == 2
    # Decoding 12.7 Mpixel of RLE takes ~15x as long as a 0.7 Mpixel PNG (3x is the margin for a busy machine) and
    # holds more memory: each row timed its own file.
    assert inputs[1]["steady_ms"]["decode"]["min"] > 3 * inputs[0]["steady_ms"]["decode"]["min"]
    assert inputs[2]["steady_ms"]["decode"]["min"] > 3 * inputs[0]["steady_ms"]["decode"]["min"]
    assert inputs[1]["cold_process_peak_rss_mib"]["median"] > inputs[0]["cold_process_peak_rss_mib"]["median"]


def test_jobs_scaling_rows(report):
    data, _ = report
    scaling = data["scaling"]
    assert scaling["images"] == 6 and [row["jobs"] for row in scaling["rows"]] == [1, 2]
    for row in scaling["rows"]:
        assert row["results"] == 6 and row["exit_status"] == 0
        assert row["images_per_s"] > 0 and row["whole_process_s"] > 0
    assert scaling["rows"][0]["speedup"] == 1.0


def test_the_table_shows_both_sections(report, cbis_dicoms):
    import pydicom

    _, table = report
    given = pydicom.dcmread(cbis_dicoms[3], stop_before_pixels=True)  # the table run was given --dicom
    label = f"DICOM {given.Columns}x{given.Rows} 16-bit RLE Lossless"
    assert re.search(rf"^{label} +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", table, re.M), table
    assert re.search(r"^JPEG 3000x5000 ", table, re.M)
    assert "classify --jobs J over 6 images (2 distinct files)" in table
    assert re.search(r"^ +2 +[\d.]+ +[\d.]+x +[\d.]+s +[\d.]+$", table, re.M), table
