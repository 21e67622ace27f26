"""Preprocessing: what the model sees for 8-bit, 16-bit, colour, tiny and huge images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_birads.errors import InputError
from edge_birads.preprocess import PreprocessSpec, apply_clahe, area_rows, breast_bounding_box, prepare, row_sums, value_range

SPEC = PreprocessSpec()


def test_8bit_is_divided_by_255_as_in_the_paper():
    image = np.full((300, 200), 51, np.uint8)
    out = prepare(image, SPEC)
    assert out.shape == (224, 224, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


def test_12bit_in_16bit_uses_the_real_range_not_65535():
    gradient = np.tile(np.linspace(0, 4095, 512), (512, 1)).astype(np.uint16)
    out = prepare(gradient, SPEC)
    assert out.max() == pytest.approx(1.0, abs=0.01)
    assert out.min() == pytest.approx(0.0, abs=0.01)
    assert out.mean() == pytest.approx(0.5, abs=0.02)


def test_float_dicom_values_are_scaled_by_their_range():
    image = np.linspace(-1000.0, 3000.0, 100 * 100, dtype=np.float32).reshape(100, 100)
    assert value_range(image) == (-1000.0, 3000.0)
    out = prepare(image, SPEC)
    assert 0.0 <= out.min() < 0.02 and 0.98 < out.max() <= 1.0


def test_one_pixel_image_becomes_a_constant_input():
    out = prepare(np.array([[255]], np.uint8), SPEC)
    assert out.shape == (224, 224, 1)
    assert np.all(out == 1.0)


def test_constant_16bit_image_does_not_divide_by_zero():
    out = prepare(np.full((64, 64), 700, np.uint16), SPEC)
    assert np.all(out == 0.0)


def test_very_large_image_is_resized_without_error():
    image = np.random.default_rng(1).integers(0, 65535, (6000, 4800), dtype=np.uint16)
    out = prepare(image, SPEC)
    assert out.shape == (224, 224, 1)
    assert 0.45 < out.mean() < 0.55  # area averaging of uniform noise


def test_prepare_is_pure(breast_like):
    before = breast_like.copy()
    prepare(breast_like, PreprocessSpec(crop_to_breast=True, clahe_clip_limit=2.0))
    np.testing.assert_array_equal(breast_like, before)


def test_non_2d_input_is_an_input_error():
    with pytest.raises(InputError):
        prepare(np.zeros((10, 10, 3), np.uint8), SPEC)


def test_breast_box_finds_the_bright_region(breast_like):
    top, bottom, left, right = breast_bounding_box(breast_like, 0.0, 255.0)
    # The half-ellipse spans rows 36..476 and columns 0..250.
    assert 20 <= top <= 45 and 465 <= bottom <= 495
    assert left == 0 and 240 <= right <= 265


def test_crop_to_breast_fills_the_input_with_tissue(breast_like):
    plain = prepare(breast_like, SPEC)
    cropped = prepare(breast_like, PreprocessSpec(crop_to_breast=True))
    assert (cropped > 0.1).mean() > (plain > 0.1).mean() + 0.2


def test_blank_image_keeps_the_whole_frame():
    assert breast_bounding_box(np.zeros((50, 60), np.uint8), 0.0, 255.0) == (0, 50, 0, 60)


def test_clahe_raises_local_contrast_and_stays_in_range():
    rng = np.random.default_rng(2)
    flat = (0.5 + 0.02 * rng.standard_normal((224, 224))).astype(np.float32)
    out = apply_clahe(flat, 2.0, (8, 8))
    assert out.std() > flat.std() * 2
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_spec_round_trips_through_the_card_dict():
    spec = PreprocessSpec(height=448, width=448, crop_to_breast=True, clahe_clip_limit=2.0, clahe_tile_grid=(4, 4))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({"interpolation": "cubic-magic"})


def asymmetric_gradient(rows: int = 300, cols: int = 200) -> np.ndarray:
    """Rows brighten 0 -> 180 downwards, columns add 0 -> 75 rightwards: a transpose or swap changes every value."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (r * 180.0 / (rows - 1) + c * 75.0 / (cols - 1)).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(48, 32), (32, 48)])
def test_non_square_spec_is_height_by_width_as_opencv_resizes_it(height, width):
    """A non-square model input: preprocessing must not swap width and height (the image would reach it scrambled)."""
    import cv2

    image = asymmetric_gradient()
    out = prepare(image, PreprocessSpec(height=height, width=width))
    assert out.shape == (height, width, 1)
    expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    np.testing.assert_allclose(out[:, :, 0], expected, atol=1e-6)
    # Orientation kept: dark top-left corner, bright bottom-right.
    assert out[0, 0, 0] < 0.05 and out[-1, -1, 0] > 0.95


def test_non_square_spec_with_breast_crop_resizes_the_crop_to_height_by_width(breast_like):
    import cv2

    spec = PreprocessSpec(height=40, width=24, crop_to_breast=True)
    top, bottom, left, right = breast_bounding_box(breast_like, 0.0, 255.0)
    out = prepare(breast_like, spec)
    expected = cv2.resize(breast_like[top:bottom, left:right], (24, 40), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    assert out.shape == (40, 24, 1)
    np.testing.assert_allclose(out[:, :, 0], expected, atol=1e-6)


AREA_CASES = {  # image, rows out: blocks of 2 rows to 480 rows, sums that fill (or would overflow) uint16 and uint32
    "bytes, small blocks": (np.random.default_rng(1).integers(0, 256, (901, 70)).astype(np.uint8), 224),
    "bytes of 255, blocks of 257 rows": (np.full((257 * 3, 9), 255, np.uint8), 3),
    "bytes of 255, blocks of 258-259 rows": (np.full((775, 9), 255, np.uint8), 3),
    "16 bits at the maximum": (np.full((960, 9), 65535, np.uint16), 2),
    "16 bits": (np.random.default_rng(2).integers(0, 65536, (700, 50)).astype(np.uint16), 113),
    "booleans": (np.random.default_rng(3).integers(0, 2, (600, 40)).astype(bool), 7),
}


@pytest.mark.parametrize("case", list(AREA_CASES))
def test_area_rows_is_opencvs_area_average_without_rounding(case):
    image, height = AREA_CASES[case]
    width = max(1, image.shape[1] // 3)
    ours = area_rows(area_rows(image, height).T, width).T
    theirs = cv2.resize(image.astype(np.float64), (width, height), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)  # OpenCV weighs in float32


def test_row_sums_hold_a_fraction_of_a_byte_image_and_nothing_of_it():
    """What the DICOM byte-plane path keeps of the high plane while the low one is decoded: the image can go."""
    image, height = AREA_CASES["bytes, small blocks"]
    rows = row_sums(image, height)
    assert rows.sums.dtype == np.uint16
    assert not any(np.shares_memory(kept, image) for kept in (rows.sums, rows.cut))
    assert rows.sums.nbytes + rows.cut.nbytes < 0.4 * height * image.shape[1] * 8  # the float64 result
    np.testing.assert_array_equal(rows.averaged(), area_rows(image, height))
    assert row_sums(image[:896], height).cut.size == 0  # 4 whole rows a block: no boundary cuts a row
