"""The header of a plainly laid-out RLE Lossless DICOM, read without pydicom.

A cold ``classify`` of one DICOM spent ~0.09 s importing pydicom, most of it its pixel decoders, which the
byte-plane path (:func:`edge_birads.dicom.model_input`) never uses. This reader gives that path what it needs
from files in the one layout it takes: the preamble and "DICM", explicit VR little endian throughout, the RLE
Lossless transfer syntax, the pixel data encapsulated. Anything else, and anything unexpected on the way (a value
of another length or type than the standard's, elements out of order, sequences nested too deep, a length past
the end of the file), gives None, and pydicom reads the file as before, with its checks and messages. It is
stricter than pydicom, never laxer: what it reads is what pydicom reads from the same bytes (values padded at
the end only, as pydicom strips them; the sequences pydicom walks as it reads are walked too, item by item),
and a file pydicom would refuse is given back to it (``tests/test_dicom_header.py`` compares the outcomes). It
reads only the elements listed in ``WANTED`` and ``PRESENCE``; nothing it reads is a patient identifier.

Its cost is bounded whatever the file claims: one pass over the elements before the pixel data, at most
``MAX_ELEMENTS`` of them and ``MAX_DEPTH`` levels of nested sequences.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from types import SimpleNamespace

from edge_birads.headers import DICOM_MAGIC_OFFSET, is_dicom_bytes

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
PIXEL_DATA = (0x7FE0, 0x0010)
FLOAT_PIXEL_DATA = (0x7FE0, 0x0008)
TRANSFER_SYNTAX = (0x0002, 0x0010)
ITEM, ITEM_END, SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD  # elements of group FFFE
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH",
                       b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})  # fmt: skip
# The elements read, by tag: (keyword, the VR the standard gives it).
WANTED = {
    (0x0008, 0x0060): ("Modality", b"CS"),
    (0x0028, 0x0002): ("SamplesPerPixel", b"US"),
    (0x0028, 0x0004): ("PhotometricInterpretation", b"CS"),
    (0x0028, 0x0008): ("NumberOfFrames", b"IS"),
    (0x0028, 0x0010): ("Rows", b"US"),
    (0x0028, 0x0011): ("Columns", b"US"),
    (0x0028, 0x0100): ("BitsAllocated", b"US"),
    (0x0028, 0x0101): ("BitsStored", b"US"),
    (0x0028, 0x0103): ("PixelRepresentation", b"US"),
    (0x0028, 0x1052): ("RescaleIntercept", b"DS"),
    (0x0028, 0x1053): ("RescaleSlope", b"DS"),
}
# Elements whose presence alone matters (a LUT or window changes the stored values): noted, not read.
PRESENCE = {(0x0028, 0x1050): "WindowCenter", (0x0028, 0x3000): "ModalityLUTSequence", (0x0028, 0x3010): "VOILUTSequence"}
MAX_ELEMENTS = 100_000
MAX_DEPTH = 8


class NotPlain(Exception):
    """The file is not in the plain layout: pydicom reads it."""


@dataclass
class PlainHeader:
    """What the byte-plane path reads of a dataset, as a pydicom Dataset offers it (``get``, ``in``), and
    where the pixel data element starts."""

    values: dict[str, object]
    pixel_at: int
    file_meta: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(TransferSyntaxUID=RLE_LOSSLESS))

    def get(self, keyword: str, default=None):
        return self.values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.values


def read_plain_rle(data: bytes) -> PlainHeader | None:
    """The header of an RLE Lossless DICOM in the plain layout, or None (pydicom reads it instead)."""
    if not is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4]):
        return None
    try:
        reader = _Reader(data)
        position, syntax = reader.file_meta(DICOM_MAGIC_OFFSET + 4)
        if syntax != RLE_LOSSLESS:
            return None
        values: dict[str, object] = {}
        pixel_at = reader.dataset(position, values)
    except (NotPlain, struct.error, UnicodeDecodeError, ValueError):
        return None
    return PlainHeader(values, pixel_at)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.budget = MAX_ELEMENTS

    def spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise NotPlain("too many elements")

    def element(self, position: int) -> tuple[tuple[int, int], bytes, int, int]:
        """(tag, VR, value offset, value length) of the explicit VR little endian element at ``position``."""
        self.spend()
        group, number = struct.unpack_from("<HH", self.data, position)
        vr = self.data[position + 4 : position + 6]
        if vr in LONG_VRS:
            if self.data[position + 6 : position + 8] != b"\0\0":
                raise NotPlain("reserved bytes")
            (length,) = struct.unpack_from("<L", self.data, position + 8)
            return (group, number), vr, position + 12, length
        if vr in SHORT_VRS:
            (length,) = struct.unpack_from("<H", self.data, position + 6)
            return (group, number), vr, position + 8, length
        raise NotPlain("not explicit VR")

    def end_of(self, start: int, length: int) -> int:
        if length == UNDEFINED or start + length > len(self.data):
            raise NotPlain("undefined length or past the end")
        return start + length

    def file_meta(self, position: int) -> tuple[int, str]:
        """Walk group 0002; its end and the transfer syntax."""
        syntax, previous = None, (0, 0)
        while True:
            tag, vr, start, length = self.element(position)
            if tag[0] != 0x0002:
                if syntax is None:
                    raise NotPlain("no transfer syntax")
                return position, syntax
            if tag <= previous:
                raise NotPlain("out of order")
            previous = tag
            position = self.end_of(start, length)
            if tag == TRANSFER_SYNTAX:
                if vr != b"UI":
                    raise NotPlain("transfer syntax VR")
                syntax = self.data[start:position].decode("ascii").rstrip("\0 ")

    def dataset(self, position: int, values: dict[str, object]) -> int:
        """Walk the top-level dataset to the pixel data, noting the wanted elements; the pixel data's offset."""
        previous = (0x0002, 0xFFFF)
        while True:
            tag, vr, start, length = self.element(position)
            if tag <= previous:
                raise NotPlain("out of order")
            previous = tag
            if tag >= FLOAT_PIXEL_DATA:  # where pydicom stops before the pixels (float pixel data included)
                if tag != PIXEL_DATA or vr not in (b"OB", b"OW") or length != UNDEFINED:
                    raise NotPlain("not encapsulated pixel data")
                return position
            end = self.value_end(vr, start, length, 0)
            if tag in WANTED:
                keyword, expected = WANTED[tag]
                if vr != expected:
                    raise NotPlain(f"{keyword} has VR {vr!r}")
                values[keyword] = _value(self.data[start:end], vr)
            elif tag in PRESENCE:
                values[PRESENCE[tag]] = True
            position = end

    def value_end(self, vr: bytes, start: int, length: int, depth: int) -> int:
        """The offset after an element's value: a sequence of undefined length is walked (pydicom reads it as it
        reads the file), any other value is skipped (pydicom reads it only when it is asked for)."""
        if vr == b"SQ" and length == UNDEFINED:
            return self.sequence(start, depth + 1)
        return self.end_of(start, length)

    def sequence(self, position: int, depth: int) -> int:
        """Walk a sequence of undefined length whose items start at ``position``; the offset after its end."""
        if depth > MAX_DEPTH:
            raise NotPlain("nested too deep")
        while True:
            self.spend()
            group, number, length = struct.unpack_from("<HHL", self.data, position)
            if group != 0xFFFE:
                raise NotPlain("not an item")
            position += 8
            if number == SEQUENCE_END:
                return position
            if number != ITEM:
                raise NotPlain("not an item")
            position = self.item(position, None if length == UNDEFINED else self.end_of(position, length), depth)

    def item(self, position: int, end: int | None, depth: int) -> int:
        """Walk the elements of one item: up to its end marker (``end`` None: undefined length), or exactly to
        ``end``; the offset after the item."""
        while True:
            if end is not None and position == end:
                return end
            if end is None and struct.unpack_from("<HH", self.data, position) == (0xFFFE, ITEM_END):
                return position + 8
            _, vr, start, length = self.element(position)
            position = self.value_end(vr, start, length, depth)
            if end is not None and position > end:
                raise NotPlain("an element past its item's end")


def _value(raw: bytes, vr: bytes) -> object:
    """One value of a wanted element, as pydicom gives it (None when empty); NotPlain for anything else."""
    if vr == b"US":
        if len(raw) != 2:
            raise NotPlain("not one US value")
        return struct.unpack("<H", raw)[0]
    text = raw.decode("ascii").rstrip("\0 ")  # as pydicom: trailing padding only
    if "\\" in text or "\0" in text:
        raise NotPlain("several values, or a NUL inside")
    if vr == b"IS":
        return int(text) if text else None
    if vr == b"DS":
        return float(text) if text else None
    return text


def one_fragment(data: bytes, pixel_at: int) -> tuple[int, int] | None:
    """Start and end in ``data`` of the one fragment of the encapsulated pixel data element at ``pixel_at``, or
    None.

    The layout read: the element (OB or OW, undefined length), the basic offset table item, one fragment item,
    then the sequence delimiter or the end of the file. O(1) whatever the file claims.
    """
    if data[pixel_at : pixel_at + 4] != b"\xe0\x7f\x10\x00" or data[pixel_at + 4 : pixel_at + 6] not in (b"OB", b"OW") \
            or data[pixel_at + 6 : pixel_at + 12] != b"\0\0\xff\xff\xff\xff":
        return None
    try:
        position = pixel_at + 12
        group, number, length = struct.unpack_from("<HHL", data, position)
        if (group, number) != (0xFFFE, ITEM) or length == UNDEFINED:
            return None
        if length % 4:  # the basic offset table holds 4-byte offsets (pydicom refuses the file otherwise)
            return None
        position += 8 + length
        group, number, length = struct.unpack_from("<HHL", data, position)
        if (group, number) != (0xFFFE, ITEM) or length == UNDEFINED or length < 64:
            return None
        start, end = position + 8, position + 8 + length
        if end > len(data) or (end < len(data) and data[end : end + 4] != b"\xfe\xff\xdd\xe0"):
            return None
        return start, end
    except struct.error:
        return None
