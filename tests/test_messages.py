"""The one-line reasons a new user reads: what to install, what a file is not, limits with their units."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import hostile_corpus as corpus
import numpy as np
import pytest
from click.testing import CliRunner

from edge_birads.cli import cli

REPO = Path(__file__).resolve().parent.parent
# What the lean install (`pip install edge-birads`, no [dicom] extra) lacks: pydicom's JPEG / JPEG 2000 decoder
# packages. Pillow is blocked too: the [train] extra brings it in, the lean install does not.
LEAN_INSTALL = "import sys\nfor name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'PIL', 'gdcm'):\n    sys.modules[name] = None\n"


def jpeg_dicom() -> bytes:
    """An 8-bit JPEG baseline mammography DICOM, as many CR/DR exports are."""
    from pydicom import dcmread
    from pydicom.uid import JPEGBaseline8Bit

    image = corpus.breast_image(320, 256, depth=8)
    data = corpus.dicom_bytes(image, pixel_bytes=corpus.encode(".jpg", image), transfer_syntax=JPEGBaseline8Bit)
    dataset = dcmread(io.BytesIO(data))
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def jpeg2000_dicom() -> bytes:
    from pydicom.uid import JPEG2000Lossless

    image = corpus.breast_image(320, 256, depth=16)
    try:
        jp2 = corpus.encode(".jp2", image)
    except (RuntimeError, Exception):
        pytest.skip("this OpenCV cannot write JPEG 2000")
    codestream = jp2[jp2.index(b"\xff\x4f\xff\x51") :]
    return corpus.dicom_bytes(image, pixel_bytes=codestream, transfer_syntax=JPEG2000Lossless)


@pytest.mark.parametrize(
    "make, syntax",
    [(jpeg_dicom, "JPEG Baseline (Process 1)"), (jpeg2000_dicom, "JPEG 2000 Image Compression (Lossless Only)")],
    ids=["jpeg", "jpeg2000"],
)
def test_a_compressed_dicom_on_the_lean_install_names_the_extra_in_full(tmp_path, make, syntax):
    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(make())
    with_extra = CliRunner().invoke(cli, ["classify", "--format", "jsonl", str(dicom)])
    assert with_extra.exit_code == 0, with_extra.output  # the [dicom] extra (installed here) decodes it
    code = LEAN_INSTALL + f"from edge_birads.cli import main\nsys.argv = ['edge-birads', 'classify', '--format', 'jsonl', {str(dicom)!r}]\nmain()\n"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    lean = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert lean.returncode == 1
    assert lean.stderr.splitlines()[0] == (
        f"error: {dicom}: cannot decode DICOM pixel data compressed as {syntax}: the decoders are not installed "
        "(pip install 'edge-birads[dicom]')"
    )


@pytest.mark.parametrize("content", [b"hello, this is not DICOM at all\n", bytes(range(256)) * 4, b"\0" * 300], ids=["text", "bytes", "zeros"])
def test_a_file_named_dcm_that_is_not_dicom_says_so(tmp_path, content):
    fake = tmp_path / "scan.dcm"
    fake.write_bytes(content)
    result = CliRunner().invoke(cli, ["classify", str(fake)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {fake}: not a DICOM file (no DICM marker and no DICOM image elements)"


def test_a_real_dicom_without_pixels_is_still_called_dicom(tmp_path):
    no_pixels = tmp_path / "no-pixels.dcm"
    no_pixels.write_bytes(corpus.dicom_bytes(None))
    result = CliRunner().invoke(cli, ["classify", str(no_pixels)])
    assert result.stderr.splitlines()[0] == f"error: {no_pixels}: DICOM file has no pixel data"


def test_the_file_size_limit_carries_its_units(tmp_path):
    image = tmp_path / "big.png"
    image.write_bytes(corpus.encode(".png", np.random.default_rng(0).integers(0, 256, (400, 300), dtype=np.uint8)))
    size = image.stat().st_size
    assert size > 100 * 1024
    result = CliRunner().invoke(cli, ["classify", "--max-file-mb", "0.01", str(image)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"error: {image}: file is {size / 1024:.1f} KiB ({size} bytes), over the limit of 10.2 KiB (10485 bytes)"
    )
    result = CliRunner().invoke(cli, ["classify", "--max-file-mb", "0.0001", str(image)])
    assert result.stderr.splitlines()[0].endswith("over the limit of 104 bytes")
