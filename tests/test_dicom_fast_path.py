"""The fast DICOM path (issue 16) shows the model the same picture as the previous one.

The previous path, kept here verbatim as the reference: pydicom's default decoder, ``apply_modality_lut``
then ``apply_voi_lut`` on the full image in float, float32, MONOCHROME1 inverted, then ``prepare``. The new
path (what ``Classifier`` reads): the fastest installed decoder, the LUTs as one table looked up on the
integers, scaled onto uint16, resized as integers by ``prepare``. They must agree within one int8 input step
on every pixel, and the bundled model's probabilities within the golden test's tolerance, on the 8 real
CBIS-DDSM DICOMs and on pydicom-written files with each display-pipeline element.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_birads import dicom
from edge_birads.classifier import Classifier
from edge_birads.decode import DEFAULT_LIMITS, model_input, read_file
from edge_birads.errors import InputError
from edge_birads.interpreter import quantize, tensor_quantization
from edge_birads.preprocess import PreprocessSpec, prepare

pydicom = pytest.importorskip("pydicom")


def previous_model_input(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The pre-issue-16 DICOM path, self-contained: full-size float LUTs, then prepare()."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="pydicom" if ds.file_meta.TransferSyntaxUID.is_compressed else "")
    values = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), dtype=np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() + values.min() - values
    return prepare(values, spec)


def current_model_input(path: Path, spec: PreprocessSpec) -> np.ndarray:
    return prepare(read_file(path, for_model=True), spec)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


def int8_input(classifier: Classifier, tensor: np.ndarray) -> np.ndarray:
    detail = classifier.interpreter.get_input_details()[0]
    scale, zero_point = tensor_quantization(detail)
    return quantize(tensor, scale, zero_point, detail["dtype"]).astype(np.int32)


def assert_same_picture(classifier: Classifier, path: Path, spec: PreprocessSpec) -> tuple[float, int]:
    before, after = previous_model_input(path, spec), current_model_input(path, spec)
    assert after.shape == before.shape and after.dtype == np.float32
    largest = float(np.abs(after - before).max())
    assert largest <= 0.5 / 255, (path.name, spec, largest)
    steps = int(np.abs(int8_input(classifier, after) - int8_input(classifier, before)).max())
    assert steps <= 1, (path.name, spec, steps)
    return largest, steps


CROPPED = PreprocessSpec(crop_to_breast=True)


def test_real_cbis_dicoms_same_model_input_and_probabilities(cbis_dicoms, classifier):
    step = classifier.interpreter.get_output_details()[0]["quantization"][0] or 1e-6
    spec = classifier.card.preprocessing
    for path in cbis_dicoms:
        assert_same_picture(classifier, path, spec)
        before = classifier.predict(previous_model_input(path, spec))
        after = classifier.classify_file(path)
        assert after.error is None, after.error
        for label, p in zip(classifier.card.labels, before / before.sum()):
            assert after.prediction.probabilities[label] == pytest.approx(float(p), abs=1.5 * step), (path.name, label)


def test_real_cbis_dicoms_cropped_to_the_breast(cbis_dicoms, classifier):
    for path in cbis_dicoms:
        assert_same_picture(classifier, path, CROPPED)


def test_the_fast_rle_decoder_is_used_and_gives_pydicoms_integers(cbis_dicoms, monkeypatch):
    assert dicom.plugin_available("1.2.840.10008.1.2.5", "pylibjpeg"), "pylibjpeg-rle is in the [dicom] extra"
    from pydicom.pixels.decoders import pylibjpeg as plugin

    used = []
    real = plugin._decode_frame
    monkeypatch.setattr(plugin, "_decode_frame", lambda src, runner: used.append(1) or real(src, runner))
    # The decoder plugin registry keeps its own reference: patch what it calls through, in a copy of the
    # registry (deleting and restoring an entry would move pylibjpeg after pydicom for the tests that follow).
    from pydicom.pixels.decoders import RLELosslessDecoder

    monkeypatch.setattr(RLELosslessDecoder, "_available", dict(RLELosslessDecoder._available))
    monkeypatch.setitem(RLELosslessDecoder._available, "pylibjpeg", plugin._decode_frame)
    fast = read_file(cbis_dicoms[0], for_model=True)
    assert used, "the RLE DICOM was not decoded by pylibjpeg-rle"
    used.clear()
    monkeypatch.delitem(RLELosslessDecoder._available, "pylibjpeg")  # as without pylibjpeg-rle: pydicom's own decoder
    assert not dicom.plugin_available("1.2.840.10008.1.2.5", "pylibjpeg")
    slow = read_file(cbis_dicoms[0], for_model=True)
    assert not used
    np.testing.assert_array_equal(fast, slow)
    header = pydicom.dcmread(cbis_dicoms[0], stop_before_pixels=True)
    assert fast.dtype == np.uint16 and fast.shape == (header.Rows, header.Columns)


def ramp_with_texture(rows: int = 900, columns: int = 700, top: int = 4095, signed: bool = False) -> np.ndarray:
    """A 12-bit ramp with texture and a bright disc: a window cuts it, a resize averages it."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:rows, 0:columns]
    image = (x + y) / (rows + columns - 2) * 0.8 * top + rng.integers(0, top // 10, (rows, columns))
    image[(y - rows // 2) ** 2 + (x - columns // 3) ** 2 < (rows // 6) ** 2] = top
    image = np.clip(np.round(image), 0, top)
    return (image - 2048).astype(np.int16) if signed else image.astype(np.uint16)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **elements) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored, stored.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gamma_voi_lut(first: int = 1000, entries: int = 2048):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item.add_new("LUTData", "US", [int(round(65535 * (i / (entries - 1)) ** 0.5)) for i in range(entries)])
    return item


CASES = {
    "plain": {},
    "window": {"WindowCenter": 1800, "WindowWidth": 1000},
    "narrow window": {"WindowCenter": 2000, "WindowWidth": 40},
    "several windows": {"WindowCenter": [1800, 3000], "WindowWidth": [1000, 400]},
    "rescale then window": {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 3000, "WindowWidth": 2000},
    "rescale alone": {"RescaleSlope": 0.5, "RescaleIntercept": -100},
    "negative slope": {"RescaleSlope": -1, "RescaleIntercept": 4095},
    "sigmoid": {"WindowCenter": 2048, "WindowWidth": 1024, "VOILUTFunction": "SIGMOID"},
    "voi lut sequence": {"VOILUTSequence": "gamma"},
    "monochrome1": {"photometric": "MONOCHROME1"},
    "monochrome1 window": {"photometric": "MONOCHROME1", "WindowCenter": 1800, "WindowWidth": 1000},
    "monochrome1 sigmoid": {"photometric": "MONOCHROME1", "WindowCenter": 2048, "WindowWidth": 1024, "VOILUTFunction": "SIGMOID"},
    "signed": {"signed": True},
    "signed window": {"signed": True, "WindowCenter": 0, "WindowWidth": 1500},
    "8-bit": {"eight": True},
    "8-bit monochrome1": {"eight": True, "photometric": "MONOCHROME1"},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("spec", [PreprocessSpec(), CROPPED], ids=["whole", "cropped"])
def test_pydicom_written_display_pipelines(case, spec, classifier, tmp_path):
    elements = dict(CASES[case])
    signed, eight = elements.pop("signed", False), elements.pop("eight", False)
    if elements.get("VOILUTSequence") == "gamma":
        elements["VOILUTSequence"] = [gamma_voi_lut()]
    stored = ramp_with_texture(signed=signed)
    if eight:
        stored = (stored >> 4).astype(np.uint8)
    path = write_dicom(tmp_path / "case.dcm", stored, bits_stored=8 if eight else 12, **elements)
    assert_same_picture(classifier, path, spec)
    if case not in ("plain", "rescale alone", "signed", "8-bit"):  # a positive-affine rescale leaves min..max scaling unchanged
        # The element really changes the picture, so agreeing above means it was applied.
        plain = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=8 if eight else 12)
        assert np.abs(current_model_input(path, spec) - current_model_input(plain, spec)).max() > 0.05


def test_full_resolution_display_values_are_pydicoms(cbis_dicoms, tmp_path):
    """read_file (no for_model) still gives pydicom's float32 display values exactly, through the table."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = ramp_with_texture(signed=True)
    path = write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-10, WindowCenter=100, WindowWidth=1500,
                       VOILUTFunction="SIGMOID")
    ds = pydicom.dcmread(path)
    expected = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), np.float32)
    np.testing.assert_array_equal(read_file(path), expected)
    np.testing.assert_array_equal(read_file(cbis_dicoms[0]), pydicom.dcmread(cbis_dicoms[0]).pixel_array.astype(np.float32))


# The byte-plane path (issue 16, part 1): classify reads an RLE DICOM without its full-size image
# (dicom.model_input); every other file takes the path above, unchanged.


def plane_path_calls(monkeypatch) -> list[bool]:
    """True for each call of the byte-plane path that gave the model input, False when it left the file to pydicom."""
    calls = []
    real = dicom._rle_model_input

    def spy(*args):
        tensor = real(*args)
        calls.append(tensor is not None)
        return tensor

    monkeypatch.setattr(dicom, "_rle_model_input", spy)
    return calls


def model_input_of(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """What Classifier.classify_file gives the model (no lesion map)."""
    return model_input(path.read_bytes(), spec, suffix=path.suffix, limits=DEFAULT_LIMITS)


def write_rle(path: Path, stored: np.ndarray, **kwargs) -> Path:
    """write_dicom, then RLE Lossless by pydicom's own encoder (segments: high byte first)."""
    from pydicom.uid import RLELossless

    write_dicom(path, stored, **kwargs)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_cbis_dicoms_through_the_byte_planes(cbis_dicoms, classifier, monkeypatch):
    used = plane_path_calls(monkeypatch)
    spec = classifier.card.preprocessing
    for path in cbis_dicoms:
        fast = model_input_of(path, spec)
        # pydicom's decode of the whole image, then prepare (cv2's area resize): the same picture to float rounding.
        full = prepare(read_file(path, for_model=True), spec)
        assert fast.shape == full.shape and fast.dtype == np.float32
        assert float(np.abs(fast - full).max()) <= 0.01 / 255, path.name
        assert_same_picture(classifier, path, spec)  # and against the pre-issue-16 path
    assert used == [True] * len(cbis_dicoms), "the real RLE DICOMs did not take the byte-plane path"
    used.clear()
    assert classifier.classify_file(cbis_dicoms[0]).error is None
    assert used == [True], "classify does not read an RLE DICOM through the byte planes"



def test_one_full_size_plane_at_a_time(cbis_dicoms, classifier, monkeypatch):
    """The high byte plane is freed before the low one is decoded, and what is kept of it is small. On a real
    DICOM, by tracemalloc (deterministic): when the low plane's decode starts, what the call holds is under a
    third of a plane (the high plane's row sums as uint16 and the rows its boundaries cut, ~1.8 MiB, and where it
    is extreme as packed bits, 1.5 MiB; its float64 area average alone is 4.9 MiB, the plane 12.1 MiB); and the
    peak stays below two planes plus the encoded segment copied for the decoder (both planes alive goes over)."""
    import tracemalloc

    path = cbis_dicoms[0]
    data = path.read_bytes()
    header = pydicom.dcmread(path, stop_before_pixels=True)
    plane = header.Rows * header.Columns
    first, second = (int.from_bytes(data[rle_header_at(data) + at : rle_header_at(data) + at + 4], "little") for at in (4, 8))
    segment = max(second - first, len(data) - rle_header_at(data) - second)  # an upper bound of the low segment
    spec = classifier.card.preprocessing
    used = plane_path_calls(monkeypatch)
    model_input_of(path, spec)  # pydicom and pylibjpeg-rle imported, caches filled
    held = []
    real = dicom._plane
    monkeypatch.setattr(dicom, "_plane", lambda *args: held.append(tracemalloc.get_traced_memory()[0]) or real(*args))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        model_input(data, spec, suffix=path.suffix, limits=DEFAULT_LIMITS)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert used == [True, True] and len(held) == 2
    assert held[1] - before < plane / 3, ((held[1] - before) / 2**20, plane / 2**20)
    assert peak < 2 * plane + segment, (peak / 2**20, plane / 2**20, segment / 2**20)


def finish_bounds(monkeypatch) -> list[tuple[float, float]]:
    """The (low, high) each call of the byte-plane path scales the model input by (prepare's min..max)."""
    bounds = []
    real = dicom.finish

    def spy(image, low, high, spec):
        bounds.append((low, high))
        return real(image, low, high, spec)

    monkeypatch.setattr(dicom, "finish", spy)
    return bounds


def scattered_extremes(rows: int = 1100, columns: int = 500) -> np.ndarray:
    """16-bit values whose high byte reaches its extremes in many bands of rows, with different low bytes:
    the true minimum and maximum lie in one band each, far from the first."""
    rng = np.random.default_rng(11)
    stored = rng.integers(0x1300, 0xE400, (rows, columns)).astype(np.uint16)
    stored[::37, ::11] = 0x1200 + rng.integers(3, 256, stored[::37, ::11].shape)  # high byte 0x12 everywhere ...
    stored[::41, 5::13] = 0xE400 + rng.integers(0, 250, stored[::41, 5::13].shape)  # ... and 0xE4
    stored[rows - 7, columns // 2] = 0x1202  # the minimum: 0x12 with the smallest low byte, in the last band
    stored[rows // 2 + 3, 3] = 0xE4FC  # the maximum, in a middle band
    return stored


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_the_byte_planes_scale_by_the_stored_extremes(photometric, cbis_dicoms, classifier, monkeypatch, tmp_path):
    """The extremes come from the high plane's extremes and the low bytes where it has them (kept as packed
    masks once the high plane is freed): exactly the image's own minimum and maximum stored values."""
    stored = scattered_extremes()
    path = write_rle(tmp_path / "extremes.dcm", stored, bits_stored=16, photometric=photometric)
    bounds = finish_bounds(monkeypatch)
    spec = classifier.card.preprocessing
    model_input_of(path, spec)
    for real in cbis_dicoms[:3]:
        model_input_of(real, spec)
    arrays = (pydicom.dcmread(real).pixel_array for real in cbis_dicoms[:3])
    expected = [(0x1202, 0xE4FC)] + [(int(array.min()), int(array.max())) for array in arrays]
    assert bounds == expected

RLE_CASES = {
    "16-bit": {},
    "16-bit monochrome1": {"photometric": "MONOCHROME1"},
    "16-bit, 16 bits stored": {"bits_stored": 16, "top": 60000},
    "8-bit": {"eight": True},
    "8-bit monochrome1": {"eight": True, "photometric": "MONOCHROME1"},
}


@pytest.mark.parametrize("case", list(RLE_CASES))
def test_pydicom_encoded_rle_through_the_byte_planes(case, classifier, monkeypatch, tmp_path):
    elements = dict(RLE_CASES[case])
    eight, top = elements.pop("eight", False), elements.pop("top", 4095)
    stored = ramp_with_texture(rows=901, columns=703, top=top)  # odd sizes: boundaries cut rows and columns
    if eight:
        stored = (stored >> 4).astype(np.uint8)
        elements["bits_stored"] = 8
    path = write_rle(tmp_path / "rle.dcm", stored, **elements)
    used = plane_path_calls(monkeypatch)
    spec = classifier.card.preprocessing
    fast = model_input_of(path, spec)
    assert used == [True]
    np.testing.assert_allclose(fast, prepare(read_file(path, for_model=True), spec), rtol=0, atol=0.01 / 255)
    assert_same_picture(classifier, path, spec)


FALLBACKS = {
    "no pylibjpeg-rle": ({}, PreprocessSpec()),
    "a window": ({"WindowCenter": 1800, "WindowWidth": 1000}, PreprocessSpec()),
    "rescaled": ({"RescaleSlope": 2, "RescaleIntercept": -1000}, PreprocessSpec()),
    "signed": ({"signed": True}, PreprocessSpec()),
    "cropped to the breast": ({}, CROPPED),
    "linear resize": ({}, PreprocessSpec(interpolation="linear")),
    "uncompressed": ({"uncompressed": True}, PreprocessSpec()),
    "smaller than the model input": ({"small": True}, PreprocessSpec()),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_other_dicoms_take_pydicoms_path_unchanged(case, monkeypatch, tmp_path):
    elements, spec = dict(FALLBACKS[case][0]), FALLBACKS[case][1]
    signed, uncompressed, small = (elements.pop(key, False) for key in ("signed", "uncompressed", "small"))
    stored = ramp_with_texture(rows=150 if small else 900, columns=120 if small else 700, signed=signed)
    path = (write_dicom if uncompressed else write_rle)(tmp_path / "other.dcm", stored, **elements)
    if case == "no pylibjpeg-rle":
        monkeypatch.setitem(sys.modules, "rle.rle", None)  # import rle.rle fails, as without the package
    used = plane_path_calls(monkeypatch)
    np.testing.assert_array_equal(model_input_of(path, spec), prepare(read_file(path, for_model=True), spec))
    assert used == [False]


def rle_header_at(data: bytes) -> int:
    """Offset of the real DICOM's RLE header (2 segments, the first at 64) after its pixel data element."""
    at = data.find(b"\x02\x00\x00\x00\x40\x00\x00\x00", data.find(b"\xe0\x7f\x10\x00"))
    assert at > 0
    return at


def damaged(data: bytes, how: str) -> bytes:
    header = rle_header_at(data)
    second = header + int.from_bytes(data[header + 8 : header + 12], "little")
    if how == "truncated":
        return data[: (header + len(data)) // 2]
    if how == "segment offset past the end":
        return data[: header + 8] + (len(data) * 2).to_bytes(4, "little") + data[header + 12 :]
    if how == "a third segment offset":  # the count field still says 2 segments
        return data[: header + 12] + (second - header + 1000).to_bytes(4, "little") + data[header + 16 :]
    if how == "runs that decode to too many bytes":  # replicate runs of 128 bytes replace literal data
        return data[:second + 1000] + b"\x81\x00" * 50_000 + data[second + 101_000 :]
    if how == "runs that decode to too few bytes":
        return data[:second + 1000] + b"\x80" * 100_000 + data[second + 101_000 :]
    raise AssertionError(how)


def low_bytes_as_runs(path: Path, pairs: int) -> Path:
    """``path`` (a write_rle file, 16 bits) with its low-byte segment replaced by ``pairs`` runs of 128 zeros."""
    data = path.read_bytes()
    header = rle_header_at(data)
    length = int.from_bytes(data[header - 4 : header], "little")
    second = int.from_bytes(data[header + 8 : header + 12], "little")
    frame = data[header : header + second] + b"\x81\x00" * pairs
    path.write_bytes(data[: header - 4] + len(frame).to_bytes(4, "little") + frame + data[header + length :])
    return path


def test_runs_that_claim_more_than_the_plane_are_cut_at_the_plane(classifier, monkeypatch, tmp_path):
    """RLE runs past a plane's end are ignored, as pydicom's own decoder does: a file of 1 MB whose low
    segment's runs claim 64 MiB (for a plane of 76 KiB) is decoded into planes of exactly Rows x Columns bytes
    (tracemalloc): the picture of the high bytes with zero low bytes."""
    import tracemalloc

    stored = ramp_with_texture(rows=300, columns=260)
    path = low_bytes_as_runs(write_rle(tmp_path / "runs.dcm", stored), 1 << 19)  # 64 MiB of zeros
    spec = classifier.card.preprocessing
    used = plane_path_calls(monkeypatch)
    tracemalloc.start()
    try:
        fast = model_input_of(path, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert used == [True]
    assert peak < 4 << 20, peak / 2**20
    expected = prepare(read_file(write_dicom(tmp_path / "high.dcm", stored & 0xFF00), for_model=True), spec)
    np.testing.assert_allclose(fast, expected, rtol=0, atol=0.01 / 255)


def test_a_decoder_panic_on_runs_past_the_frame_is_one_bounded_error(classifier, tmp_path):
    """pylibjpeg-rle 2.2.0 panics (a BaseException) when RLE runs pass the end of a 16-bit frame. A file that
    pydicom's path reads (here: a window, so not the byte planes) whose runs claim 64 MiB more is one error row,
    refused without following the runs (pydicom's own decoder would: +64 MiB here, 64x the file in general), and
    the next file is still classified."""
    import tracemalloc

    from click.testing import CliRunner

    from edge_birads.cli import cli

    stored = ramp_with_texture(rows=300, columns=260)
    path = low_bytes_as_runs(write_rle(tmp_path / "runs.dcm", stored, WindowCenter=1800, WindowWidth=1000), 1 << 19)
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    try:
        ds.pixel_array
    except BaseException as exc:  # noqa: BLE001 - what the installed decoder does with it
        assert isinstance(exc, Exception) or dicom.rust_panic(exc), exc
    tracemalloc.start()
    try:
        reason = outcome(lambda: read_file(path, for_model=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(reason, str), "decoded, by following the runs"
    assert reason == "cannot decode DICOM pixel data (transfer syntax RLE Lossless): its decoder stopped on damaged data"
    assert peak < 8 << 20, peak / 2**20
    after = write_rle(tmp_path / "after.dcm", stored)
    result = CliRunner().invoke(cli, ["classify", str(path), str(after), "--format", "jsonl"])
    assert result.exit_code != 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(Path(row["file"]).name, row["error"], row["group"] is not None) for row in rows] == [
        ("runs.dcm", reason, False), ("after.dcm", None, True)], result.output


def test_a_panic_in_the_byte_plane_decoder_leaves_the_file_to_pydicom(classifier, monkeypatch, tmp_path):
    """Should pylibjpeg-rle panic on a one-segment frame too (not seen in 100,000 random segments), the byte-plane
    path gives the file to pydicom's path instead of ending the batch."""
    import rle.rle

    ds = pydicom.dcmread(low_bytes_as_runs(write_rle(tmp_path / "bad.dcm", ramp_with_texture(rows=300, columns=260)), 1000))
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    panic = None
    try:
        ds.pixel_array
    except BaseException as exc:  # noqa: BLE001
        panic = exc
    if panic is None or not dicom.rust_panic(panic):
        pytest.skip("this pylibjpeg-rle does not panic on runs past a 16-bit frame: no PanicException to raise")

    def panicking(*args):
        raise panic

    monkeypatch.setattr(rle.rle, "decode_frame", panicking)  # what the byte-plane path calls; pydicom's plugin keeps its own
    path = write_rle(tmp_path / "good.dcm", ramp_with_texture(rows=300, columns=260))
    used = plane_path_calls(monkeypatch)
    spec = classifier.card.preprocessing
    np.testing.assert_array_equal(model_input_of(path, spec), prepare(read_file(path, for_model=True), spec))
    assert used == [False]


@pytest.mark.parametrize("how", ["truncated", "segment offset past the end", "runs that decode to too many bytes",
                                 "runs that decode to too few bytes"])
def test_damaged_rle_is_one_input_error(how, cbis_dicoms, classifier, monkeypatch, tmp_path):
    path = tmp_path / "damaged.dcm"
    path.write_bytes(damaged(cbis_dicoms[0].read_bytes(), how))
    used = plane_path_calls(monkeypatch)
    result = classifier.classify_file(path)
    assert used == [False], "the byte-plane path read damaged data"
    assert result.prediction is None and result.error, result
    assert "\n" not in result.error and "Traceback" not in result.error
    assert result.error.startswith(str(path)) or "DICOM" in result.error, result.error


def test_a_header_naming_other_segments_is_left_to_pydicom(cbis_dicoms, classifier, monkeypatch, tmp_path):
    """pylibjpeg-rle counts the non-zero segment offsets, pydicom reads the count field: with a stray third
    offset they disagree, so the byte-plane path stays out and pydicom decodes the file as before."""
    path = tmp_path / "stray.dcm"
    path.write_bytes(damaged(cbis_dicoms[0].read_bytes(), "a third segment offset"))
    used = plane_path_calls(monkeypatch)
    spec = classifier.card.preprocessing
    np.testing.assert_array_equal(model_input_of(path, spec), prepare(read_file(path, for_model=True), spec))
    assert used == [False]


def test_a_third_decodable_segment_is_left_to_pydicom(classifier, monkeypatch, tmp_path):
    """A 16-bit RLE frame with a third valid segment after the two its count field names: the byte-plane path
    must not read three planes as something else; pydicom's path decides (pylibjpeg-rle, pydicom's first
    choice, refuses it; pydicom's own decoder would read the two segments the count field names)."""
    path = write_rle(tmp_path / "three.dcm", ramp_with_texture(rows=300, columns=260))
    data = path.read_bytes()
    header = rle_header_at(data)
    length = int.from_bytes(data[header - 4 : header], "little")
    second = int.from_bytes(data[header + 8 : header + 12], "little")
    assert data[header + length : header + length + 4] == b"\xfe\xff\xdd\xe0"  # the sequence delimiter follows
    extra = data[header + second : header + length]  # the low-byte segment again
    frame = data[header : header + 12] + length.to_bytes(4, "little") + data[header + 16 : header + length] + extra
    path.write_bytes(data[: header - 4] + len(frame).to_bytes(4, "little") + frame + data[header + length :])
    used = plane_path_calls(monkeypatch)
    spec = classifier.card.preprocessing
    fast, full = outcome(lambda: model_input_of(path, spec)), outcome(lambda: prepare(read_file(path, for_model=True), spec))
    assert used == [False]
    if isinstance(full, str):
        assert fast == full
    else:
        np.testing.assert_array_equal(fast, full)


def outcome(read):
    """What ``read()`` returns, or the reason of the InputError it raises."""
    try:
        return read()
    except InputError as exc:
        return exc.reason


@pytest.mark.parametrize("bits_stored", [0, 17])
def test_a_header_pydicom_refuses_is_refused(bits_stored, cbis_dicoms, classifier, monkeypatch, tmp_path):
    """Bits Stored outside 1..Bits Allocated: pydicom will not decode it, so neither does the byte-plane path."""
    ds = pydicom.dcmread(cbis_dicoms[0])
    ds.BitsStored, ds.HighBit = bits_stored, max(bits_stored - 1, 0)
    ds.save_as(path := tmp_path / "bits.dcm")
    used = plane_path_calls(monkeypatch)
    with pytest.raises(InputError, match="Bits Stored"):
        model_input_of(path, classifier.card.preprocessing)
    assert used == [False]


IMPORTS = """
import importlib.util, sys
from edge_birads.classifier import Classifier
result = Classifier().classify_file(sys.argv[1])
assert result.error is None, result.error
print(" ".join(sorted(name for name in ("pydicom", "requests", "tqdm") if name in sys.modules)))
if importlib.util.find_spec("requests"):
    import requests  # hidden only while pydicom loaded
"""


def test_a_png_and_a_plain_rle_dicom_never_load_pydicom_and_other_dicoms_not_its_downloader(cbis_dicoms, example_pngs, tmp_path):
    """A real CBIS-DDSM DICOM (RLE, the plain layout) is read by edge_birads.dicom_header: pydicom's import (~0.09 s of
    a cold start) is skipped. A file that needs pydicom (here, a window) loads it without requests and tqdm."""
    import subprocess

    def loaded(path: Path) -> str:
        out = subprocess.run([sys.executable, "-c", IMPORTS, str(path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    windowed = write_rle(tmp_path / "windowed.dcm", ramp_with_texture(rows=900, columns=700), WindowCenter=1800, WindowWidth=1000)
    assert loaded(example_pngs[0]) == ""
    assert loaded(cbis_dicoms[0]) == ""
    assert loaded(windowed) == "pydicom"
