"""The README's picture of a structured report is what dcmdump shows for a report built now."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_readme_sr_excerpt_is_current(cbis_dicoms):
    pytest.importorskip("highdicom", reason="the DICOM node needs pip install 'edge-birads[node]'")
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump not found: apt-get install dcmtk (.ci/run installs it)")
    sys.path.insert(0, str(REPO / "tools"))
    import pydicom
    from sr_excerpt import rendered, source_image

    text = rendered()
    source = pydicom.dcmread(source_image(), stop_before_pixels=True)
    assert "Research use only, not a diagnostic device" in text
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SOPInstanceUID", "StudyDate"):
        assert str(source.get(keyword)) not in text, keyword
    assert text in (REPO / "README.md").read_text(encoding="utf-8"), "README is stale: python tools/sr_excerpt.py"
