"""Per-breast scores in `classify --per-breast`: views paired by DICOM header or by name, mean score, same threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_birads.breasts import name_view, view_of
from edge_birads.cli import cli


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_real_dicoms_pair_into_four_breasts_scored_by_the_mean_of_their_views(cbis_dicoms):
    result = CliRunner().invoke(cli, ["classify", "--per-breast", "--format", "jsonl", *map(str, cbis_dicoms)])
    assert result.exit_code == 0, result.output
    rows = records(result.output)
    images = {r["file"]: r for r in rows if "breast" not in r}
    breasts = [r for r in rows if "breast" in r]
    assert len(images) == 8 and len(breasts) == 4
    for breast in breasts:
        assert len(breast["views"]) == 2 and sorted(breast["view_positions"]) == ["CC", "MLO"]
        # The two views of one breast are one woman's (the package keeps a case per folder) and of one side.
        assert len({Path(v).parent for v in breast["views"]}) == 1
        mean = sum(images[v]["suspicion_score"] for v in breast["views"]) / 2
        assert breast["suspicion_score"] == pytest.approx(mean, abs=1e-6)
        assert breast["referral"] == (breast["suspicion_score"] >= breast["referral_threshold"])
        assert breast["breast"] in ("left breast", "right breast")
    assert sorted(b["breast"] for b in breasts) == ["left breast", "left breast", "right breast", "right breast"]
    # Nothing that names or derives from the patient: CBIS's Patient ID is Mass-Test_P_00173_LEFT_CC.
    assert "P_00" not in result.output and "Mass-Test" not in result.output


def test_names_ending_cc_and_mlo_pair_and_a_lone_or_failed_view_makes_no_breast(tmp_path, example_pngs):
    for name in ("case7_LEFT_CC.png", "case7_LEFT_MLO.png", "case8-cc.png"):
        shutil.copy(example_pngs[1], tmp_path / name)
    (tmp_path / "case9_CC.png").write_bytes(cv2.imencode(".png", np.full((64, 64), 90, np.uint8))[1].tobytes())
    (tmp_path / "case9_MLO.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = CliRunner().invoke(cli, ["classify", "--per-breast", "--format", "jsonl", str(tmp_path)])
    assert result.exit_code == 1  # case9_MLO.png could not be read
    breasts = [r for r in records(result.output) if "breast" in r]
    assert [(b["breast"], [Path(v).name for v in b["views"]]) for b in breasts] == [
        ("case7_LEFT", ["case7_LEFT_CC.png", "case7_LEFT_MLO.png"])
    ]


def test_per_breast_table_section_and_csv_refusal(cbis_dicoms):
    table = CliRunner().invoke(cli, ["classify", "--per-breast", *map(str, cbis_dicoms[:2])])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    at = lines.index("PER BREAST (mean suspicion score of its views):")
    assert lines[at + 1].split(":")[1].strip().startswith("left breast, mean suspicion score")
    refused = CliRunner().invoke(cli, ["classify", "--per-breast", "--format", "csv", str(cbis_dicoms[0])])
    assert refused.exit_code == 2
    assert "--per-breast is not available with --format csv" in refused.output


def test_view_keys_by_name_keep_folders_apart(tmp_path):
    a, b = name_view(tmp_path / "x" / "s1_CC.png"), name_view(tmp_path / "y" / "s1_MLO.png")
    assert a.key != b.key and a.label == b.label == "s1"
    assert name_view(tmp_path / "s1.png") is None
    assert view_of(tmp_path / "s2 MLO.jpeg").view == "MLO"


def test_dicom_views_pair_by_patient_date_and_side_not_by_study(tmp_path, cbis_dicoms):
    """A clinic's exam: one Patient ID and date, L and R, CC and MLO each; every view its own study (as CBIS-DDSM writes them)."""
    import pydicom

    keys = {}
    for i, (side, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]):
        ds = pydicom.dcmread(cbis_dicoms[0], stop_before_pixels=True)
        ds.PatientID, ds.StudyDate, ds.StudyInstanceUID = "CLINIC-4711", "20260101", pydicom.uid.generate_uid()
        ds.ImageLaterality, ds.ViewPosition = side, view
        del ds.Laterality
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        keys[(side, view)] = view_of(path)
    assert keys[("L", "CC")].key == keys[("L", "MLO")].key != keys[("R", "CC")].key == keys[("R", "MLO")].key
    assert [keys[k].view for k in sorted(keys)] == ["CC", "MLO", "CC", "MLO"]
    assert {k.label for k in keys.values()} == {"left breast", "right breast"}
    assert all("4711" not in k.key and "4711" not in k.label for k in keys.values())
