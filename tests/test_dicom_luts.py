"""What the README promises for DICOM: Rescale Slope/Intercept, then the VOI LUT or Window Center/Width
(LINEAR or SIGMOID), then MONOCHROME1 inversion, before the image is scaled to [0, 1] for the model.

The files are written with pydicom (small synthetic ramps, plus a real CBIS-DDSM DICOM given a window),
and what reaches the model is checked two ways: against pydicom's own ``apply_modality_lut`` /
``apply_voi_lut`` on the same file, and against the formulas of DICOM PS3.3 C.11.2.1.2 worked out here,
so a later decoder of its own (the throughput issue) is held to the standard, not to pydicom's code.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from edge_birads.decode import read_file
from edge_birads.preprocess import PreprocessSpec, prepare

pydicom = pytest.importorskip("pydicom")

ROWS, COLUMNS = 64, 48


def ramp(top: int = 4095) -> np.ndarray:
    """Stored values 0..top in raster order: every value range a window can cut is present, both ends included."""
    return np.round(np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) * top / (ROWS * COLUMNS - 1)).astype(np.uint16)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **elements) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored, "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_lut_item(first: int, data: list[int], bits: int = 16):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [len(data), first, bits]
    item.add_new("LUTData", "US", data)  # the ambiguous 'US or OW' is written as US
    return item


def model_input(path: Path) -> np.ndarray:
    """What the model sees (resized to its own size, so no pixel is averaged away)."""
    return prepare(read_file(path), PreprocessSpec(height=ROWS, width=COLUMNS))[:, :, 0]


def pydicom_display_values(path: Path) -> np.ndarray:
    """pydicom's own modality LUT then VOI LUT on the file, read afresh."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


def unit(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return (values - values.min()) / (values.max() - values.min())


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), output range 0..1."""
    x = np.asarray(x, np.float64)  # uint16 - int would wrap round under numpy 2
    c, w = center - 0.5, width - 1.0
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


def sigmoid_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 (SIGMOID), output range 0..1."""
    x = np.asarray(x, np.float64)
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


def test_window_center_and_width_are_applied(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "window.dcm", stored, WindowCenter=1800, WindowWidth=1000)
    np.testing.assert_allclose(read_file(path), pydicom_display_values(path), rtol=1e-6)
    seen = model_input(path)
    np.testing.assert_allclose(seen, linear_window(stored, 1800, 1000), atol=1e-6)
    assert (seen == 0).mean() > 0.2 and (seen == 1).mean() > 0.4  # a third of the ramp is cut off below, half above


def test_the_first_of_several_windows_is_applied(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "windows.dcm", stored, WindowCenter=[1800, 3000], WindowWidth=[1000, 400])
    np.testing.assert_allclose(model_input(path), linear_window(stored, 1800, 1000), atol=1e-6)


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    stored = ramp()
    # Window in rescaled units: 2 * stored - 1000 runs from -1000 to 7190; the window covers stored 1500..2500.
    path = write_dicom(tmp_path / "rescaled.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=2000)
    np.testing.assert_allclose(read_file(path), pydicom_display_values(path), rtol=1e-6)
    np.testing.assert_allclose(model_input(path), linear_window(2.0 * stored - 1000.0, 3000, 2000), atol=1e-6)


def test_rescale_alone_gives_the_modality_values(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "rescale-only.dcm", stored, RescaleSlope=0.5, RescaleIntercept=-100)
    np.testing.assert_allclose(read_file(path), 0.5 * stored - 100.0, rtol=1e-6)


def test_sigmoid_voi_lut_function(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "sigmoid.dcm", stored, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    np.testing.assert_allclose(read_file(path), pydicom_display_values(path), rtol=1e-6)
    # The sigmoid reaches neither end of its range; prepare() scales the values present onto 0..1.
    np.testing.assert_allclose(model_input(path), unit(sigmoid_window(stored, 2048, 1024)), atol=1e-5)
    assert not np.allclose(model_input(path), linear_window(stored, 2048, 1024), atol=0.02)


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = ramp()
    # A gamma curve over stored values 1000..3047; values outside the LUT take its first or last entry.
    first, entries = 1000, 2048
    lut = [int(round(65535 * (i / (entries - 1)) ** 0.5)) for i in range(entries)]
    path = write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[voi_lut_item(first, lut)])
    np.testing.assert_allclose(read_file(path), pydicom_display_values(path), rtol=1e-6)
    expected = np.asarray(lut, np.float64)[np.clip(stored.astype(int) - first, 0, entries - 1)]
    np.testing.assert_allclose(model_input(path), expected / 65535.0, atol=1e-6)


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "mono1.dcm", stored, photometric="MONOCHROME1", WindowCenter=1800, WindowWidth=1000)
    np.testing.assert_allclose(model_input(path), 1.0 - linear_window(stored, 1800, 1000), atol=1e-6)


def test_a_real_cbis_dicom_given_a_window_and_a_sigmoid(cbis_dicoms, tmp_path):
    """The real 16-bit RLE mammogram: its windowed decode is the window applied to its plain decode."""
    source = cbis_dicoms[0]
    plain = read_file(source).astype(np.float64)  # no LUTs in these files: the stored values
    dataset = pydicom.dcmread(source)
    assert "WindowCenter" not in dataset and "VOILUTSequence" not in dataset and "RescaleSlope" not in dataset
    tissue = plain[plain > 0]
    # A window on the breast: the black background falls below it, the densest tissue above it.
    center, width = round(float(np.median(tissue))), round(float(np.percentile(tissue, 95) - np.percentile(tissue, 5)) / 2)
    dataset.WindowCenter, dataset.WindowWidth = center, width
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    windowed = tmp_path / "windowed.dcm"
    windowed.write_bytes(buffer.getvalue())
    expected = linear_window(plain, center, width)
    assert expected.min() == 0.0 and expected.max() == 1.0 and 0.05 < (expected == 1.0).mean() < 0.5
    np.testing.assert_allclose(unit(read_file(windowed)), expected, atol=1e-5)
    dataset.VOILUTFunction = "SIGMOID"
    dataset.save_as(windowed)
    np.testing.assert_allclose(unit(read_file(windowed)), unit(sigmoid_window(plain, center, width)), atol=1e-5)
