"""Figures behind the "what was tried" part of RESULTS.md: PNG decoding, Pillow, sha256.

    python benchmarks/alternatives.py --image IMG.png [--model M.tflite] [--repeats 30]

- PNG decode: cv2.imdecode vs zlib inflate of the same file's IDAT data alone (the part no
  PNG decoder built on stock zlib avoids) vs Pillow, median and min over --repeats;
- import cost in a fresh process (VmHWM delta): OpenCV, Pillow, hashlib (OpenSSL), click;
- sha256 of the model: hashlib (OpenSSL) vs Python's built-in implementation (no OpenSSL).
Linux only (VmHWM).
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import subprocess
import sys
import time
import zlib

from edge_birads.classifier import default_model_path


def timed(function, repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples), min(samples)


def show(label: str, median_min: tuple[float, float]) -> None:
    print(f"  {label:<20}{median_min[0]:6.2f} / {median_min[1]:6.2f}")


def idat(data: bytes) -> bytes:
    """The concatenated zlib stream of a PNG."""
    position, chunks = 8, []
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            chunks.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return b"".join(chunks)


IMPORT_COST = (
    "import sys\n"
    "def hwm(): return int([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]) / 1024\n"
    "import numpy\n"
    "before = hwm()\n"
    "__import__(sys.argv[1])\n"
    "print(round(hwm() - before, 1))\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import cv2
    import numpy as np

    with open(args.image, "rb") as handle:
        data = handle.read()
    buffer = np.frombuffer(data, np.uint8)
    stream = idat(data)
    print(f"PNG decode of {args.image} ({len(data):,} bytes), ms median / min:")
    show("cv2.imdecode", timed(lambda: cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED), args.repeats))
    show("zlib inflate only", timed(lambda: zlib.decompress(stream), args.repeats))
    try:
        from PIL import Image

        show("Pillow", timed(lambda: np.asarray(Image.open(io.BytesIO(data))), args.repeats))
    except ImportError:
        print("  Pillow              not installed")
    print("import cost after numpy, fresh process (MiB of peak RSS):")
    for module in ("cv2", "PIL.Image", "hashlib", "click"):
        done = subprocess.run([sys.executable, "-c", IMPORT_COST, module], capture_output=True, text=True, check=False)
        print(f"  {module:<12} {done.stdout.strip() or 'not installed'}")
    with open(args.model, "rb") as handle:
        model = handle.read()
    import hashlib

    print(f"sha256 of the model ({len(model):,} bytes), ms median / min:")
    show("hashlib (OpenSSL)", timed(lambda: hashlib.sha256(model).hexdigest(), 5))
    builtin = None
    for name in ("_sha2", "_sha256"):  # Python >= 3.12 / <= 3.11
        try:
            builtin = __import__(name).sha256
            break
        except ImportError:
            continue
    if builtin is not None:
        show("built-in (no SSL)", timed(lambda: builtin(model).hexdigest(), 5))


if __name__ == "__main__":
    main()
