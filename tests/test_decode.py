"""Decoding: formats, bit depths, colour, DICOM, and limits checked before pixels are decoded."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_birads.decode import DecodeLimits, decode_bytes, read_file
from edge_birads.errors import InputError
from edge_birads.headers import header_dimensions


def encode(ext: str, image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp", ".pgm"])
def test_header_dimensions_match_the_encoded_size(ext):
    data = encode(ext, np.zeros((37, 53), np.uint8))
    assert header_dimensions(data) == (53, 37)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp", ".pgm"])
def test_8bit_formats_decode_to_uint8_gray(ext):
    image = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (20, 1))
    out = decode_bytes(encode(ext, image))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image).max() <= (8 if ext == ".jpg" else 0)


def test_16bit_png_keeps_its_values():
    image = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    out = decode_bytes(encode(".png", image))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)


def test_rgb_is_converted_to_gray_not_rejected():
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 1] = 200  # pure green
    out = decode_bytes(encode(".png", bgr))
    assert out.shape == (10, 10)
    assert int(out[0, 0]) == int(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0])


def test_rgba_is_converted():
    bgra = np.full((8, 8, 4), 100, np.uint8)
    assert decode_bytes(encode(".png", bgra)).shape == (8, 8)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the data itself is one short row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_huge_claimed_size_is_refused_before_decoding():
    with pytest.raises(InputError, match="30000x30000 pixels, over the limit"):
        decode_bytes(png_claiming(30000, 30000))


def test_limits_are_configurable():
    data = encode(".png", np.zeros((100, 100), np.uint8))
    with pytest.raises(InputError, match="over the limit"):
        decode_bytes(data, limits=DecodeLimits(max_pixels=5000))
    with pytest.raises(InputError, match=rf"^file is {len(data)} bytes, over the limit of 10 bytes$"):
        decode_bytes(data, limits=DecodeLimits(max_file_bytes=10))


def test_garbage_and_truncation_are_input_errors():
    with pytest.raises(InputError, match="not a readable image"):
        decode_bytes(b"hello, I am a text file")
    with pytest.raises(InputError):
        decode_bytes(encode(".png", np.zeros((64, 64), np.uint8))[:40])
    with pytest.raises(InputError, match="empty"):
        decode_bytes(b"")


def test_read_file_names_the_file(tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("not an image")
    with pytest.raises(InputError) as info:
        read_file(bad)
    assert str(info.value) == f"{bad}: not a readable image (unknown format, or truncated or corrupt)"
    with pytest.raises(InputError, match="is a directory"):
        read_file(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_file(tmp_path / "missing.png")


def test_real_cbis_dicoms_decode_to_full_resolution(cbis_dicoms):
    import pydicom

    for path in cbis_dicoms[:2]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        image = read_file(path)
        assert image.shape == (header.Rows, header.Columns)
        assert image.dtype == np.float32
        assert image.max() > image.min()


def test_dicom_is_recognised_by_magic_without_a_suffix(cbis_dicoms, tmp_path):
    target = tmp_path / "IMG0001"
    target.write_bytes(cbis_dicoms[0].read_bytes())
    assert read_file(target).ndim == 2


def test_non_mammography_dicom_is_refused(cbis_dicoms, tmp_path):
    import pydicom

    dataset = pydicom.dcmread(cbis_dicoms[0])
    dataset.Modality = "CT"
    target = tmp_path / "ct.dcm"
    dataset.save_as(target)
    with pytest.raises(InputError, match="modality is 'CT', not mammography"):
        read_file(target)


def test_monochrome1_is_inverted(cbis_dicoms, tmp_path):
    import pydicom

    dataset = pydicom.dcmread(cbis_dicoms[0])
    normal = read_file(cbis_dicoms[0])
    dataset.PhotometricInterpretation = "MONOCHROME1"
    target = tmp_path / "mono1.dcm"
    dataset.save_as(target)
    inverted = read_file(target)
    np.testing.assert_allclose(inverted, normal.max() + normal.min() - normal)


@pytest.fixture
def never_opened(monkeypatch):
    """Paths that must not be opened by any route (open, io.open, io.FileIO, os.open): the calls made are listed."""
    import builtins
    import io
    import os
    from pathlib import Path

    guarded: set[Path] = set()
    calls: list[str] = []

    def spy(real):
        def opener(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)).resolve() in guarded:
                calls.append(f"{real.__name__}({file})")
                raise AssertionError(f"{file} was opened: an oversize file must be refused from its size alone")
            return real(file, *args, **kwargs)

        return opener

    for module, name in ((builtins, "open"), (io, "open"), (io, "FileIO"), (os, "open")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return guarded, calls


def sparse_file(path, size: int):
    """A file whose stat says ``size`` bytes without the disk holding them."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def test_an_oversize_file_is_refused_before_it_is_opened(tmp_path, never_opened):
    guarded, calls = never_opened
    big = sparse_file(tmp_path / "huge.dcm", 2**30 + 1)  # 1 GiB: twice the default limit
    guarded.add(big.resolve())
    with pytest.raises(InputError) as info:
        read_file(big)
    assert info.value.reason == f"file is 1024.0 MiB ({2**30 + 1} bytes), over the limit of 512.0 MiB ({512 * 2**20} bytes)"
    assert calls == []


def test_classify_refuses_an_oversize_file_unread_and_classifies_the_next(tmp_path, never_opened, example_pngs):
    import json

    from click.testing import CliRunner

    from edge_birads.cli import cli

    guarded, calls = never_opened
    big = sparse_file(tmp_path / "a-big.png", 2 * 2**20 + 1)
    guarded.add(big.resolve())
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--max-file-mb", "2", str(big), str(example_pngs[0])])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[0] == f"error: {big}: file is 2.0 MiB ({2 * 2**20 + 1} bytes), over the limit of 2.0 MiB ({2 * 2**20} bytes)"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["error"] is None for r in records] == [False, True]
    assert calls == []
