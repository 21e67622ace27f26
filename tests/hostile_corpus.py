"""A corpus of hostile, broken and awkward input files, generated on the spot.

Nothing is downloaded: every file is built here from numpy arrays, a tiny
PNG writer and pydicom, so the tests, the fuzzer's seeds and (later) the
watch daemon's quarantine test all see the same files. Each :class:`Case`
says whether the file must classify (``ok``) or fail, and a regular
expression the one-line reason must match.

Run ``python tests/hostile_corpus.py DIR`` to write the corpus to DIR and see it.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Distinctive identifiers written into the corpus DICOMs: they must never appear in any output.
PATIENT_NAME = "Zqxwyv^Hostilia"
PATIENT_ID = "PID-HOSTILE-7734"
PATIENT_BIRTH_DATE = "19010203"


@dataclass(frozen=True)
class Case:
    """One corpus file and what classify must do with it."""

    name: str  # file name inside the corpus folder (may hold spaces, unicode, newlines)
    ok: bool  # True: a valid image that must be classified
    reason: str = ""  # regex the error reason must match when not ok
    skip: str = ""  # why this case could not be made on this machine (then it is not in the folder)


def breast_image(height: int = 320, width: int = 256, depth: int = 8, seed: int = 0) -> np.ndarray:
    """A synthetic 'mammogram': a bright textured half-ellipse on black."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (0, height // 2), (int(width * 0.8), int(height * 0.45)), 0, -90, 90, 1, thickness=-1)
    top = 255 if depth == 8 else 4095
    tissue = rng.integers(top // 2, top, (height, width))
    image = (mask * tissue).astype(np.uint8 if depth == 8 else np.uint16)
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows, extra: bytes = b"") -> bytes:
    """A PNG from an iterable of already-packed scanlines (filter byte 0 is added here).

    Streaming rows through one compressor lets a 400-megapixel bomb be made in a
    few MB of memory; ``extra`` holds chunks before IDAT (PLTE, tRNS).
    """
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\x00" + bytes(row)) for row in rows]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    if not ok:
        raise RuntimeError(f"cv2 cannot encode {ext}")
    return buffer.tobytes()


def one_bit_png(image: np.ndarray) -> bytes:
    """A 1-bit grayscale PNG of ``image > 0`` (a valid, if odd, export)."""
    bits = np.packbits(image > 0, axis=1)
    return png_bytes(image.shape[1], image.shape[0], 1, 0, bits)


def palette_png(image: np.ndarray) -> bytes:
    """An 8-bit palette PNG whose palette is a gray ramp, so it decodes to ``image``."""
    ramp = bytes(v for i in range(256) for v in (i, i, i))
    return png_bytes(image.shape[1], image.shape[0], 8, 3, image, extra=png_chunk(b"PLTE", ramp))


def bomb_png(side: int = 20000) -> bytes:
    """A real, valid PNG of side x side zeros: about 400 KB that decodes to side**2 bytes."""
    row = bytes(side)
    return png_bytes(side, side, 8, 0, (row for _ in range(side)))


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (CRC fixed) claims width x height."""
    data = bytearray(encode(".png", breast_image(64, 64)))
    body = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:33] = body + struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(encode(".jpg", breast_image(64, 64)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG; a scan's end includes its entropy-coded data."""
    segments, offset = [], 2
    while offset + 4 <= len(data):
        marker = data[offset + 1]
        if marker == 0xD9:
            break
        end = offset + 2 + struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.find(b"\xff", end)
                if data[end + 1] == 0x00 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, offset, end))
        offset = end
    return segments


def many_scans_jpeg(image: np.ndarray, scans: int) -> bytes:
    """A valid progressive JPEG of ``image`` with its smallest scan repeated up to ``scans`` scans.

    libjpeg decodes every repeated scan over the whole image (after a warning):
    the decoding time grows with the scan count, whatever the file size, which
    is how a 1 MB file kept a decoder busy for 100 s.
    """
    data = encode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    segments = jpeg_segments(data)
    sos = [segment for segment in segments if segment[0] == 0xDA]
    _, start, end = min(sos, key=lambda segment: segment[2] - segment[1])
    return data[: sos[-1][2]] + data[start:end] * (scans - len(sos)) + b"\xff\xd9"


def tiff_claiming(width: int, height: int) -> bytes:
    """A small TIFF whose first IFD claims width x height (LONG-typed tags)."""
    data = bytearray(encode(".tif", breast_image(64, 64)))
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    for index in range(count):
        entry = ifd + 2 + 12 * index
        tag = struct.unpack(order + "H", data[entry : entry + 2])[0]
        if tag in (256, 257):
            data[entry + 2 : entry + 12] = struct.pack(order + "HII", 4, 1, width if tag == 256 else height)
    return bytes(data)


def dicom_bytes(
    image: np.ndarray | None = None,
    modality: str = "MG",
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    pixel_bytes: bytes | None = None,
    transfer_syntax: str | None = None,
    rows_columns: tuple[int, int] | None = None,
) -> bytes:
    """A DICOM built with pydicom; patient identifiers are the distinctive test strings.

    ``image=None`` leaves the pixel data out; ``pixel_bytes`` overrides the
    encoded pixels (to make them short or bogus); ``transfer_syntax`` with
    bogus bytes gives an encapsulated (compressed) file nothing can decode.
    """
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["edge-birads hostile corpus", modality, photometric, str(frames)])
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.Modality = modality
    if image is not None or rows_columns is not None:
        rows, columns = rows_columns or image.shape
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames != 1:
            ds.NumberOfFrames = frames
        if pixel_bytes is None:
            pixel_bytes = np.ascontiguousarray(np.stack([image] * frames)).astype("<u2").tobytes()
        if transfer_syntax is not None:
            pixel_bytes = encapsulate([pixel_bytes])
        ds.PixelData = pixel_bytes
        ds["PixelData"].VR = "OB" if transfer_syntax is not None else "OW"
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def jpeg2000_bomb_dicom() -> bytes | None:
    """A 64x64 DICOM whose JPEG 2000 codestream claims 30000x30000 (None if OpenCV cannot write JPEG 2000)."""
    from pydicom.uid import JPEG2000Lossless

    image = breast_image(64, 64, depth=16)
    try:
        jp2 = encode(".jp2", image)
    except (RuntimeError, cv2.error):
        return None
    codestream = bytearray(jp2[jp2.index(b"\xff\x4f\xff\x51") :])
    struct.pack_into(">II", codestream, 8, 30000, 30000)  # Xsiz, Ysiz
    struct.pack_into(">II", codestream, 24, 30000, 30000)  # one 30000x30000 tile
    return dicom_bytes(image, pixel_bytes=bytes(codestream), transfer_syntax=JPEG2000Lossless)


def deflate_bomb_dicom(inflated_bytes: int = 512 * 2**20) -> bytes:
    """A DICOM in the Deflated transfer syntax whose few hundred KB inflate to ``inflated_bytes``."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    header = dicom_bytes(None)  # preamble + meta + a small dataset, Explicit VR Little Endian
    meta_end = 132 + 12 + struct.unpack("<I", header[140:144])[0]
    syntax = b"1.2.840.10008.1.2.1\x00"
    start = header.index(syntax, 132, meta_end)
    body = header[132:meta_end].replace(syntax, DeflatedExplicitVRLittleEndian.encode() + b"\x00")
    # The transfer syntax UID grew by 4 bytes: fix its element length and the meta group length.
    body = bytearray(body)
    at = start - 132 - 2
    body[at : at + 2] = struct.pack("<H", len(DeflatedExplicitVRLittleEndian) + 1)
    body[8:12] = struct.pack("<I", len(body) - 12)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(2**20)
    stream = b"".join(compressor.compress(block) for _ in range(inflated_bytes // len(block))) + compressor.flush()
    return header[:132] + bytes(body) + stream


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


NEWLINE_NAME = "bad\nname.png"
UNICODE_NAME = "scan 01 – mamografía 乳房.png"
UNDECODABLE_NAME = os.fsdecode(b"bad-\xff\xfe-bytes.png")  # a name that is not valid UTF-8


def build_corpus(folder: Path) -> list[Case]:
    """Write every case into ``folder`` (which must exist) and return the cases in name order."""
    folder = Path(folder)
    good = breast_image()
    good_png = encode(".png", good)
    good_jpg = encode(".jpg", good)
    good16 = breast_image(depth=16)
    good_dcm = dicom_bytes(good16)
    cases: list[Case] = []

    def add(name: str, data: bytes | None, ok: bool, reason: str = "") -> None:
        if data is not None:
            (folder / name).write_bytes(data)
        cases.append(Case(name, ok, reason))

    # Valid images in awkward encodings: they must classify.
    add("valid-8bit.png", good_png, True)
    add("valid-16bit.png", encode(".png", good16), True)
    add("valid-1bit.png", one_bit_png(good), True)
    add("valid-rgba.png", encode(".png", cv2.cvtColor(good, cv2.COLOR_GRAY2BGRA)), True)
    add("valid-gray-alpha.png", png_bytes(256, 320, 8, 4, np.dstack([good, np.full_like(good, 255)]).reshape(320, -1)), True)
    add("valid-palette.png", palette_png(good), True)
    add("valid.jpg", good_jpg, True)
    add("valid.tif", encode(".tif", good16), True)
    add("valid-mono2.dcm", good_dcm, True)
    add("valid-mono1.dcm", dicom_bytes(4095 - good16, photometric="MONOCHROME1"), True)
    add("dicom-named.png", good_dcm, True)  # DICOM content is recognised by its DICM magic
    add(UNICODE_NAME, good_png, True)
    add("good\nnewline.png", good_png, True)

    # Broken files.
    add("zero-bytes.png", b"", False, r"^empty file \(0 bytes\)$")
    add("truncated.png", good_png[: len(good_png) // 2], False, r"^truncated PNG")
    add("truncated.jpg", good_jpg[: len(good_jpg) // 2], False, r"truncated JPEG")
    add("corrupt-crc.png", good_png[:5000] + bytes([good_png[5000] ^ 0x10]) + good_png[5001:], False, r"^corrupt PNG \(checksum error")
    add("cut-with-end-marker.jpg", good_jpg[: len(good_jpg) // 2] + b"\xff\xd9", False, r"^corrupt JPEG data")
    add("truncated.dcm", good_dcm[: len(good_dcm) // 2], False, r"DICOM")
    add("text.png", b"Dear clinic,\nthis is a text file, not an image.\n", False, r"not a readable image")
    add("png-named.dcm", good_png, False, r"named \.dcm but holds a PNG image")
    add("tiny-1x1.png", encode(".png", np.full((1, 1), 128, np.uint8)), False, r"1x1 pixels.*too small")
    add("strip-10x100000.png", encode(".png", np.full((10, 100000), 128, np.uint8)), False, r"100000x10 pixels.*aspect ratio")
    add("bomb-20000x20000.png", bomb_png(), False, r"20000x20000 pixels, over the limit")
    add("claims-30000x30000.png", png_claiming(30000, 30000), False, r"30000x30000 pixels, over the limit")
    add("claims-30000x30000.jpg", jpeg_claiming(30000, 30000), False, r"30000x30000 pixels, over the limit")
    add("progressive-400-scans.jpg", many_scans_jpeg(good, 400), False, r"^JPEG has more than 100 scans")
    add("progressive-10-scans.jpg", many_scans_jpeg(good, 10), True)  # an ordinary progressive JPEG passes
    add("claims-30000x30000.tif", tiff_claiming(30000, 30000), False, r"30000x30000 pixels, over the limit")
    add(NEWLINE_NAME, b"\x89PNG\r\n\x1a\n broken", False, r"truncated or corrupt")
    add(UNDECODABLE_NAME, b"GIF89a not supported", False, r"not a readable image")

    # DICOMs.
    from pydicom.uid import HTJ2K, JPEG2000Lossless, JPEGLSLossless

    add("dicom-deflate-bomb.dcm", deflate_bomb_dicom(), False, r"Deflated transfer syntax")
    j2k_bomb = jpeg2000_bomb_dicom()
    if j2k_bomb is None:
        cases.append(Case("dicom-jpeg2000-bomb.dcm", False, skip="this OpenCV cannot write JPEG 2000"))
    else:
        add("dicom-jpeg2000-bomb.dcm", j2k_bomb, False, r"compressed image is 30000x30000 pixels but its header says 64x64")
    add("dicom-no-pixels.dcm", dicom_bytes(None), False, r"no pixel data")
    add("dicom-ct.dcm", dicom_bytes(good16, modality="CT"), False, r"modality is 'CT', not mammography")
    add("dicom-3-frames.dcm", dicom_bytes(good16, frames=3), False, r"3 frames")
    add("dicom-short-pixels.dcm", dicom_bytes(good16, pixel_bytes=good16.astype("<u2").tobytes()[:5000]), False, r"cannot decode DICOM pixel data")
    add("dicom-claims-30000x30000.dcm", dicom_bytes(rows_columns=(30000, 30000), pixel_bytes=b"\0" * 64), False, r"30000x30000 pixels, over the limit")
    # Codestreams whose headers give the right size (so they reach the decoders) followed by junk no decoder can read.
    junk = bytes(range(256)) * 4
    j2k = b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, 256, 320, 0, 0) + junk
    jpeg_ls = b"\xff\xd8\xff\xf7" + struct.pack(">HBHHB", 11, 12, 320, 256, 1) + junk
    add("dicom-jpeg2000-bogus.dcm", dicom_bytes(good16, pixel_bytes=j2k, transfer_syntax=JPEG2000Lossless), False, r"^cannot decode DICOM pixel data")
    add("dicom-htj2k-bogus.dcm", dicom_bytes(good16, pixel_bytes=j2k, transfer_syntax=HTJ2K), False, r"^cannot decode DICOM pixel data")
    add("dicom-jpegls.dcm", dicom_bytes(good16, pixel_bytes=jpeg_ls, transfer_syntax=JPEGLSLossless), False, r"^cannot decode DICOM pixel data")
    add("dicom-jpeg2000-no-size.dcm", dicom_bytes(good16, pixel_bytes=b"\xff\x4f\xff\x51" + junk, transfer_syntax=JPEG2000Lossless), False,
        r"compressed pixel data is damaged")

    # Things that are not regular readable files.
    (folder / "folder.png").mkdir()
    cases.append(Case("folder.png", False, r"is a directory"))
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    cases.append(Case("loop-a.png", False, r"symbolic link"))  # a loop; for the daemon, whichever link is
    # quarantined second is by then dangling (its target has moved to failed/)
    cases.append(Case("loop-b.png", False, r"symbolic link"))
    os.symlink("nowhere.png", folder / "dangling.png")
    cases.append(Case("dangling.png", False, r"^broken symbolic link \(its target does not exist\)$"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.png")
        cases.append(Case("fifo.png", False, r"not a regular file"))
    if running_as_root():
        cases.append(Case("unreadable.png", False, r"permission denied", skip="running as root: file permissions do not stop root reading"))
    else:
        (folder / "unreadable.png").write_bytes(good_png)
        os.chmod(folder / "unreadable.png", 0)
        cases.append(Case("unreadable.png", False, r"permission denied"))
    return sorted(cases, key=lambda case: case.name)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    target.mkdir(parents=True, exist_ok=False)
    for case in build_corpus(target):
        print(f"{'ok   ' if case.ok else 'error'} {case.name!r} {case.reason or ''} {case.skip}")
