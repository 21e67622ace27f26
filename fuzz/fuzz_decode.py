"""Fuzz target: bytes in, a model input tensor or an InputError out, nothing else.

Covers the whole decode-and-preprocess path a file takes in `classify`:
format sniffing, header size checks, OpenCV, pydicom and its pixel decoders,
LUTs, MONOCHROME1, and `prepare`. Any other exception, or a tensor that is
not finite (224, 224, 1) float32 in [0, 1], is a finding: atheris then
writes the input as ``crash-<sha1>`` and exits non-zero.

    # short run (CI): seeds come from the hostile corpus
    python fuzz/fuzz_decode.py -max_total_time=60 fuzz/corpus
    # long run, one process
    python fuzz/fuzz_decode.py -max_total_time=900 -print_final_stats=1 fuzz/corpus
    # reproduce a finding
    python fuzz/fuzz_decode.py crash-<sha1>

The first input byte picks the file suffix the decoder is told (none, .png
or .dcm), so the fuzzer also reaches the preamble-less DICOM path, the
preprocessing, and whether the input goes the way ``classify`` reads a file
(``model_input``: a DICOM's RLE byte planes and its header read without
pydicom, ``edge_birads.dicom_header``) or through ``decode_bytes`` and ``prepare``. Limits are
small (4 MB, 4 megapixels) so each input stays fast; the limit checks
themselves are the same code at any size.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["edge_birads", "pydicom"]):
    import pydicom  # imported here so its Python code is instrumented

    import edge_birads.dicom  # decode imports it lazily: here, so that it is instrumented too
    from edge_birads import dicom_header
    from edge_birads.decode import decode_bytes, model_input
    from edge_birads.errors import InputError
    from edge_birads.limits import DecodeLimits
    from edge_birads.preprocess import PreprocessSpec, prepare

import numpy as np  # noqa: E402

SUFFIXES = ("", ".png", ".dcm")
LIMITS = DecodeLimits(max_file_bytes=4 * 2**20, max_pixels=4_000_000)
SPECS = (PreprocessSpec(), PreprocessSpec(crop_to_breast=True, clahe_clip_limit=2.0))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    suffix = SUFFIXES[data[0] % len(SUFFIXES)]
    spec = SPECS[(data[0] // len(SUFFIXES)) % len(SPECS)]
    as_classify = (data[0] // (len(SUFFIXES) * len(SPECS))) % 2 == 1
    if as_classify and dicom_header.read_plain_rle(data[1:]) is not None:
        same_without_the_header_reader(data[1:], spec, suffix)
    try:
        if as_classify:
            tensor = model_input(data[1:], spec, suffix, LIMITS)
        else:
            tensor = prepare(decode_bytes(data[1:], suffix, LIMITS), spec)
    except InputError:
        return
    if tensor.shape != (spec.height, spec.width, 1) or tensor.dtype != np.float32:
        raise AssertionError(f"bad tensor {tensor.shape} {tensor.dtype}")
    if not np.all(np.isfinite(tensor)) or tensor.min() < 0.0 or tensor.max() > 1.0:
        raise AssertionError(f"tensor out of [0, 1]: {tensor.min()}..{tensor.max()}")


def outcome(data: bytes, spec, suffix: str):
    try:
        return model_input(data, spec, suffix, LIMITS)
    except InputError as exc:
        return str(exc)


def same_without_the_header_reader(data: bytes, spec, suffix: str) -> None:
    """A file edge_birads.dicom_header reads must end as it does when pydicom reads its header: the same tensor
    or the same message (the reader is stricter than pydicom, never laxer)."""
    ours = outcome(data, spec, suffix)
    reader = edge_birads.dicom.read_plain_rle
    edge_birads.dicom.read_plain_rle = lambda _data: None
    try:
        theirs = outcome(data, spec, suffix)
    finally:
        edge_birads.dicom.read_plain_rle = reader
    if isinstance(ours, str) or isinstance(theirs, str):
        same = isinstance(ours, str) and isinstance(theirs, str) and ours == theirs
    else:
        same = np.array_equal(ours, theirs)
    if not same:
        shown = [each if isinstance(each, str) else "a tensor" for each in (ours, theirs)]
        raise AssertionError(f"the header reader changed the outcome: {shown[0]} against {shown[1]} with pydicom's header")


def rle_dicom(image: np.ndarray) -> bytes:
    """A DICOM in the layout the byte-plane path and ``dicom_header`` read: RLE Lossless, explicit VR little
    endian, one fragment (pydicom's own encoder)."""
    import io

    from pydicom.uid import RLELossless

    sys.path.insert(0, str(REPO / "tests"))
    import hostile_corpus as corpus

    dataset = pydicom.dcmread(io.BytesIO(corpus.dicom_bytes(image)))
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_seeds(folder: Path) -> int:
    """Fill ``folder`` with seeds: small images of every format and the hostile corpus files under 64 KB."""
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    import cv2
    import hostile_corpus as corpus

    folder.mkdir(parents=True, exist_ok=True)
    small8 = corpus.breast_image(48, 40)
    small16 = corpus.breast_image(48, 40, depth=16)
    seeds = {
        "png8": (1, corpus.encode(".png", small8)),
        "png16": (1, corpus.encode(".png", small16)),
        "png1": (1, corpus.one_bit_png(small8)),
        "pngpal": (1, corpus.palette_png(small8)),
        "pngrgba": (1, corpus.encode(".png", cv2.cvtColor(small8, cv2.COLOR_GRAY2BGRA))),
        "jpg": (0, corpus.encode(".jpg", small8)),
        "jpgprog": (0, corpus.encode(".jpg", small8, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])),
        "tif": (0, corpus.encode(".tif", small16)),
        "bmp": (0, corpus.encode(".bmp", small8)),
        "pgm": (0, corpus.encode(".pgm", small16)),
        "dcm": (2, corpus.dicom_bytes(small16)),
        "dcm-mono1": (0, corpus.dicom_bytes(small16, photometric="MONOCHROME1")),
        "dcm-nopreamble": (2, corpus.dicom_bytes(small16)[132:]),
        "dcm-classify": (8, corpus.dicom_bytes(small16)),  # 8: .dcm, the first spec, read as classify reads it
        "dcm-rle-classify": (8, rle_dicom(corpus.breast_image(256, 240, depth=16))),
        "dcm-rle": (2, rle_dicom(corpus.breast_image(256, 240, depth=16))),
    }
    for name, (selector, data) in seeds.items():
        (folder / f"seed-{name}").write_bytes(bytes([selector]) + data)
    with tempfile.TemporaryDirectory() as scratch:
        for case in corpus.build_corpus(Path(scratch)):
            path = Path(scratch) / case.name
            if path.is_file() and not path.is_symlink() and 0 < path.stat().st_size <= 65536:
                selector = 2 if case.name.endswith(".dcm") else 0
                (folder / f"corpus-{zlib.crc32(os.fsencode(case.name)):08x}").write_bytes(bytes([selector]) + path.read_bytes())
    return len(list(folder.iterdir()))


def main() -> None:
    folders = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-") and not Path(arg).is_file()]
    for folder in folders:
        if not folder.exists() or not any(folder.iterdir()):
            print(f"seeding {folder}: {write_seeds(folder)} inputs", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
