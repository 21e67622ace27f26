"""One DICOM Structured Report per classified DICOM, built with highdicom.

The report is a Comprehensive SR in the source image's study: highdicom copies
the patient and study modules from the source (as DICOM requires for an
object of that study) and lists the source in the Current Requested Procedure
Evidence Sequence; the content tree references the source image by SOP Class
and Instance UID and holds:

* the BI-RADS group (a code of the private scheme ``99EDGEBIRADS``),
* the malignancy score (DCM 111047 "Probability of cancer") and the
  probability of every group,
* the referral decision (DCM 121075 "Recommendation") with its threshold,
* the model name, its sha256 and the edge-birads version (the algorithm
  identification), the device as the observer,
* the research-use statement (DCM 121106 "Comment").

The report is marked COMPLETE, FINAL (a later run gives the same result) and
UNVERIFIED: no clinician has verified it. highdicom's warnings are silenced
while building: some quote header values, which may be patient identifiers.

Its UIDs are derived from the source SOP Instance UID and the model's sha256
(the series from the study and the sha256), so writing the report of one
image by one model again gives the same object: a PACS that receives it twice
stores it once. The lesion map capture (Secondary Capture) waits for a model
with a lesion map; the bundled one has none.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from edge_birads import DISCLAIMER, __version__

SCHEME = "99EDGEBIRADS"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "edge-birads triage (research use only)"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
MANUFACTURER = "edge-birads"


class ReportError(Exception):
    """The source's header lacks what a report in its study needs (one line, no identifiers)."""


def report_uids(source_sop_uid: str, study_uid: str, model_sha256: str) -> tuple[str, str]:
    """(series, instance) UIDs of the report: the same inputs always give the same UIDs."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["edge-birads-sr-series", study_uid, model_sha256])
    instance = generate_uid(entropy_srcs=["edge-birads-sr", source_sop_uid, model_sha256])
    return str(series), str(instance)


def read_source(path: Path):
    """The source DICOM's header (no pixel data), or None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:16], scheme_designator=SCHEME, meaning=meaning[:64])


def build_report(source, record: dict, card) -> object:
    """The SR (a highdicom ComprehensiveSR, a pydicom Dataset) for one classified DICOM.

    ``source``: the source's header; ``record``: the daemon's result record;
    ``card``: the model card (name, labels, malignant label, threshold).
    """
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        CodedConcept,
        ContainerContentItem,
        ImageContentItem,
        NumContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(source.get(keyword, "") or "").strip():
            raise ReportError(f"the source has no {keyword}")
    if record.get("group") is None or record.get("suspicion_score") is None:
        raise ReportError("the result has no prediction")
    contains = RelationshipTypeValues.CONTAINS
    context = RelationshipTypeValues.HAS_OBS_CONTEXT
    no_units = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    threshold = float(record.get("referral_threshold", card.referral_threshold))
    score = float(record["suspicion_score"])
    referral = bool(record["referral"])
    label = str(record["group"])

    items = [
        CodeContentItem(name=codes.DCM.ObserverType, value=codes.DCM.Device, relationship_type=context),
        TextContentItem(name=codes.DCM.DeviceObserverName, value=MANUFACTURER, relationship_type=context),
        TextContentItem(
            name=codes.DCM.AlgorithmName, value=f"edge-birads model '{card.name}'"[:1024], relationship_type=contains
        ),
        TextContentItem(name=codes.DCM.AlgorithmVersion, value=f"edge-birads {__version__}", relationship_type=contains),
        TextContentItem(
            name=_code("MODEL-SHA256", "Model SHA-256"), value=str(record["model_sha256"]), relationship_type=contains
        ),
        ImageContentItem(
            name=codes.DCM.SourceImage,
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            relationship_type=contains,
        ),
        CodeContentItem(
            name=_code("GROUP", "BI-RADS triage group"),
            value=_code(label.replace(" ", "-"), label),
            relationship_type=contains,
        ),
        NumContentItem(name=codes.DCM.ProbabilityOfCancer, value=round(score, 6), unit=no_units, relationship_type=contains),
    ]
    for group, probability in (record.get("probabilities") or {}).items():
        items.append(
            NumContentItem(
                name=_code(f"P-{group}".replace(" ", "-"), f"Probability of {group}"),
                value=round(float(probability), 6),
                unit=no_units,
                relationship_type=contains,
            )
        )
    decision = (
        _code("REFER", "Refer for review (suspicion score at or above threshold)")
        if referral
        else _code("ROUTINE", "Routine (suspicion score below threshold)")
    )
    items += [
        CodeContentItem(name=codes.DCM.Recommendation, value=decision, relationship_type=contains),
        NumContentItem(
            name=_code("THRESHOLD", f"Referral threshold on P({card.malignant_label})"),
            value=threshold,
            unit=no_units,
            relationship_type=contains,
        ),
        TextContentItem(
            name=codes.DCM.Comment,
            value=(
                f"{DISCLAIMER} Triage suggestion, not a BI-RADS assessment. Suspicion score = "
                f"P({card.malignant_label}); refer for review when >= {threshold:.4f}; this image: {score:.4f}, "
                f"{'REFER for review' if referral else 'routine'}."
            ),
            relationship_type=contains,
        ),
    ]
    root = ContainerContentItem(
        name=CodedConcept(value="18748-4", scheme_designator="LN", meaning="Diagnostic imaging report"),
        template_id=None,
    )
    root.ContentSequence = items
    series_uid, instance_uid = report_uids(str(source.SOPInstanceUID), str(source.StudyInstanceUID), str(record["model_sha256"]))
    try:
        instance_number = int(source.get("InstanceNumber", 1) or 1)
    except (TypeError, ValueError):
        instance_number = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = hd.sr.ComprehensiveSR(
                evidence=[source],
                content=root,
                series_instance_uid=series_uid,
                series_number=SERIES_NUMBER,
                sop_instance_uid=instance_uid,
                instance_number=max(1, instance_number),
                manufacturer=MANUFACTURER,
                is_complete=True,
                is_final=True,  # this model's result will not change; UNVERIFIED says no clinician checked it
                is_verified=False,
                series_description=SERIES_DESCRIPTION,
            )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ReportError(f"highdicom cannot build the report from this source ({type(exc).__name__})") from None
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "edge-birads triage codes"
    scheme.CodingSchemeResponsibleOrganization = "edge-birads"
    report.CodingSchemeIdentificationSequence = [scheme]
    return report
