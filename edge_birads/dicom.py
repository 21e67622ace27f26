"""DICOM decoding: modality LUT, VOI LUT / window, MONOCHROME1 inversion.

pydicom is imported lazily so that users who only classify PNGs never pay for
it. Patient identifiers are never read into results or messages here.

The display pipeline (modality LUT, then VOI LUT or window, then MONOCHROME1
inversion) is a function of each stored value alone, so it is evaluated once per
possible stored value with pydicom's own ``apply_modality_lut`` /
``apply_voi_lut`` into a table, and the image is looked up in it: never a
full-size float64 pass. Two outputs come from that one table: the display values
as float32 (``read_file``, exactly pydicom's values) and, for the model, the same
values scaled onto uint16 (``for_model``), which ``prepare`` resizes as integers
before any float work (its min..max scaling makes the two the same picture).
"""

from __future__ import annotations

import io
import struct
import sys
import warnings

import cv2
import numpy as np

from edge_birads.dicom_header import RLE_LOSSLESS, one_fragment, read_plain_rle
from edge_birads.errors import InputError, InputTimeout
from edge_birads.headers import DICOM_MAGIC_OFFSET, is_dicom_bytes, jpeg_dimensions
from edge_birads.limits import check_size
from edge_birads.preprocess import PreprocessSpec, area_rows, finish, prepare, row_sums
from edge_birads.quiet import captured_stderr

MAMMOGRAPHY_MODALITIES = frozenset({"MG"})
DICOM_EXTRA = "pip install 'edge-birads[dicom]'"
NOT_DICOM = "not a DICOM file (no DICM marker and no DICOM image elements)"
# What any DICOM image has; a file without the DICM marker and without these is not DICOM at all.
IMAGE_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "Rows", "Modality", "SOPClassUID")
# pydicom inflates a Deflated-syntax file in one unbounded zlib call: a few KB can claim gigabytes.
DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"
# The fastest maintained decoder plugin per transfer syntax, when its package is installed (the [dicom] extra);
# pydicom's own decoder otherwise, with the same output (lossless: the same integers). pydicom 3.0 lists pylibjpeg
# first for every syntax; naming it here keeps RLE on pylibjpeg-rle (3-5x faster than pydicom's numpy decoder)
# whatever a later pydicom's order, and lets a damaged file fall back to pydicom's own decoder for its message.
FAST_PLUGINS = {RLE_LOSSLESS: "pylibjpeg"}  # pylibjpeg-rle
# Stored values with more distinct values than this (32-bit data) are mapped without a table.
MAX_TABLE = 1 << 16
# Stored values spanning fewer levels than this are spread onto 0..65535 for the model, so integer resizing
# rounds by a negligible fraction of an int8 step (an 8-bit image resized as uint8 would be off by up to half a step).
MIN_SPAN = 1 << 12
DOWNLOAD_HELPERS = ("requests", "tqdm")
# The 64-byte RLE header of a frame made of one segment that starts right after it (a byte plane on its own).
MASK_ROWS = 256  # rows per band when the low bytes under an extreme high byte are searched
ONE_SEGMENT = struct.pack("<16L", 1, 64, *([0] * 14))


def _pydicom():
    if "pydicom" not in sys.modules:
        # pydicom.data imports requests and tqdm when they are installed, only to download pydicom's own test
        # files (never done here, and pydicom falls back to urllib without them): ~45 ms and ~5 MiB of a cold
        # DICOM classify. They are hidden while pydicom loads, unless something loaded them already.
        hidden = [name for name in DOWNLOAD_HELPERS if name not in sys.modules]
        sys.modules.update(dict.fromkeys(hidden))
        try:
            import pydicom  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the install
            raise InputError(f"DICOM support needs pydicom: {DICOM_EXTRA}") from None
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
    import pydicom
    from pydicom import pixels

    return pydicom, pixels


def decode_dicom(data: bytes, limits, for_model: bool = False) -> np.ndarray:
    """Decode one single-frame mammography DICOM to a 2-D array of display values.

    float32 display values (pydicom's modality then VOI LUT), or with
    ``for_model`` the same values scaled linearly onto uint16 0..65535 (a
    full-size float32 copy never exists). Both keep the display orientation
    of MONOCHROME2 (bright = dense).
    pydicom's warnings are silenced: they go to stderr (breaking one line per
    bad file) and some quote element values, which may be patient identifiers.
    """
    _refuse_early(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode(data, limits, for_model)


def _refuse_early(data: bytes) -> None:
    """What is refused before pydicom sees the bytes."""
    if DEFLATED_SYNTAX in data[:16384]:
        raise InputError("DICOM uses the Deflated transfer syntax, which is not supported (a decompression-bomb risk)")
    if data[128:136] == b"DICM\x02\x00\x00\x00" and data[136:140] not in (b"UL\x04\x00", b"\x04\x00\x00\x00"):
        # A group length that is not a 4-byte UL (say, a nested sequence) is formatted by pydicom into a log
        # message even when logging is off: the fuzzer found 849 bytes that take 0.5 s here (36 s instrumented).
        raise InputError("not a readable DICOM file (its file meta group length is malformed)")


def model_input(data: bytes, limits, spec: PreprocessSpec) -> np.ndarray:
    """What the model reads from a DICOM: ``prepare(decode_dicom(data, limits, for_model=True), spec)``.

    Where the file allows it (RLE Lossless, 8 or 16 unsigned bits, no LUT, pylibjpeg-rle installed, a spec
    that shrinks by area without cropping) the full-size image never exists: the RLE segments are decoded
    one byte plane each and shrunk plane by plane (``_rle_model_input``). Any other file, or one that path
    cannot read, goes through ``decode_dicom`` and ``prepare`` (pydicom's decoding, with its messages).
    """
    _refuse_early(data)
    dataset, photometric = read_plain_rle(data), None  # the plain layout needs no pydicom: a cold start skips its import
    if dataset is not None:
        try:
            photometric = _check_header(dataset, _modality(dataset), True, True, limits)
        except InputTimeout:
            raise
        except InputError:  # pydicom reads the file again and says why, as for any other file
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if photometric is None:
            dataset, pixel_at, photometric = _read(data, limits, header_only=True)
        else:
            pixel_at = dataset.pixel_at
        tensor = _rle_model_input(data, dataset, pixel_at, photometric, spec)
        if tensor is not None:
            return tensor
        return prepare(_decode(data, limits, True), spec)


def _decode(data: bytes, limits, for_model: bool) -> np.ndarray:
    dataset, _, photometric = _read(data, limits, header_only=False)
    _check_compressed_size(dataset, int(dataset.Rows), int(dataset.Columns))
    array = _pixel_array(dataset)
    if array.ndim != 2:
        raise InputError(f"DICOM pixel data has shape {array.shape}, expected one 2-D frame")
    try:
        return display_values(array, dataset, photometric == "MONOCHROME1", for_model)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot apply the DICOM LUTs ({type(exc).__name__})") from None


def _read(data: bytes, limits, header_only: bool):
    """pydicom's dataset of ``data``, the offset where its parsing stopped and the photometric interpretation,
    once the header is checked (InputError otherwise).

    ``header_only``: the elements before the pixel data (read without copying it), the offset being that
    of the pixel data element.
    """
    pydicom, _ = _pydicom()
    marked = is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4])
    source = io.BytesIO(data)
    try:
        dataset = pydicom.dcmread(source, force=True, stop_before_pixels=header_only)
        modality = _modality(dataset)  # a damaged value is an unreadable file
    except InputError:
        raise  # the time limit fired inside pydicom
    except Exception as exc:  # pydicom raises many types for damaged files
        if not marked:
            raise InputError(NOT_DICOM) from None
        raise InputError(f"not a readable DICOM file ({type(exc).__name__})") from None
    if header_only:  # pydicom stopped at the pixel data element (group 7FE0), or read to the end: none
        has_pixels = data[source.tell() : source.tell() + 2] in (b"\xe0\x7f", b"\x7f\xe0")
    else:
        has_pixels = any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return dataset, source.tell(), _check_header(dataset, modality, marked, has_pixels, limits)


def _modality(dataset) -> str:
    return str(dataset.get("Modality", "") or "").strip().upper()


def _check_header(dataset, modality: str, marked: bool, has_pixels: bool, limits) -> str:
    """The checks of a DICOM's header (InputError if it fails one); its photometric interpretation.

    ``dataset``: pydicom's, or a :class:`~edge_birads.dicom_header.PlainHeader` (its ``get`` and ``in``).
    """
    if not marked and not has_pixels and not any(keyword in dataset for keyword in IMAGE_KEYWORDS):
        # Named .dcm, but pydicom's forced read of any bytes finds an element or two of noise.
        raise InputError(NOT_DICOM)
    if modality and modality not in MAMMOGRAPHY_MODALITIES:
        raise InputError(f"DICOM modality is {modality[:16]!r}, not mammography (MG)")
    if not has_pixels:
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
    return photometric


def _rle_model_input(data: bytes, dataset, pixel_at: int, photometric: str, spec: PreprocessSpec) -> np.ndarray | None:
    """The model's input from RLE byte planes, never the full-size image; None when this path does not apply.

    Each RLE segment holds one byte of every pixel (most significant first). pylibjpeg-rle decodes one
    segment at a time into a buffer of exactly Rows x Columns bytes (``_plane``), wrapped as a uint8 plane
    without a copy. The stored value is 256 * high + low byte, and shrinking by area is linear
    (``area_rows``), so the planes are shrunk apart and added; the image's extremes (prepare's scaling) come
    from the high plane and the low bytes where it is extreme. One full-size plane at a time: of the high
    plane, its row sums (``row_sums``), its extremes and where they lie (packed bits) are kept, and it is
    freed before the low plane is decoded. Damaged data returns None: pydicom's decoding then has the last
    word and the message.
    """
    try:
        from rle.rle import decode_frame  # pylibjpeg-rle
    except ImportError:
        return None
    try:
        rows, columns = int(dataset.get("Rows")), int(dataset.get("Columns"))
        bits = int(dataset.get("BitsAllocated", 0) or 0)
        bits_stored = int(dataset.get("BitsStored", bits) or 0)  # pydicom refuses the file unless 1..BitsAllocated
        syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
        if (syntax != RLE_LOSSLESS or bits not in (8, 16) or not 1 <= bits_stored <= bits
                or int(dataset.get("PixelRepresentation", 0) or 0) != 0
                or photometric not in ("MONOCHROME1", "MONOCHROME2") or not _is_identity(dataset)
                or spec.crop_to_breast or spec.interpolation != "area" or rows < spec.height or columns < spec.width):
            return None
        fragment = one_fragment(data, pixel_at)
        if fragment is None:
            return None
        start, end = fragment
        offsets = [offset for offset in struct.unpack("<15L", data[start + 4 : start + 64]) if offset]
        if len(offsets) != bits // 8:  # one segment per byte of a pixel; decode_frame refuses bad offsets
            return None
    except (InputError, MemoryError):
        raise
    except Exception:  # damaged data or header values: pydicom decodes it (or says why)
        return None
    segments = list(zip(offsets, offsets[1:] + [end - start]))
    high_plane = _plane(decode_frame, data, start, segments[0], rows, columns)
    if high_plane is None:
        return None
    low, high = (int(value) for value in cv2.minMaxLoc(high_plane)[:2])
    if len(segments) == 1:
        shrunk = area_rows(high_plane, spec.height)
        del high_plane
    else:
        # Only one full-size plane at a time: what is needed of the high plane (its row sums, and where it is
        # extreme as packed bits) is kept, and the high plane is freed before the low plane is decoded.
        high_rows = row_sums(high_plane, spec.height)
        where_low, where_high = _where_equal(high_plane, low), _where_equal(high_plane, high)
        del high_plane
        low_plane = _plane(decode_frame, data, start, segments[1], rows, columns)
        if low_plane is None:
            return None
        low, high = 256 * low + _low_byte(low_plane, where_low, False), 256 * high + _low_byte(low_plane, where_high, True)
        shrunk = high_rows.averaged()
        del high_rows
        shrunk *= 256
        shrunk += area_rows(low_plane, spec.height)
        del low_plane
    # Columns: cv2's area resize of the float rows (only the width changes, so it is the same area average).
    resized = cv2.resize(shrunk, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    if photometric == "MONOCHROME1":  # as display_values inverts: max + min - value
        resized = (low + high) - resized
    return finish(resized, low, high, spec)


def _plane(decode_frame, data: bytes, start: int, segment: tuple[int, int], rows: int, columns: int) -> np.ndarray | None:
    """One RLE segment of the fragment at ``start`` decoded as a rows x columns uint8 plane; None if damaged.

    pylibjpeg-rle's ``decode_frame`` takes only ``bytes``: the segment is copied once behind a one-segment
    header. It decodes into exactly rows x columns bytes whatever the runs claim (what runs past the plane is
    ignored; a segment that decodes to fewer is refused). Its ``decode_segment`` would grow with the runs
    (2 bytes can claim 128): not used.
    """
    first, last = segment
    try:
        encoded = b"".join((ONE_SEGMENT, memoryview(data)[start + first : start + last]))
        return np.frombuffer(decode_frame(encoded, rows * columns, 8, "<"), np.uint8).reshape(rows, columns)
    except (InputError, MemoryError):
        raise
    except BaseException as exc:  # damaged data (or a panic of the decoder): pydicom decodes it (or says why)
        if not isinstance(exc, Exception) and not rust_panic(exc):
            raise
        return None


def _where_equal(plane: np.ndarray, value: int) -> list[np.ndarray | None]:
    """Per band of MASK_ROWS rows, the pixels of ``plane`` equal to ``value`` as packed bits (None: no such pixel).

    At most an eighth of the plane's size, so the plane itself can be freed before the next one is decoded.
    """
    bands = []
    for top in range(0, plane.shape[0], MASK_ROWS):
        mask = cv2.compare(plane[top : top + MASK_ROWS], value, cv2.CMP_EQ)
        bands.append(np.packbits(mask, axis=None) if cv2.countNonZero(mask) else None)
    return bands


def _low_byte(low_plane: np.ndarray, where: list[np.ndarray | None], largest: bool) -> int:
    """The smallest (or ``largest``) low byte among the pixels ``where`` marks (``_where_equal`` of the high
    plane), band by band, stopping early at 0 (or 255)."""
    best, bound = None, 255 if largest else 0
    for band, packed in enumerate(where):
        if packed is None:  # no such pixel in this band
            continue
        pixels = low_plane[band * MASK_ROWS : (band + 1) * MASK_ROWS]
        mask = np.unpackbits(packed, count=pixels.size).reshape(pixels.shape)
        smallest, biggest = cv2.minMaxLoc(pixels, mask=mask)[:2]
        found = int(biggest if largest else smallest)
        best = found if best is None else (max if largest else min)(best, found)
        if best == bound:
            break
    return best


def _pixel_array(dataset) -> np.ndarray:
    """The stored values, decoded by the fastest installed plugin for the syntax, else by pydicom's default."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    plugin = FAST_PLUGINS.get(str(syntax or ""))
    if plugin is not None and plugin_available(str(syntax), plugin):
        dataset.pixel_array_options(decoding_plugin=plugin)
        try:
            with captured_stderr():
                return dataset.pixel_array
        except InputError:
            raise
        except BaseException as exc:  # damaged data: pydicom's own decoder has the last word (and the message)
            if rust_panic(exc):  # not pydicom's decoder: it would follow RLE runs however far they claim (x64 the file)
                name = getattr(syntax, "name", None) or str(syntax)
                raise InputError(f"cannot decode DICOM pixel data (transfer syntax {name}): its decoder stopped on damaged data") from None
            if not isinstance(exc, Exception):
                raise
            dataset.pixel_array_options(decoding_plugin="")
    try:
        with captured_stderr():  # codec libraries may print; the exception below says what matters
            return dataset.pixel_array
    except InputError:
        raise
    except Exception as exc:  # missing decoder, short pixel data, bad transfer syntax
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        text = " ".join(str(exc).split())
        if "missing" in text and "dependenc" in text:  # pydicom: every decoder plugin for this syntax lacks its package
            raise InputError(f"cannot decode DICOM pixel data compressed as {name}: the decoders are not installed ({DICOM_EXTRA})") from None
        raise InputError(f"cannot decode DICOM pixel data (transfer syntax {name}): {_first_words(exc)}") from None


def rust_panic(exc: BaseException) -> bool:
    """True for a panic inside a Rust extension (pyo3's PanicException; pylibjpeg-rle 2.2.0 panics on RLE runs
    that pass the end of a 16-bit frame). It derives from BaseException, so ``except Exception`` lets it through
    and it would end a whole batch; the file is refused instead."""
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"


def plugin_available(syntax: str, plugin: str) -> bool:
    """True when pydicom can decode ``syntax`` with ``plugin`` (its packages are installed)."""
    try:
        from pydicom.pixels import get_decoder

        return plugin in get_decoder(syntax).available_plugins
    except Exception:  # pydicom has no decoder for this syntax at all
        return False


def display_values(stored: np.ndarray, dataset, monochrome1: bool, for_model: bool) -> np.ndarray:
    """The modality LUT, VOI LUT / window and MONOCHROME1 inversion of ``stored``, through one table.

    Every step is a function of the stored value alone, so pydicom's own LUT functions run once on
    each possible stored value (at most 65,536 of them) and the image is looked up in the result.
    """
    _, pixels = _pydicom()
    if stored.dtype.kind not in "ui":  # float pixel data: no table, pydicom's functions on the image
        return _finish(np.asarray(pixels.apply_voi_lut(pixels.apply_modality_lut(stored, dataset), dataset), np.float32),
                       monochrome1, for_model)
    low, high = int(stored.min()), int(stored.max())
    if for_model and not monochrome1 and stored.dtype == np.uint16 and high - low >= MIN_SPAN and _is_identity(dataset):
        # No LUT: prepare's min..max scaling is all there is, and integer resizing rounds by at most 1/2**13 of the range.
        return stored
    if high - low + 1 > MAX_TABLE:
        values = pixels.apply_voi_lut(pixels.apply_modality_lut(stored, dataset), dataset)
        return _finish(np.asarray(values, np.float32), monochrome1, for_model)
    domain = np.arange(low, high + 1, dtype=np.int64).astype(stored.dtype)
    table = np.asarray(pixels.apply_voi_lut(pixels.apply_modality_lut(domain, dataset), dataset), np.float32)
    if not np.all(np.isfinite(table)):
        raise InputError("DICOM pixel data contains NaN or infinite values")
    index = stored if low == 0 and stored.dtype.kind == "u" and stored.itemsize <= 2 else _offset(stored, low)
    if not for_model:
        values = table[index]
        if monochrome1:
            values = values.max() + values.min() - values
        return values
    return _to_uint16(table, monochrome1)[index]  # scaled over every value low..high, the image's own extremes included


def _offset(stored: np.ndarray, low: int) -> np.ndarray:
    """Stored values minus ``low`` as table indices (uint16 when they fit, without a wider full-size copy)."""
    if stored.itemsize <= 2:  # modulo 2**bits on the unsigned view: exact, since 0 <= stored - low < 2**bits
        unsigned = np.dtype(f"u{stored.itemsize}")
        return np.subtract(stored.view(unsigned), np.array(low).astype(stored.dtype).view(unsigned))
    return np.subtract(stored, low, dtype=np.int64)


def _is_identity(dataset) -> bool:
    """True when neither a modality LUT / rescale nor a VOI LUT / window changes the stored values."""
    if "ModalityLUTSequence" in dataset or "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        return False
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return slope == 1.0 and intercept == 0.0


def _to_uint16(values: np.ndarray, monochrome1: bool) -> np.ndarray:
    """Display values scaled linearly onto 0..65535 (inverted for MONOCHROME1): prepare's min..max scaling undoes it."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint16)
    unit = (np.float64(high) - values) if monochrome1 else (values - np.float64(low))
    return np.rint(unit * (65535.0 / (high - low))).astype(np.uint16)


def _finish(values: np.ndarray, monochrome1: bool, for_model: bool) -> np.ndarray:
    """Float display values (no table): the finite check, MONOCHROME1, and uint16 for the model."""
    if not np.all(np.isfinite(values)):
        raise InputError("DICOM pixel data contains NaN or infinite values")
    if for_model:
        return _to_uint16(values, monochrome1)
    if monochrome1:
        values = values.max() + values.min() - values
    return values


def _check_compressed_size(dataset, rows: int, columns: int) -> None:
    """Refuse compressed pixel data whose own header claims another size than Rows x Columns.

    JPEG 2000 and JPEG decoders allocate what the codestream says, not what
    the DICOM header says: a 64x64 DICOM holding a codestream that claims
    30000x30000 made OpenJPEG take 1.9 GB here.
    """
    try:
        if not dataset.file_meta.TransferSyntaxUID.is_compressed or dataset.file_meta.TransferSyntaxUID == RLE_LOSSLESS:
            return  # RLE has no codestream header: its bytes may hold a JPEG marker by chance
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
