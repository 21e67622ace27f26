"""DICOM decoding: modality LUT, VOI LUT / window, MONOCHROME1 inversion.

pydicom is imported lazily so that users who only classify PNGs never pay for
it. Patient identifiers are never read into results or messages here.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

from edge_birads.decode import DICOM_MAGIC_OFFSET, is_dicom_bytes, jpeg_dimensions
from edge_birads.errors import InputError
from edge_birads.limits import check_size
from edge_birads.quiet import captured_stderr

MAMMOGRAPHY_MODALITIES = frozenset({"MG"})
DICOM_EXTRA = "pip install 'edge-birads[dicom]'"
NOT_DICOM = "not a DICOM file (no DICM marker and no DICOM image elements)"
# What any DICOM image has; a file without the DICM marker and without these is not DICOM at all.
IMAGE_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "Rows", "Modality", "SOPClassUID")
# pydicom inflates a Deflated-syntax file in one unbounded zlib call: a few KB can claim gigabytes.
DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"


def _pydicom():
    try:
        import pydicom
        from pydicom import pixels
    except ImportError:  # pragma: no cover - depends on the install
        raise InputError(f"DICOM support needs pydicom: {DICOM_EXTRA}") from None
    return pydicom, pixels


def decode_dicom(data: bytes, limits) -> np.ndarray:
    """Decode one single-frame mammography DICOM to a float32 2-D array.

    The result keeps the display orientation of MONOCHROME2 (bright = dense).
    pydicom's warnings are silenced: they go to stderr (breaking one line per
    bad file) and some quote element values, which may be patient identifiers.
    """
    if DEFLATED_SYNTAX in data[:16384]:
        raise InputError("DICOM uses the Deflated transfer syntax, which is not supported (a decompression-bomb risk)")
    if data[128:136] == b"DICM\x02\x00\x00\x00" and data[136:140] not in (b"UL\x04\x00", b"\x04\x00\x00\x00"):
        # A group length that is not a 4-byte UL (say, a nested sequence) is formatted by pydicom into a log
        # message even when logging is off: the fuzzer found 849 bytes that take 0.5 s here (36 s instrumented).
        raise InputError("not a readable DICOM file (its file meta group length is malformed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode(data, limits)


def _decode(data: bytes, limits) -> np.ndarray:
    pydicom, pixels = _pydicom()
    marked = is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4])
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        modality = str(dataset.get("Modality", "") or "").strip().upper()
    except InputError:
        raise  # the time limit fired inside pydicom
    except Exception as exc:  # pydicom raises many types for damaged files
        if not marked:
            raise InputError(NOT_DICOM) from None
        raise InputError(f"not a readable DICOM file ({type(exc).__name__})") from None
    if not marked and not any(keyword in dataset for keyword in IMAGE_KEYWORDS):
        # Named .dcm, but pydicom's forced read of any bytes finds an element or two of noise.
        raise InputError(NOT_DICOM)
    if modality and modality not in MAMMOGRAPHY_MODALITIES:
        raise InputError(f"DICOM modality is {modality[:16]!r}, not mammography (MG)")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise InputError("DICOM file has no pixel data")
    try:
        rows = int(dataset.get("Rows", 0) or 0)
        columns = int(dataset.get("Columns", 0) or 0)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
    except InputError:
        raise
    except Exception:  # a damaged header: wrong VR, bytes that are not numbers, ...
        raise InputError("DICOM header has an invalid image description (Rows, Columns, frames, samples)") from None
    if rows <= 0 or columns <= 0:
        raise InputError("DICOM header has no valid Rows/Columns")
    if frames != 1:
        raise InputError(f"DICOM has {frames} frames; only single-frame mammograms are supported")
    try:
        check_size(columns, rows, limits)
    except InputError as exc:
        raise InputError("DICOM " + exc.reason) from None
    if samples != 1:
        raise InputError("DICOM is not a grayscale image (SamplesPerPixel != 1)")
    _check_compressed_size(dataset, rows, columns)
    try:
        with captured_stderr():  # codec libraries may print; the exception below says what matters
            array = dataset.pixel_array
    except InputError:
        raise
    except Exception as exc:  # missing decoder, short pixel data, bad transfer syntax
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        text = " ".join(str(exc).split())
        if "missing" in text and "dependenc" in text:  # pydicom: every decoder plugin for this syntax lacks its package
            raise InputError(f"cannot decode DICOM pixel data compressed as {name}: the decoders are not installed ({DICOM_EXTRA})") from None
        raise InputError(f"cannot decode DICOM pixel data (transfer syntax {name}): {_first_words(exc)}") from None
    if array.ndim != 2:
        raise InputError(f"DICOM pixel data has shape {array.shape}, expected one 2-D frame")
    try:
        values = pixels.apply_modality_lut(array, dataset)
        values = pixels.apply_voi_lut(values, dataset)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot apply the DICOM LUTs ({type(exc).__name__})") from None
    values = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError("DICOM pixel data contains NaN or infinite values")
    if photometric == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values


def _check_compressed_size(dataset, rows: int, columns: int) -> None:
    """Refuse compressed pixel data whose own header claims another size than Rows x Columns.

    JPEG 2000 and JPEG decoders allocate what the codestream says, not what
    the DICOM header says: a 64x64 DICOM holding a codestream that claims
    30000x30000 made OpenJPEG take 1.9 GB here.
    """
    try:
        if not dataset.file_meta.TransferSyntaxUID.is_compressed:
            return
        head = bytes(dataset.PixelData[:65536])
    except Exception:  # no or unknown transfer syntax, damaged element: pixel_array reports it next
        return
    size = None
    at = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000 / HTJ2K: start of codestream, then SIZ
    if at >= 0 and at + 24 <= len(head):
        width, height, left, top = struct.unpack(">IIII", head[at + 8 : at + 24])
        size = (width - left, height - top)
    elif (at := head.find(b"\xff\xd8\xff")) >= 0:  # JPEG baseline, extended, lossless, JPEG-LS
        size = jpeg_dimensions(head[at:])
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        raise InputError("DICOM compressed pixel data is damaged (its codestream header gives no valid size)")
    if size is not None and size != (columns, rows):
        raise InputError(f"DICOM compressed image is {size[0]}x{size[1]} pixels but its header says {columns}x{rows}")


def _first_words(exc: Exception, limit: int = 200) -> str:
    """A decoder's message on one line, short; pydicom lists every plugin that failed."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
