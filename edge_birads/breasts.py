"""Per-breast scores: the views of one breast (CC and MLO) read together.

A reader decides per breast from both of its views; averaging the two views'
suspicion scores ranks malignant breasts better than either image alone (the
model card's cross-validation reports both). Views are paired
- for DICOM, by study and laterality: Study Instance UID with Image Laterality
  (or Laterality), the view from View Position. The UID only groups files here;
  it is never printed.
- for other files, by name: ``SOMETHING_CC.png`` and ``SOMETHING_MLO.png`` in
  one folder (separators ``_ - .`` or a space, any case) are the two views of
  breast ``SOMETHING``.
A breast is reported when at least two of its views were classified; its
decision applies the model's referral threshold to the mean score.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from edge_birads.results import Result, Rule, decision

VIEW_NAME = re.compile(r"^(?P<breast>.+?)[ _.-](?P<view>CC|MLO)$", re.IGNORECASE)
LATERALITY = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class ViewKey:
    """Which breast an image shows (an opaque key) and how to name it in output (no identifiers)."""

    key: str
    label: str
    view: str | None


def dicom_view(path: Path) -> ViewKey | None:
    """The breast of a DICOM from its header, or None when it does not say.

    One examination of one woman: Patient ID and Study Date (some archives,
    CBIS-DDSM among them, give each view its own study and end the Patient ID
    with the view, which is dropped), hashed at once; the side from Image
    Laterality or Laterality; the view from View Position (else a CC/MLO
    Patient Orientation, as CBIS-DDSM writes it). Only the side is printed:
    a breast is named by its side and its views' files, never by anything
    derived from the patient (even a hash of an ID can be looked up).
    """
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=[
                "PatientID", "StudyDate", "StudyInstanceUID", "ImageLaterality", "Laterality", "ViewPosition", "PatientOrientation"])
    except Exception:  # not DICOM, or unreadable: the classification reports the file's own error
        return None
    side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()[:1]
    patient = str(ds.get("PatientID", "") or "").strip()
    match = VIEW_NAME.match(patient)
    if match:
        patient = match["breast"]
    exam = f"{patient}|{ds.get('StudyDate', '') or ''}" if patient else str(ds.get("StudyInstanceUID", "") or "")
    if side not in LATERALITY or not exam.strip("|"):
        return None
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    if view is None:
        orientation = str(ds.get("PatientOrientation", "") or "").strip().upper()
        view = orientation if orientation in ("CC", "MLO", "ML", "LM", "XCCL") else None
    digest = hashlib.sha256(exam.encode()).hexdigest()[:12]
    return ViewKey(f"dicom:{digest}:{side}", f"{LATERALITY[side]} breast", view)


def name_view(path: Path) -> ViewKey | None:
    """The breast of a file named ``BREAST_CC`` / ``BREAST_MLO`` (the key includes its folder)."""
    match = VIEW_NAME.match(path.stem)
    if not match:
        return None
    return ViewKey(f"name:{path.parent}/{match['breast'].lower()}", match["breast"], match["view"].upper())


def view_of(path: Path) -> ViewKey | None:
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom", "") or not VIEW_NAME.match(path.stem):
        found = dicom_view(path)
        if found is not None:
            return found
    return name_view(path)


@dataclass(frozen=True)
class BreastResult:
    breast: str
    views: tuple[str, ...]
    view_positions: tuple[str | None, ...]
    suspicion_score: float
    referral: bool
    rule: Rule

    def to_dict(self) -> dict:
        return {
            "breast": self.breast,
            "views": list(self.views),
            "view_positions": list(self.view_positions),
            "referral": self.referral,
            "suspicion_score": self.suspicion_score,
            "referral_threshold": self.rule.referral_threshold,
            "model": self.rule.model,
            "model_sha256": self.rule.model_sha256,
        }

    def describe(self) -> str:
        comparison = ">=" if self.referral else "<"
        return (
            f"{decision(self.referral).replace('refer', 'REFER')}: {self.breast}, mean suspicion score {self.suspicion_score:.3f} "
            f"{comparison} threshold {self.rule.referral_threshold:.3f} ({' + '.join(self.views)})"
        )


def per_breast(results: list[Result], keys: list[ViewKey | None]) -> list[BreastResult]:
    """Breasts with two or more classified views, in the order their first view came; mean score, same threshold."""
    groups: dict[str, list[tuple[Result, ViewKey]]] = {}
    for result, key in zip(results, keys):
        if key is not None and result.ok:
            groups.setdefault(key.key, []).append((result, key))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        rule = members[0][0].rule
        score = sum(r.prediction.suspicion_score for r, _ in members) / len(members)
        out.append(BreastResult(
            breast=members[0][1].label,
            views=tuple(r.file for r, _ in members),
            view_positions=tuple(k.view for _, k in members),
            suspicion_score=round(score, 6),
            referral=score >= rule.referral_threshold,
            rule=rule,
        ))
    return out
