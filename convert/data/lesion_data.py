"""Lesion annotations, their mapping into the model's input frame, and patch sampling.

Why: whole-image training of the paper's network on these small pools scores
near chance on unseen patients. The signal is in the lesions, and both pools
say where they are (mini-MIAS centres and radii, CBIS-DDSM mass boxes), so the
patch network learns "lesion vs tissue" and "benign vs malignant" from the
annotated regions, and the whole-image model reuses it fully convolutionally.

Every image goes through :func:`edge_birads.preprocess.prepare` (the runtime's
own preprocessing), so the annotations are mapped through the same breast
crop and resize as the pixels. Coordinates here are always (row, col) with the
origin at the top-left of the array, in float pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from convert.data import sources as data
from convert.data.sources import GROUP_LABELS, MALIGNANT_LABEL, SOURCE_MIAS, Record
from edge_birads.decode import read_file
from edge_birads.preprocess import PreprocessSpec, breast_bounding_box, prepare, value_range

LABELS = GROUP_LABELS  # class index 0, 1, 2 = normal, benign, malignant


@dataclass(frozen=True)
class Lesion:
    """An annotated finding as an axis-aligned ellipse: centre and half-extents, in pixels."""

    row: float
    col: float
    half_height: float
    half_width: float
    malignant: bool


@dataclass(frozen=True)
class AnnotatedImage:
    """One mammogram with its image-level class and the lesions whose position is known."""

    path: Path
    patient_id: str
    source: str
    label: int
    lesions: tuple[Lesion, ...] = field(default=())
    # True when the image holds a finding without coordinates (some MIAS
    # calcification clusters): no tissue of it can be trusted as "normal".
    unlocated_finding: bool = False
    # MIAS abnormality class (CIRC, SPIC, MISC, ARCH, ASYM, CALC, NORM); CBIS: "MASS".
    finding: str = ""
    # The mass descriptors annotated for the image (BI-RADS lexicon words, see descriptors_of); None where unknown.
    margins: tuple[str, ...] | None = None
    shapes: tuple[str, ...] | None = None


def lesions_of(record: Record) -> tuple[tuple[Lesion, ...], bool]:
    """A record's located findings as ellipses, and whether some finding has no position.

    MIAS circles (``convert.data.sources`` already turned their bottom-left origin
    into row = 1023 - y) keep their radius both ways; a finding without
    centre or radius (scattered calcifications) makes the image's tissue
    untrustworthy as "normal". CBIS boxes carry no pathology of their own, so
    every box takes the image's (6 of 1231 images hold a benign and a
    malignant mass: the price of that).
    """
    if record.source == SOURCE_MIAS:
        located = [l for l in record.lesions if l.cx is not None and l.cy is not None and l.radius is not None]
        ellipses = tuple(
            Lesion(row=float(l.cy), col=float(l.cx), half_height=float(l.radius), half_width=float(l.radius), malignant=(l.severity or "").upper() == "M")
            for l in located
        )
        return ellipses, len(located) < len(record.lesions)
    malignant = record.label == MALIGNANT_LABEL
    return tuple(Lesion(row=b.y + b.h / 2.0, col=b.x + b.w / 2.0, half_height=b.h / 2.0, half_width=b.w / 2.0, malignant=malignant) for b in record.boxes), False


# The descriptors an auxiliary target can ask for: BI-RADS mass margins and shapes as CBIS-DDSM annotates them.
MARGINS = ("CIRCUMSCRIBED", "OBSCURED", "MICROLOBULATED", "ILL_DEFINED", "SPICULATED")
SHAPES = ("ROUND", "OVAL", "LOBULATED", "IRREGULAR", "ARCHITECTURAL_DISTORTION")
# What a MIAS abnormality class says about them: (margins, shapes), None where it says nothing. A normal image has
# no mass (no margin, no shape); calcifications and asymmetries say nothing about either.
MIAS_DESCRIPTORS = {
    "NORM": ((), ()),
    "CIRC": (("CIRCUMSCRIBED",), None),
    "SPIC": (("SPICULATED",), None),
    "MISC": (("ILL_DEFINED",), None),
    "ARCH": (None, ("ARCHITECTURAL_DISTORTION",)),
}


def descriptors_of(record: Record) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(margins, shapes) annotated for a record; None for a group its annotation does not give.

    CBIS-DDSM joins an image's words with "-" (``IRREGULAR-ARCHITECTURAL_DISTORTION``) and writes NA when absent;
    a MIAS abnormality class maps through ``MIAS_DESCRIPTORS``.
    """
    if record.source == SOURCE_MIAS:
        return MIAS_DESCRIPTORS.get((record.extra.get("abnormality") or "").strip().upper(), (None, None))

    def words(text) -> tuple[str, ...] | None:
        text = (text or "").strip().upper()
        return None if text in ("", "NA") else tuple(text.split("-"))

    return words(record.extra.get("mass_margins")), words(record.extra.get("mass_shape"))


def descriptor_targets(items: list[AnnotatedImage]) -> np.ndarray:
    """(N, len(MARGINS) + len(SHAPES)) float32: 1 where an image has the word, 0 where it has not, -1 where unknown."""
    out = np.full((len(items), len(MARGINS) + len(SHAPES)), -1.0, np.float32)
    for row, item in enumerate(items):
        for start, vocabulary, present in ((0, MARGINS, item.margins), (len(MARGINS), SHAPES, item.shapes)):
            if present is not None:
                out[row, start : start + len(vocabulary)] = [word in present for word in vocabulary]
    return out


def annotated(record: Record) -> AnnotatedImage:
    """The lesion work's view of a ``convert.data.sources`` record (mini-MIAS or CBIS-DDSM masses)."""
    lesions, unlocated = lesions_of(record)
    finding = (record.extra.get("abnormality") or "") if record.source == SOURCE_MIAS else "MASS"
    margins, shapes = descriptors_of(record)
    return AnnotatedImage(
        path=Path(record.path),
        patient_id=record.patient_id,
        source=record.source,
        label=GROUP_LABELS.index(record.label),
        lesions=lesions,
        unlocated_finding=unlocated,
        finding=finding,
        margins=margins,
        shapes=shapes,
    )


def breast_of(item: AnnotatedImage) -> str:
    """One key per breast: CBIS names its files PATIENT_SIDE_VIEW (two views per breast); a MIAS image is its own breast.

    mini-MIAS holds one (MLO) view per breast, so its per-breast figures are its per-image ones.
    """
    if item.path is None:  # a record without a file (tests' synthetic pools) is its own breast
        return f"{item.source}/{item.patient_id}/#{id(item)}"
    stem = item.path.stem
    if item.source != SOURCE_MIAS:
        parts = stem.split("_")
        if len(parts) >= 3 and parts[-1] in ("CC", "MLO") and parts[-2] in ("LEFT", "RIGHT"):
            return f"{item.source}/{item.patient_id}/{parts[-2]}"
    return f"{item.source}/{item.patient_id}/{stem}"


def load_mias(root: Path | None = None) -> list[AnnotatedImage]:
    """mini-MIAS images with their lesion circles, top-left (row, col)."""
    return [annotated(r) for r in data.load_mias(None if root is None else Path(root) / "mini-mias")]


def load_cbis(root: Path | None = None) -> list[AnnotatedImage]:
    """CBIS-DDSM mass images (800x800, stretched) with their mass boxes."""
    return [annotated(r) for r in data.load_cbis_masses(None if root is None else Path(root) / "cbis-ddsm-mass")]


# The pool's data sources: each a loader (root or None for the shared data) -> AnnotatedImage records, in this order.
# Adding a data source is one loader here; every per-source figure follows the pool (PreparedPool.sources).
LOADERS = (load_mias, load_cbis)


def map_lesion(lesion: Lesion, box: tuple[int, int, int, int], out_shape: tuple[int, int]) -> Lesion:
    """Map a lesion from original pixels through the crop ``box`` (top, bottom, left, right) and resize.

    Pixel centres are mapped the way cv2.resize maps them: (p + 0.5) * scale - 0.5.
    """
    top, bottom, left, right = box
    scale_row = out_shape[0] / float(bottom - top)
    scale_col = out_shape[1] / float(right - left)
    return Lesion(
        row=(lesion.row - top + 0.5) * scale_row - 0.5,
        col=(lesion.col - left + 0.5) * scale_col - 0.5,
        half_height=lesion.half_height * scale_row,
        half_width=lesion.half_width * scale_col,
        malignant=lesion.malignant,
    )


def crop_box(image: np.ndarray, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """The crop :func:`prepare` applies for ``spec`` (the whole image when not cropping)."""
    if spec.crop_to_breast:
        low, high = value_range(image)
        return breast_bounding_box(image, low, high)
    return 0, image.shape[0], 0, image.shape[1]


def prepare_annotated(item: AnnotatedImage, spec: PreprocessSpec) -> tuple[np.ndarray, tuple[Lesion, ...]]:
    """Read and preprocess one image exactly as the runtime does; lesions mapped alongside."""
    raw = read_file(item.path)
    box = crop_box(raw, spec)
    prepared = prepare(raw, spec)[:, :, 0]
    lesions = tuple(map_lesion(lesion, box, prepared.shape) for lesion in item.lesions)
    return prepared, lesions


def breast_mask(image01: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast (largest bright component after Otsu) in a prepared image."""
    image8 = np.clip(image01 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(image8, (5, 5), 0)
    _, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.ones(image01.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def lesion_distance(rows: np.ndarray, cols: np.ndarray, lesion: Lesion) -> np.ndarray:
    """Normalised elliptical distance: < 1 inside the lesion, 2 at twice its half-extents."""
    return np.sqrt(((rows - lesion.row) / max(lesion.half_height, 1.0)) ** 2 + ((cols - lesion.col) / max(lesion.half_width, 1.0)) ** 2)


def normal_centres(
    mask: np.ndarray,
    lesions: tuple[Lesion, ...],
    count: int,
    rng: np.random.Generator,
    margin_px: float,
    border: int = 0,
) -> np.ndarray:
    """Up to ``count`` (row, col) centres inside ``mask`` and at least ``margin_px`` beyond every lesion's edge.

    The margin is in pixels outside the ellipse (measured along its larger
    axis), so tissue around an ill-defined mass never counts as normal.
    Centres within ``border`` pixels of the image edge are not drawn.
    """
    rows, cols = np.nonzero(mask)
    if border:
        keep = (rows >= border) & (rows < mask.shape[0] - border) & (cols >= border) & (cols < mask.shape[1] - border)
        rows, cols = rows[keep], cols[keep]
    ok = np.ones(rows.shape, dtype=bool)
    for lesion in lesions:
        reach = max(lesion.half_height, lesion.half_width, 1.0)
        ok &= lesion_distance(rows, cols, lesion) > 1.0 + margin_px / reach
    rows, cols = rows[ok], cols[ok]
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    # With replacement: a full permutation of ~10^5 candidates per image costs more than the rare duplicate.
    pick = rng.integers(0, rows.size, size=count)
    return np.stack([rows[pick], cols[pick]], axis=1).astype(np.float32)


def lesion_centres(lesion: Lesion, count: int, rng: np.random.Generator, jitter: float = 0.5) -> np.ndarray:
    """``count`` centres on the lesion, jittered by up to ``jitter`` of its half-extents."""
    offsets = rng.uniform(-jitter, jitter, size=(count, 2))
    return np.stack(
        [lesion.row + offsets[:, 0] * lesion.half_height, lesion.col + offsets[:, 1] * lesion.half_width], axis=1
    ).astype(np.float32)


def extract_patch(image: np.ndarray, centre_row: float, centre_col: float, size: int) -> np.ndarray:
    """A ``size`` x ``size`` patch centred on (row, col), zero-padded where it leaves the image."""
    top = int(round(centre_row)) - size // 2
    left = int(round(centre_col)) - size // 2
    patch = np.zeros((size, size), dtype=image.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, image.shape[0]), min(left + size, image.shape[1])
    if r1 > r0 and c1 > c0:
        patch[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
    return patch


@dataclass
class PreparedPool:
    """All images of the pools preprocessed once for one spec (uint8, exact for 8-bit sources)."""

    spec: PreprocessSpec
    images: np.ndarray  # (N, H, W) uint8, value / 255 is what prepare() returned
    items: list[AnnotatedImage]
    lesions: list[tuple[Lesion, ...]]  # in the prepared frame

    def float_image(self, index: int) -> np.ndarray:
        return self.images[index].astype(np.float32) / 255.0

    @property
    def sources(self) -> tuple[str, ...]:
        """The pool's data sources, in the order their images come (every per-source figure is reported in this order)."""
        return tuple(dict.fromkeys(item.source for item in self.items))


def cache_name(spec: PreprocessSpec) -> str:
    clahe = "none" if not spec.clahe_clip_limit else f"{spec.clahe_clip_limit:g}"
    return f"pool_{spec.height}x{spec.width}_{spec.interpolation}_crop{int(spec.crop_to_breast)}_clahe{clahe}.npz"


def items_digest(items: list[AnnotatedImage]) -> str:
    """Which images a pool holds, in order (source, patient, file): the cache's key besides the preprocessing."""
    import hashlib

    text = "\n".join(f"{it.source}|{it.patient_id}|{getattr(it.path, 'name', '')}" for it in items)
    return hashlib.sha256(text.encode()).hexdigest()


def load_pool(spec: PreprocessSpec, cache_dir: Path | None, root: Path | None = None) -> PreparedPool:
    """Preprocess every source of ``LOADERS`` through prepare(), cached as one .npz in ``cache_dir``.

    The prepared values of 8-bit images are k/255 exactly (INTER_AREA and CLAHE
    work on uint8), so storing uint8 loses nothing; this is checked per image.
    """
    items = [item for loader in LOADERS for item in loader(root)]
    digest = items_digest(items)
    path = None if cache_dir is None else Path(cache_dir) / cache_name(spec)
    if path is not None and path.exists():
        data = np.load(path, allow_pickle=False)
        # The cache holds these images (older caches carry no digest: their image count must match); else it is rebuilt.
        if str(data["items"]) == digest if "items" in data.files else len(data["images"]) == len(items):
            lesions = decode_lesions(data["lesions"], data["lesion_index"], len(items))
            return PreparedPool(spec=spec, images=data["images"], items=items, lesions=lesions)
    images = np.zeros((len(items), spec.height, spec.width), dtype=np.uint8)
    lesions = []
    for index, item in enumerate(items):
        prepared, mapped = prepare_annotated(item, spec)
        as8 = np.round(prepared * 255.0)
        if np.abs(as8 / 255.0 - prepared).max() > 1e-5:
            raise ValueError(f"{item.path}: prepared values are not k/255; uint8 cache would be lossy")
        images[index] = as8.astype(np.uint8)
        lesions.append(mapped)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flat, index_of = encode_lesions(lesions)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, lesions=flat, lesion_index=index_of, items=np.array(digest))
        os.replace(tmp, path)
    return PreparedPool(spec=spec, images=images, items=items, lesions=lesions)


def encode_lesions(lesions: list[tuple[Lesion, ...]]) -> tuple[np.ndarray, np.ndarray]:
    rows = [(i, l.row, l.col, l.half_height, l.half_width, float(l.malignant)) for i, ls in enumerate(lesions) for l in ls]
    flat = np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 5)
    return flat, np.array([r[0] for r in rows], dtype=np.int64)


def decode_lesions(flat: np.ndarray, index_of: np.ndarray, count: int) -> list[tuple[Lesion, ...]]:
    out: list[list[Lesion]] = [[] for _ in range(count)]
    for (row, col, hh, hw, malignant), i in zip(flat, index_of):
        out[int(i)].append(Lesion(float(row), float(col), float(hh), float(hw), bool(malignant)))
    return [tuple(ls) for ls in out]


@dataclass(frozen=True)
class PatchConfig:
    """How many patches of each kind one epoch draws, and how they are augmented.

    mini-MIAS has ~70 located lesions against ~1,100 CBIS masses, so its
    lesions are drawn more often; its normal images are the only normals
    with a whole-image label, so they are drawn most.
    """

    size: int = 96
    stride: int = 16
    per_lesion_mias: int = 16
    per_lesion_cbis: int = 4
    normal_per_mias_normal: int = 16
    normal_per_mias_lesion: int = 6
    normal_per_cbis: int = 3
    anywhere_per_image: int = 1
    margin_px: float = 24.0
    min_half_extent: float = 10.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    gamma_range: tuple[float, float] = (0.7, 1.4)


def location_targets(
    lesions: tuple[Lesion, ...], rows: np.ndarray, cols: np.ndarray, cfg: PatchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Class and weight per output location given the locations' centres in image pixels.

    Inside a lesion (half-extents at least ``min_half_extent``, so even a small
    lesion owns the location nearest its centre): benign 1 or malignant 2
    (malignant wins an overlap). Within ``margin_px`` of a lesion's edge:
    weight 0 (ill-defined borders). Elsewhere: normal, weight 1.
    """
    target = np.zeros(rows.shape, dtype=np.int32)
    weight = np.ones(rows.shape, dtype=np.float32)
    for lesion in lesions:
        grown = Lesion(lesion.row, lesion.col, max(lesion.half_height, cfg.min_half_extent), max(lesion.half_width, cfg.min_half_extent), lesion.malignant)
        distance = lesion_distance(rows, cols, grown)
        reach = max(grown.half_height, grown.half_width)
        near = distance <= 1.0 + cfg.margin_px / reach
        weight[near] = 0.0
        inside = distance <= 1.0
        target[inside] = np.maximum(target[inside], 2 if lesion.malignant else 1)
    lesion_locations = target > 0
    weight[lesion_locations] = 1.0
    return target, weight


def augmented_patch(
    image: np.ndarray,
    lesions: tuple[Lesion, ...],
    centre: np.ndarray,
    cfg: PatchConfig,
    rng: np.random.Generator,
    augment: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One float patch (size, size) and its per-location class and weight maps (size/stride square).

    The region is drawn at a random scale, flipped and rotated by multiples of
    90 degrees, gamma-adjusted; the target maps follow the same geometry.
    """
    size, stride = cfg.size, cfg.stride
    scale = float(np.exp(rng.uniform(np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])))) if augment else 1.0
    region = max(8, int(round(size * scale)))
    scale = region / size
    top = int(round(centre[0])) - region // 2
    left = int(round(centre[1])) - region // 2
    raw = extract_patch(image, top + region // 2, left + region // 2, region)
    interpolation = cv2.INTER_AREA if region > size else cv2.INTER_LINEAR
    patch = cv2.resize(raw, (size, size), interpolation=interpolation).astype(np.float32)
    if image.dtype == np.uint8:
        patch /= 255.0
    grid = (np.arange(size // stride) * stride + (stride - 1) / 2.0) * scale
    rows = top + grid[:, None] + np.zeros((1, grid.size))
    cols = left + grid[None, :] + np.zeros((grid.size, 1))
    target, weight = location_targets(lesions, rows, cols, cfg)
    if augment:
        k = int(rng.integers(4))
        patch, target, weight = (np.rot90(a, k) for a in (patch, target, weight))
        if rng.random() < 0.5:
            patch, target, weight = (a[:, ::-1] for a in (patch, target, weight))
        gamma = float(np.exp(rng.uniform(np.log(cfg.gamma_range[0]), np.log(cfg.gamma_range[1]))))
        patch = np.power(np.clip(patch, 0.0, 1.0), gamma)
    return np.ascontiguousarray(patch, dtype=np.float32), np.ascontiguousarray(target), np.ascontiguousarray(weight)


def epoch_centres(pool: "PreparedPool", indices, cfg: PatchConfig, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(image index, centre) pairs for one epoch over the images ``indices``."""
    pairs: list[tuple[int, np.ndarray]] = []
    half = cfg.size // 4
    for index in indices:
        item = pool.items[index]
        if item.unlocated_finding and not pool.lesions[index]:
            continue  # a finding somewhere, position unknown: no tissue of it is safe
        lesions = pool.lesions[index]
        mias = item.source == "mini-mias"
        per_lesion = cfg.per_lesion_mias if mias else cfg.per_lesion_cbis
        for lesion in lesions:
            pairs.extend((index, c) for c in lesion_centres(lesion, per_lesion, rng))
        if item.unlocated_finding:
            continue
        if mias:
            n_normal = cfg.normal_per_mias_normal if item.label == 0 else cfg.normal_per_mias_lesion
        else:
            n_normal = cfg.normal_per_cbis
        image = pool.images[index]
        mask = breast_mask(image.astype(np.float32) / 255.0)
        pairs.extend((index, c) for c in normal_centres(mask, lesions, n_normal, rng, cfg.margin_px + half))
        anywhere = np.ones_like(mask)
        pairs.extend((index, c) for c in normal_centres(anywhere, lesions, cfg.anywhere_per_image, rng, cfg.margin_px + half))
    return pairs


def build_patch_batch(
    pool: "PreparedPool", pairs: list[tuple[int, np.ndarray]], cfg: PatchConfig, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches (N, size, size, 1) and target/weight maps (N, size/stride, size/stride)."""
    n = len(pairs)
    side = cfg.size // cfg.stride
    x = np.zeros((n, cfg.size, cfg.size, 1), dtype=np.float32)
    y = np.zeros((n, side, side), dtype=np.int32)
    w = np.zeros((n, side, side), dtype=np.float32)
    for k, (index, centre) in enumerate(pairs):
        x[k, :, :, 0], y[k], w[k] = augmented_patch(pool.images[index], pool.lesions[index], centre, cfg, rng, augment)
    return x, y, w


def hard_negative_centres(
    maps: np.ndarray, lesions: tuple[Lesion, ...], cfg: PatchConfig, top_k: int, rng: np.random.Generator
) -> np.ndarray:
    """The ``top_k`` most lesion-like locations of an FCN map that are not near any lesion.

    Why: the whole-image score is a max over hundreds of locations, so a few
    confident false positives in normal tissue decide it. Mining them back
    into training (as normal patches) targets exactly those. ``maps`` is
    (h, w, 2) log-odds at stride ``cfg.stride``; centres are returned in
    image pixels, jittered by a quarter stride.
    """
    h, w = maps.shape[:2]
    score = maps.max(axis=-1)
    rows = (np.arange(h) * cfg.stride + (cfg.stride - 1) / 2.0)[:, None] + np.zeros((1, w))
    cols = (np.arange(w) * cfg.stride + (cfg.stride - 1) / 2.0)[None, :] + np.zeros((h, 1))
    target, weight = location_targets(lesions, rows, cols, cfg)
    free = (weight > 0) & (target == 0)
    order = np.argsort(np.where(free, score, -np.inf), axis=None)[::-1][:top_k]
    order = order[free.ravel()[order]]
    centres = np.stack([rows.ravel()[order], cols.ravel()[order]], axis=1)
    return (centres + rng.uniform(-cfg.stride / 4, cfg.stride / 4, size=centres.shape)).astype(np.float32)
