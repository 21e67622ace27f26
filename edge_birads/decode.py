"""Reading image files into a 2-D grayscale array, with limits checked first.

Decoding is where hostile or broken files bite, so every path here ends in
either a 2-D numpy array or an :class:`~edge_birads.errors.InputError`.
Sizes are checked from the header before pixels are decoded, so a small file
that claims a huge image cannot exhaust memory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_birads.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".pnm", ".ppm", ".bmp", ".dcm", ".dicom"})
DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds applied before decoding; configurable for unusual scanners."""

    max_file_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 120_000_000  # a 12000 x 10000 full-field DICOM fits; 30000 x 30000 does not


DEFAULT_LIMITS = DecodeLimits()


def is_dicom_bytes(head: bytes) -> bool:
    """True when the file carries the DICM preamble magic."""
    return len(head) >= DICOM_MAGIC_OFFSET + 4 and head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_file(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``path`` to a 2-D grayscale array (uint8, uint16 or float32).

    Raises InputError naming the file for anything that is not a readable image.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError("is a directory, not an image file", path)
        size = path.stat().st_size
        if size == 0:
            raise InputError("empty file (0 bytes)", path)
        if size > limits.max_file_bytes:
            raise InputError(f"file is {size} bytes, over the limit of {limits.max_file_bytes}", path)
        with open(path, "rb") as handle:
            data = handle.read(limits.max_file_bytes + 1)
    except InputError:
        raise
    except PermissionError:
        raise InputError("permission denied", path) from None
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path) from None
    try:
        return decode_bytes(data, suffix=path.suffix.lower(), limits=limits)
    except InputError as exc:
        raise exc.with_path(path) from None


def decode_bytes(data: bytes, suffix: str = "", limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an in-memory file; DICOM is recognised by magic or by suffix."""
    if not data:
        raise InputError("empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise InputError(f"file is {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    if is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4]) or suffix in (".dcm", ".dicom"):
        from edge_birads.dicom import decode_dicom

        return decode_dicom(data, limits)
    return decode_raster(data, limits)


def decode_raster(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode PNG, JPEG, TIFF, PGM or BMP bytes with OpenCV and convert to gray."""
    dims = header_dimensions(data)
    if dims is not None:
        width, height = dims
        if width <= 0 or height <= 0:
            raise InputError(f"image header gives an invalid size {width}x{height}")
        if width * height > limits.max_pixels:
            raise InputError(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} pixels")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f"cannot decode image: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise InputError("not a readable image (unknown format, or truncated or corrupt)")
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
    if image.size == 0:
        raise InputError("image has no pixels")
    if image.size > limits.max_pixels:
        raise InputError(f"image is {image.shape[1]}x{image.shape[0]} pixels, over the limit of {limits.max_pixels} pixels")
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return image
    if image.dtype == np.int8:
        return (image.astype(np.int16) + 128).astype(np.uint8)
    if image.dtype == np.int16:
        return (image.astype(np.int32) + 32768).astype(np.uint16)
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise InputError("image contains NaN or infinite values")
    return image


def header_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG, JPEG, BMP or PNM header, if present.

    Used to refuse decompression bombs before OpenCV allocates their pixels.
    Returns None for formats (or damaged headers) it does not parse; the
    decoded image is then checked against the same limit after decoding.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return _pnm_dimensions(data)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    offset = 2
    length = len(data)
    while offset + 4 <= length:
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        segment = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if offset + 9 > length:
                return None
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + segment
    return None


def _pnm_dimensions(data: bytes) -> tuple[int, int] | None:
    tokens: list[int] = []
    text = data[2:256].split(b"\n")
    for line in text:
        line = line.split(b"#")[0]
        for token in line.split():
            if not token.isdigit():
                return None
            tokens.append(int(token))
            if len(tokens) == 2:
                return tokens[0], tokens[1]
    return None


def is_candidate_image(path: Path) -> bool:
    """True for files classify should try: a known suffix, or no suffix (DICOM often has none)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == ""


def file_identity(path: str | Path) -> str:
    """A stable printable name for results (the path as given)."""
    return os.fspath(path)
