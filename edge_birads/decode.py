"""Reading image files into a 2-D grayscale array, with limits checked first.

Decoding is where hostile or broken files bite, so every path here ends in
either a 2-D numpy array or an :class:`~edge_birads.errors.InputError`.
Sizes are checked from the header before pixels are decoded, so a small file
that claims a huge image cannot exhaust memory.
"""

from __future__ import annotations

import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from edge_birads.errors import InputError
from edge_birads.headers import DICOM_MAGIC_OFFSET, header_dimensions, is_dicom_bytes, jpeg_frame
from edge_birads.limits import DEFAULT_LIMITS, DecodeLimits, check_file_size, check_size  # noqa: F401 - re-exported
from edge_birads.preprocess import PreprocessSpec, prepare
from edge_birads.quiet import captured_stderr

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".pnm", ".ppm", ".bmp", ".dcm", ".dicom"})
DICOM_SUFFIXES = (".dcm", ".dicom")
BROKEN_LINK = "broken symbolic link (its target does not exist)"
FLOAT32_MAX = float(np.finfo(np.float32).max)
UNREADABLE = "not a readable image (unknown format, or truncated or corrupt)"


def read_file(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS, for_model: bool = False) -> np.ndarray:
    """Decode ``path`` to a 2-D grayscale array (uint8, uint16 or float32).

    A DICOM gives its float32 display values, or with ``for_model`` the same
    values scaled onto uint16 (what the classifier reads: ``prepare`` then
    resizes integers, and its min..max scaling makes both the same picture).
    Raises InputError naming the file for anything that is not a readable image.
    """
    path = Path(path)
    data = read_input(path, limits)
    try:
        return decode_bytes(data, suffix=path.suffix.lower(), limits=limits, for_model=for_model)
    except InputError as exc:
        raise exc.with_path(path) from None


def read_input(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """A file's bytes, read once, after the checks that need no reading (InputError naming it otherwise)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError("is a directory, not an image file", path)
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError("not a regular file (a pipe, socket or device)", path)
        size = info.st_size
        if size == 0:
            raise InputError("empty file (0 bytes)", path)
        check_file_size(size, limits)
        with open(path, "rb") as handle:
            # read(n) reserves n bytes up front: ask for what stat saw (+1 notices a file still growing),
            # not the limit, which would reserve 512 MB of address space per file on a 32-bit Pi.
            return handle.read(size + 1)
    except InputError:
        raise
    except PermissionError:
        raise InputError("permission denied", path) from None
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(BROKEN_LINK, path) from None
        raise InputError("no such file", path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path) from None


def decode_bytes(data: bytes, suffix: str = "", limits: DecodeLimits = DEFAULT_LIMITS, for_model: bool = False) -> np.ndarray:
    """Decode an in-memory file; DICOM is recognised by magic or by suffix (``for_model``: see read_file)."""
    if is_dicom(data, suffix, limits):
        return _decode_dicom(data, limits, for_model)
    return decode_raster(data, limits)


def model_input(data: bytes, spec: PreprocessSpec, suffix: str = "", limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The model's input from an in-memory file: ``prepare(decode_bytes(data, suffix, limits, for_model=True), spec)``,
    where a DICOM that allows it is decoded and shrunk together (see ``dicom.model_input``)."""
    if is_dicom(data, suffix, limits):
        from edge_birads.dicom import model_input as dicom_model_input  # imports pydicom: only for a DICOM

        return dicom_model_input(data, limits, spec)
    return prepare(decode_raster(data, limits), spec)


def is_dicom(data: bytes, suffix: str, limits: DecodeLimits) -> bool:
    """True for a DICOM (by magic, or by suffix without a raster signature), False for a raster; else InputError."""
    if not data:
        raise InputError("empty file (0 bytes)")
    check_file_size(len(data), limits)
    if is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4]):
        return True
    kind = raster_format(data)
    if suffix in DICOM_SUFFIXES:
        if kind is not None:
            raise InputError(f"named {suffix} but holds a {kind} image, not DICOM")
        return True  # old DICOMs have no preamble: pydicom tries them
    if kind is None:
        raise InputError(UNREADABLE)
    return False


def decode_key(name: str | Path) -> str:
    """What of a file's name changes how its bytes decode: whether it is named as DICOM.

    Two files with the same bytes give the same outcome only when this matches (a PNG named
    .dcm is refused, the same PNG named .png is not), so a cache of results keys on both.
    """
    return "dicom-name" if Path(name).suffix.lower() in DICOM_SUFFIXES else "any-name"


def _decode_dicom(data: bytes, limits: DecodeLimits, for_model: bool) -> np.ndarray:
    from edge_birads.dicom import decode_dicom  # imports pydicom's helpers: only for a DICOM

    return decode_dicom(data, limits, for_model)


def raster_format(data: bytes) -> str | None:
    """The format named by the file's signature, among the few this package accepts.

    OpenCV also decodes GIF, WebP, JPEG 2000, HDR, PFM, ... but their sizes are
    not checked here before decoding, so anything else is refused.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "PNM"
    return None


def decode_raster(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode PNG, JPEG, TIFF, PGM or BMP bytes with OpenCV and convert to gray.

    The size in the header is checked first; a header this module cannot read
    is refused rather than handed to OpenCV unchecked.
    """
    dims = header_dimensions(data)
    if dims is None:
        raise InputError(UNREADABLE)
    check_size(*dims, limits)
    if data[:2] == b"\xff\xd8":
        if not _jpeg_is_complete(data):
            # Older OpenCV returns the decoded top part of a cut-off JPEG, grey below: a silently wrong image.
            raise InputError("truncated JPEG (no end-of-image marker after the image data)")
        check_jpeg_scans(data, limits)
    if data[:4] == b"\x89PNG":
        _check_png_chunks(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    with captured_stderr() as said:  # libpng/libtiff/OpenCV complaints would break one line per bad file
        try:
            image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raise InputError(f"cannot decode image: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise InputError(UNREADABLE)
    complaint = " ".join("".join(said).split())
    if "Corrupt JPEG data" in complaint or "Premature end of JPEG file" in complaint:
        # libjpeg decoded a damaged stream anyway (grey or garbled blocks): a silently wrong image otherwise.
        raise InputError(f"corrupt JPEG data (libjpeg: {complaint[:160]})")
    return to_gray(image, limits)


def to_gray(image: np.ndarray, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Reduce a decoded image to one channel; colour input is converted, not rejected."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise InputError(f"unsupported image with {channels} channels")
    if image.ndim != 2:
        raise InputError(f"unsupported image with {image.ndim} dimensions")
    check_size(image.shape[1], image.shape[0], limits)
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return image
    if image.dtype == np.int8:
        return (image.astype(np.int16) + 128).astype(np.uint8)
    if image.dtype == np.int16:
        return (image.astype(np.int32) + 32768).astype(np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 becomes inf: refused below
        image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise InputError("image contains NaN or infinite values")
    if float(image.max()) - float(image.min()) > FLOAT32_MAX:
        # Normalising such a range overflows float32 (inf, then a meaningless image).
        raise InputError("image values span more than a 32-bit float can hold")
    return image


def check_jpeg_scans(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Refuse a JPEG with more scans than ``limits.max_jpeg_scans``, before libjpeg sees it.

    A progressive JPEG is decoded once per scan (SOS segment) over the whole
    image, and one cv2.imdecode call cannot be interrupted by the per-file
    time limit: a 1 MB file with 3,000 scans took 103 s. Ordinary encoders
    write 1 scan (baseline) or about 10 (progressive); libjpeg-turbo answers
    the same attack with a scan limit, which this is.
    """
    scans = jpeg_scan_count(data, stop_after=limits.max_jpeg_scans)
    if scans > limits.max_jpeg_scans:
        raise InputError(
            f"JPEG has more than {limits.max_jpeg_scans} scans (progressive passes); refused, as decoding "
            "time grows with every scan"
        )


def jpeg_scan_count(data: bytes, stop_after: int | None = None) -> int:
    """The number of start-of-scan (SOS) segments, walking the markers and skipping each scan's coded data.

    Inside coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart
    marker, so the next other marker ends the scan; counting stops early past
    ``stop_after``. Bytes of an APPn segment (an EXIF thumbnail is a JPEG of
    its own) are skipped by the segment length, never counted.
    """
    offset, length, scans = 2, len(data), 0
    while offset + 4 <= length:
        if data[offset] != 0xFF:
            return scans  # damaged: libjpeg will say so
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xD9:  # end of image
            return scans
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        segment = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if segment < 2:
            return scans
        offset += 2 + segment
        if marker != 0xDA:
            continue
        scans += 1
        if stop_after is not None and scans > stop_after:
            return scans
        while True:  # the scan's entropy-coded data
            offset = data.find(b"\xff", offset)
            if offset < 0 or offset + 1 >= length:
                return scans
            following = data[offset + 1]
            if following == 0x00 or following == 0xFF or 0xD0 <= following <= 0xD7:
                offset += 1 if following == 0xFF else 2
                continue
            break
    return scans


def _jpeg_is_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the frame header (the entropy data cannot hold one)."""
    frame = jpeg_frame(data)
    return frame is not None and data.rfind(b"\xff\xd9") > frame[0]


def _check_png_chunks(data: bytes) -> None:
    """Refuse a cut-off PNG or one with a damaged chunk before libpng sees it.

    libpng would also refuse both, but prints its own complaint on stderr, and
    half-copied or bit-rotten files are the common case worth a clear reason.
    """
    offset = 8
    while offset + 12 <= len(data):
        length = struct.unpack(">I", data[offset : offset + 4])[0]
        end = offset + 12 + length
        if end > len(data):
            break
        kind = data[offset + 4 : offset + 8]
        stored = struct.unpack(">I", data[end - 4 : end])[0]
        if zlib.crc32(data[offset + 4 : end - 4]) != stored:
            raise InputError(f"corrupt PNG (checksum error in a {kind.decode('latin-1')!r} chunk)")
        if kind == b"IEND":
            return
        offset = end
    raise InputError("truncated PNG (the file ends before its IEND chunk)")


def is_candidate_image(path: Path) -> bool:
    """True for files classify should try: a known suffix, or no suffix (DICOM often has none)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == ""
