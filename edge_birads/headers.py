"""Facts read from a file's first bytes, without decoding it: is it DICOM, and how many pixels does its header claim.

Pure byte parsing (no OpenCV, no pydicom), shared by :mod:`edge_birads.decode` and :mod:`edge_birads.dicom`
(a compressed DICOM's JPEG codestream has its own frame header) so that neither imports the other.
"""

from __future__ import annotations

import struct

DICOM_MAGIC_OFFSET = 128


def is_dicom_bytes(head: bytes) -> bool:
    """True when the file carries the DICM preamble magic."""
    return len(head) >= DICOM_MAGIC_OFFSET + 4 and head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def header_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG, JPEG, TIFF, BMP or PNM header, if present.

    Used to refuse decompression bombs before OpenCV allocates their pixels.
    Returns None for formats (or damaged headers) it does not parse; the
    decoded image is then checked against the same limit after decoding.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"\xff\xd8":
        return jpeg_dimensions(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return tiff_dimensions(data)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return pnm_dimensions(data)
    return None


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    found = jpeg_frame(data)
    return None if found is None else found[1:]


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(offset, width, height) of the first frame header (SOFn), walking the segments."""
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
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):  # F7: JPEG-LS
            if offset + 9 > length:
                return None
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return offset, width, height
        if marker == 0xDA or segment < 2:
            return None  # image data before any frame header, or a bogus segment length
        offset += 2 + segment
    return None


def tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength from the first IFD of a classic (not Big) TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    found = {}
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(data):
            return None
        tag, kind, number = struct.unpack(order + "HHI", data[entry : entry + 8])
        if tag in (256, 257) and number == 1 and kind in (3, 4):
            value = struct.unpack(order + ("H" if kind == 3 else "I"), data[entry + 8 : entry + (10 if kind == 3 else 12)])[0]
            found[tag] = value
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def pnm_dimensions(data: bytes) -> tuple[int, int] | None:
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
