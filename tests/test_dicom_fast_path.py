"""The fast DICOM path (issue 16) shows the model the same picture as the previous one.

The previous path, kept here verbatim as the reference: pydicom's default decoder, ``apply_modality_lut``
then ``apply_voi_lut`` on the full image in float, float32, MONOCHROME1 inverted, then ``prepare``. The new
path (what ``Classifier`` reads): the fastest installed decoder, the LUTs as one table looked up on the
integers, scaled onto uint16, resized as integers by ``prepare``. They must agree within one int8 input step
on every pixel, and the bundled model's probabilities within the golden test's tolerance, on the 8 real
CBIS-DDSM DICOMs and on pydicom-written files with each display-pipeline element.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_birads import dicom
from edge_birads.classifier import Classifier
from edge_birads.decode import read_file
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
    # The decoder plugin registry keeps its own reference: patch what it calls through.
    from pydicom.pixels.decoders import RLELosslessDecoder

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
