"""Models with a lesion map: the runtime finds both outputs, and `classify --heatmap` draws the map on the original image."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_birads.cli import cli
from edge_birads.heatmap import LesionMap, heatmap_name

def bright_square_png(tmp_path: Path, name: str = "square.png") -> Path:
    """A 400x300 (rows x cols) dark image with one bright square at rows 310-370, cols 10-60."""
    image = np.full((400, 300), 20, np.uint8)
    image[310:370, 10:60] = 250
    path = tmp_path / name
    assert cv2.imwrite(str(path), image)
    return path


def test_the_runtime_finds_the_probabilities_and_the_map_whatever_their_order(map_model, tmp_path):
    from edge_birads.classifier import Classifier

    classifier = Classifier(map_model)
    assert classifier.has_lesion_map
    result, lesion_map = classifier.explain_file(bright_square_png(tmp_path))
    assert result.ok and abs(sum(result.prediction.probabilities.values()) - 1) < 1e-5
    assert lesion_map.values.shape == (4, 4)
    assert lesion_map.box == (0, 400, 0, 300)
    row, col = lesion_map.hottest()
    # The hottest 16x16 cell of the 64x64 input is the one holding the square: rows 300-400, cols 0-75 of the original.
    assert (row, col) == (350.0, 37.5)
    # classify_file gives the same record as explain_file.
    same = classifier.classify_file(bright_square_png(tmp_path))
    assert same.prediction == result.prediction


def test_hottest_maps_back_through_the_crop_box():
    values = np.zeros((4, 2), np.float32)
    values[3, 0] = 1.0
    lesion_map = LesionMap(np.zeros((1000, 600), np.uint8), values, (100, 900, 200, 600))
    assert lesion_map.hottest() == (100 + 3.5 * 200, 200 + 0.5 * 200)


def test_classify_heatmap_writes_a_picture_in_the_original_geometry_for_a_real_dicom(map_model, cbis_dicoms, tmp_path):
    import pydicom

    dicom = cbis_dicoms[0]
    out = tmp_path / "maps"
    result = CliRunner().invoke(cli, ["classify", "--model", str(map_model), "--heatmap", str(out), "--format", "jsonl", str(dicom)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.splitlines()[0])
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"{dicom.stem}.heatmap.png"]
    picture = cv2.imread(str(written[0]), cv2.IMREAD_COLOR)
    ds = pydicom.dcmread(dicom, stop_before_pixels=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    scale = min(1.0, 1024 / max(rows, cols))
    image_rows, image_cols = round(rows * scale), round(cols * scale)
    assert picture.shape[1] == image_cols
    assert picture.shape[0] > image_rows  # the caption bar below the image
    image_part = picture[:image_rows]
    # The overlay colours the image (a grey picture has equal channels everywhere).
    assert (np.ptp(image_part.astype(int), axis=2) > 30).mean() > 0.05
    # No patient identifier on the picture's file name, and the record is the one printed.
    assert str(ds.PatientID) not in written[0].name
    assert record["file"].endswith(dicom.name) and record["error"] is None


def test_heatmap_with_a_model_without_a_map_is_one_clear_error(example_pngs, tmp_path):
    result = CliRunner().invoke(cli, ["classify", "--heatmap", str(tmp_path / "maps"), str(example_pngs[0])])
    assert result.exit_code == 1
    assert result.output == "Error: model default has no lesion map: --heatmap needs a model that outputs one\n"
    assert not (tmp_path / "maps").exists()


def test_heatmap_names_are_numbered_when_stems_repeat():
    taken: set[str] = set()
    assert [heatmap_name(n, taken) for n in ("a/x.dcm", "b/x.dcm", "x.png", "y")] == [
        "x.heatmap.png", "x-2.heatmap.png", "x-3.heatmap.png", "y.heatmap.png"
    ]


@pytest.mark.parametrize("order", [0, 1])
def test_find_outputs_picks_by_shape_in_either_order_and_refuses_a_guess(order):
    from edge_birads.classifier import find_outputs
    from edge_birads.errors import ModelError

    probs = {"index": 7, "shape": np.array([1, 3])}
    lesion_map = {"index": 9, "shape": np.array([1, 32, 32, 1])}
    details = [probs, lesion_map] if order == 0 else [lesion_map, probs]
    assert find_outputs(details, 3) == (probs, lesion_map)
    assert find_outputs([probs], 3) == (probs, None)
    with pytest.raises(ModelError, match="are not 3 probabilities"):
        find_outputs([probs, {"index": 8, "shape": np.array([1, 3])}], 3)
    with pytest.raises(ModelError, match="are not 3 probabilities"):
        find_outputs([lesion_map], 3)
