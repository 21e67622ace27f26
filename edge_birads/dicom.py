"""DICOM decoding: modality LUT, VOI LUT / window, MONOCHROME1 inversion.

pydicom is imported lazily so that users who only classify PNGs never pay for
it. Patient identifiers are never read into results or messages here.
"""

from __future__ import annotations

import io

import numpy as np

from edge_birads.errors import InputError

MAMMOGRAPHY_MODALITIES = frozenset({"MG"})


def _pydicom():
    try:
        import pydicom
        from pydicom import pixels
    except ImportError:  # pragma: no cover - depends on the install
        raise InputError("DICOM support needs pydicom: pip install 'edge-birads[dicom]'") from None
    return pydicom, pixels


def decode_dicom(data: bytes, limits) -> np.ndarray:
    """Decode one single-frame mammography DICOM to a float32 2-D array.

    The result keeps the display orientation of MONOCHROME2 (bright = dense).
    """
    pydicom, pixels = _pydicom()
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(f"not a readable DICOM file ({type(exc).__name__})") from None
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    if modality and modality not in MAMMOGRAPHY_MODALITIES:
        raise InputError(f"DICOM modality is {modality!r}, not mammography (MG)")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise InputError("DICOM file has no pixel data")
    try:
        rows = int(dataset.get("Rows", 0) or 0)
        columns = int(dataset.get("Columns", 0) or 0)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise InputError("DICOM header has an invalid image size") from None
    if rows <= 0 or columns <= 0:
        raise InputError("DICOM header has no valid Rows/Columns")
    if frames != 1:
        raise InputError(f"DICOM has {frames} frames; only single-frame mammograms are supported")
    if rows * columns > limits.max_pixels:
        raise InputError(f"DICOM image is {columns}x{rows} pixels, over the limit of {limits.max_pixels} pixels")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError("DICOM is not a grayscale image (SamplesPerPixel != 1)")
    try:
        array = dataset.pixel_array
    except Exception as exc:  # missing decoder, short pixel data, bad transfer syntax
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise InputError(f"cannot decode DICOM pixel data (transfer syntax {name}): {reason[:160]}") from None
    if array.ndim != 2:
        raise InputError(f"DICOM pixel data has shape {array.shape}, expected one 2-D frame")
    try:
        values = pixels.apply_modality_lut(array, dataset)
        values = pixels.apply_voi_lut(values, dataset)
    except Exception as exc:
        raise InputError(f"cannot apply the DICOM LUTs ({type(exc).__name__})") from None
    values = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError("DICOM pixel data contains NaN or infinite values")
    if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values
