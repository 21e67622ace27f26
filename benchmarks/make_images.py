"""Write the 1024x1024 8-bit PNGs the latency target is stated for.

    python benchmarks/make_images.py --out /tmp/bench-images

From each sample mammogram installed with edge-birads (edge_birads/samples: real CBIS-DDSM, 1024 px tall):
padded with black to 1024x1024, the way a mammogram's background looks.
Plus one synthetic image (edge_birads.bench.synthetic_mammogram), the same
one `edge-birads bench` uses when no samples are installed. Nothing is
downloaded; the images are regenerated on every run and never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge_birads.bench import SAMPLES, synthetic_mammogram
from edge_birads.decode import read_file

SIDE = 1024


def pad_to_square(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Fit inside side x side (keeping the aspect ratio), pad with black on the right/bottom."""
    scale = side / max(image.shape)
    if scale != 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    out = np.zeros((side, side), image.dtype)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for sample in sorted(SAMPLES.glob("*.png")):
        target = args.out / f"{sample.stem}-1024.png"
        cv2.imwrite(str(target), pad_to_square(read_file(sample)))
        print(target)
    print(synthetic_mammogram(args.out / "synthetic-1024.png"))


if __name__ == "__main__":
    main()
