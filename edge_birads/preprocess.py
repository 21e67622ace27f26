"""Preprocessing shared by training and the runtime: one implementation.

The deployed int8 model must see exactly what it was trained on, so
`convert/` imports these functions rather than re-implementing them. All
functions are pure: arrays in, new arrays out, no I/O.

Paper steps: grayscale, resize to 224x224, scale to [0, 1]. The model card's
``preprocessing`` block may add cropping to the breast region and CLAHE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from edge_birads.errors import InputError

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model card says the model expects (stored in the card as a dict)."""

    height: int = 224
    width: int = 224
    interpolation: str = "area"
    crop_to_breast: bool = False
    clahe_clip_limit: float | None = None
    clahe_tile_grid: tuple[int, int] = field(default=(8, 8))

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        if "clahe_tile_grid" in known:
            known["clahe_tile_grid"] = tuple(known["clahe_tile_grid"])
        spec = cls(**known)
        if spec.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {spec.interpolation!r}")
        return spec

    def to_dict(self) -> dict:
        data = asdict(self)
        data["clahe_tile_grid"] = list(self.clahe_tile_grid)
        return data


def value_range(image: np.ndarray) -> tuple[float, float]:
    """The range mapped onto [0, 1].

    8-bit images use 0..255 as in the paper. Deeper images (16-bit PNG/TIFF,
    DICOM after its LUTs) use their real min..max: a 12-bit image stored in
    16 bits would otherwise come out nearly black.
    """
    if image.dtype == np.uint8:
        return 0.0, 255.0
    low = float(image.min())
    high = float(image.max())
    return low, high


def breast_bounding_box(image: np.ndarray, low: float, high: float) -> tuple[int, int, int, int]:
    """Row/column bounds (top, bottom, left, right) of the largest bright region.

    Found on a small thumbnail with Otsu's threshold, so it costs little on a
    full-field image; labels and film borders outside the largest connected
    component are cut away. Falls back to the whole image when nothing stands out.
    """
    rows, cols = image.shape
    scale = min(1.0, 256.0 / max(rows, cols))
    thumb_size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    thumb = cv2.resize(image, thumb_size, interpolation=cv2.INTER_AREA).astype(np.float32)
    span = high - low
    if span <= 0:
        return 0, rows, 0, cols
    thumb8 = np.clip((thumb - low) * (255.0 / span), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(thumb8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return 0, rows, 0, cols
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    if w * h < 0.05 * thumb8.size:
        return 0, rows, 0, cols
    top = int(np.floor(y / scale))
    left = int(np.floor(x / scale))
    bottom = min(rows, int(np.ceil((y + h) / scale)))
    right = min(cols, int(np.ceil((x + w) / scale)))
    return top, bottom, left, right


def apply_clahe(image01: np.ndarray, clip_limit: float, tile_grid: tuple[int, int]) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on a [0, 1] float image."""
    image8 = np.clip(image01 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=tuple(int(t) for t in tile_grid))
    return clahe.apply(image8).astype(np.float32) / 255.0


def crop_box(image: np.ndarray, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of ``image`` that ``prepare`` resizes to the model input.

    The whole image unless the spec crops to the breast. A lesion map in the
    model's frame maps back onto the original image through this box.
    """
    if not spec.crop_to_breast:
        return 0, image.shape[0], 0, image.shape[1]
    return breast_bounding_box(image, *value_range(image))


def prepare(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn a decoded 2-D image into the model's float32 input (H, W, 1) in [0, 1].

    Resizing happens before conversion to float so a 50-megapixel DICOM never
    exists as a float32 copy.
    """
    if image.ndim != 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)
    low, high = value_range(image)
    if spec.crop_to_breast:
        top, bottom, left, right = breast_bounding_box(image, low, high)
        image = image[top:bottom, left:right]
    interpolation = INTERPOLATIONS[spec.interpolation]
    return finish(cv2.resize(image, (spec.width, spec.height), interpolation=interpolation), low, high, spec)


def finish(resized: np.ndarray, low: float, high: float, spec: PreprocessSpec) -> np.ndarray:
    """The rest of ``prepare`` once the image is at the model's size: ``low..high`` onto [0, 1], CLAHE, (H, W, 1)."""
    resized = resized.astype(np.float32)
    span = high - low
    if span > 0:
        unit = (resized - np.float32(low)) * np.float32(1.0 / span)
    else:
        unit = np.zeros_like(resized)
    unit = np.clip(unit, 0.0, 1.0, out=unit)
    if spec.clahe_clip_limit:
        unit = apply_clahe(unit, spec.clahe_clip_limit, spec.clahe_tile_grid)
    return unit.reshape(spec.height, spec.width, 1)


def area_rows(image: np.ndarray, height: int) -> np.ndarray:
    """The rows of an integer image averaged by area onto ``height`` rows (float64), ``height`` <= its rows.

    What ``cv2.INTER_AREA`` computes when it shrinks (each output row is the mean of the input rows it
    covers, the two rows a boundary cuts weighted by the part inside), without its rounding to the input's
    type: so it is linear, and an image split into byte planes can be shrunk plane by plane. Whole rows are
    summed as integers, block by block; ``area_rows(area_rows(x, h).T, w).T`` is the area resize to h x w.
    """
    return row_sums(image, height).averaged()


@dataclass(frozen=True)
class RowSums:
    """``area_rows`` before its float step (``averaged``): each output row's block of whole input rows summed
    (as integers for an unsigned image, in the smallest type that holds them), the inner boundaries that cut an
    input row, those rows, the part of each above its boundary, and ``height / rows``. For a byte image it is
    about a third of the float64 result's size: what to keep while the image itself is freed."""

    sums: np.ndarray
    boundaries: np.ndarray
    cut: np.ndarray
    part: np.ndarray
    scale: float

    def averaged(self) -> np.ndarray:
        out = self.sums.astype(np.float64)
        for row, line, part in zip(self.boundaries, self.cut, self.part):  # the row a boundary cuts was summed
            above = line * part  # into the block below it
            out[row - 1] += above
            out[row] -= above
        out *= self.scale
        return out


def row_sums(image: np.ndarray, height: int) -> RowSums:
    """What ``area_rows(image, height)`` is computed from; ``row_sums(image, height).averaged()`` is it."""
    source = image.shape[0]
    if not 0 < height <= source:
        raise ValueError(f"area_rows shrinks {source} rows, not to {height}")
    edges = np.arange(height + 1, dtype=np.float64) * (source / height)
    edges[-1] = source
    first = np.floor(edges).astype(np.intp)
    part = edges - first  # of row first[i] that lies above boundary i
    accumulator = np.float64
    if image.dtype.kind in "ub" and image.dtype.itemsize <= 2:  # a block of ~source/height rows; its largest sum:
        largest = int(np.diff(first).max()) * (1 if image.dtype.kind == "b" else int(np.iinfo(image.dtype).max))
        for accumulator in (np.uint16, np.uint32, np.float64):  # float64: exact to 2**53
            if accumulator is np.float64 or largest <= np.iinfo(accumulator).max:
                break
    sums = np.empty((height,) + image.shape[1:], accumulator)
    for row in range(height):
        np.sum(image[first[row] : first[row + 1]], axis=0, dtype=accumulator, out=sums[row])
    boundaries = np.flatnonzero(part[1:height] > 0) + 1
    return RowSums(sums, boundaries, image[first[boundaries]], part[boundaries], height / source)
