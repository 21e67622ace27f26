"""The lesion map as a picture: where in the original image the model's malignancy evidence lies.

A model with a lesion map has a second output: one malignancy logit per
location of its last feature map (the score's head applied at every
location), in the frame of the model's input. That frame is the image's
crop box (``preprocess.crop_box``) resized, so the map goes back onto the
original image through the box. The picture keeps the original geometry
(aspect and orientation), scaled to at most ``max_side`` pixels, with the map
overlaid, the hottest location ringed, and a caption with the decision, the
score and the research-use line. No patient identifier is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_birads import DISCLAIMER
from edge_birads.durable import write_bytes_atomic
from edge_birads.preprocess import value_range


@dataclass(frozen=True)
class LesionMap:
    """A decoded image, its model-frame lesion map (logits) and the box that frame covers."""

    image: np.ndarray  # 2-D, original geometry
    values: np.ndarray  # (rows, cols) malignancy logits
    box: tuple[int, int, int, int]  # (top, bottom, left, right) in the image

    def hottest(self) -> tuple[float, float]:
        """(row, col) in original-image pixels of the centre of the hottest map cell."""
        rows, cols = self.values.shape
        r, c = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        top, bottom, left, right = self.box
        return top + (r + 0.5) * (bottom - top) / rows, left + (c + 0.5) * (right - left) / cols


def _display8(image: np.ndarray) -> np.ndarray:
    low, high = value_range(image)
    if image.dtype == np.uint8:
        return image
    span = high - low
    if span <= 0:
        return np.zeros(image.shape, np.uint8)
    return np.clip((image.astype(np.float32) - low) * (255.0 / span), 0, 255).astype(np.uint8)


def render(lesion_map: LesionMap, caption: list[str], max_side: int = 1024) -> np.ndarray:
    """The picture (BGR uint8): the image in its own geometry, the map overlaid, the hottest cell ringed, a caption below."""
    height, width = lesion_map.image.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = cv2.resize(_display8(lesion_map.image), size, interpolation=cv2.INTER_AREA)
    picture = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    top, bottom, left, right = (round(v * scale) for v in lesion_map.box)
    top, left = min(top, size[1] - 1), min(left, size[0] - 1)
    bottom, right = max(bottom, top + 1), max(right, left + 1)
    probability = 1.0 / (1.0 + np.exp(-lesion_map.values.astype(np.float32)))
    heat = cv2.resize(probability, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.55 * heat)[..., None]
    region = picture[top:bottom, left:right].astype(np.float32)
    picture[top:bottom, left:right] = (region * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
    row, col = lesion_map.hottest()
    cell = max((right - left) / lesion_map.values.shape[1], (bottom - top) / lesion_map.values.shape[0])
    centre = (round(col * scale), round(row * scale))
    cv2.circle(picture, centre, max(6, round(cell)), (255, 255, 255), 2, cv2.LINE_AA)
    lines = [*caption, DISCLAIMER]
    line_height = 22
    bar = np.zeros((line_height * len(lines) + 8, picture.shape[1], 3), np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(bar, text, (6, line_height * (i + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([picture, bar])


def write_png(path: Path, picture: np.ndarray) -> Path:
    """Write a PNG by temporary name, fsync and rename (``durable.write_bytes_atomic``): a reader never sees half a picture."""
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"cannot encode {path.name} as PNG")
    write_bytes_atomic(path, [encoded.tobytes()])
    return path


def heatmap_name(file_name: str, taken: set[str]) -> str:
    """``STEM.heatmap.png``, numbered when two inputs of one run share a stem."""
    stem = Path(file_name).stem or "image"
    name, n = f"{stem}.heatmap.png", 2
    while name in taken:
        name, n = f"{stem}-{n}.heatmap.png", n + 1
    taken.add(name)
    return name


def caption_for(record: dict, card) -> list[str]:
    """The picture's caption from a classified record (``Result.to_dict()``, or the daemon's filed record): the file,
    then the decision and score in the log's words (no identifiers)."""
    from edge_birads.output import describe

    return [f"{record['file']}", f"{describe(record)}; model {card.name}"]


class HeatmapWriter:
    """Writes one heatmap PNG per classified image into a folder (created if missing)."""

    def __init__(self, folder: Path, card, max_side: int = 1024) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.card = card
        self.max_side = max_side
        self.taken: set[str] = set()

    def write(self, result, lesion_map: LesionMap) -> Path:
        """``classify --heatmap``: FOLDER/STEM.heatmap.png for the result."""
        return self.write_at(self.folder / heatmap_name(result.file, self.taken), result.to_dict(), lesion_map)

    def write_at(self, path: Path, record: dict, lesion_map: LesionMap) -> Path:
        """The picture of ``record`` (its caption) and ``lesion_map``, written durably at ``path``."""
        return write_png(path, render(lesion_map, caption_for(record, self.card), self.max_side))
